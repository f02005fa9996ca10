//! The RMS norm of a decoder layer, optionally fused with the residual add before it, for the
//! rows of one decoding step (float32, or bfloat16 bit patterns).
//!
//! Per row of `cols` values (`x` the row, `w` the weight, all arithmetic in float32):
//!
//! ```text
//! ss   = sum of x[i]^2, in 16 lanes (lane i % 16, in order of i), the lanes then added
//!        pairwise (lane l += lane l + 8, then + 4, + 2, + 1)
//! r    = 1 / sqrt(ss / cols + eps)
//! y[i] = round(w[i] * round(x[i] * r))
//! ```
//!
//! where `round` is the identity for float32 and the rounding to bfloat16 (nearest even) for
//! bfloat16: transformers' `LlamaRMSNorm` (`weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype)`)
//! with a fixed summation order. With the residual add, the row normed is
//! `s[i] = round(x[i] + d[i])` and `s` is returned too (the next residual stream): the same
//! bits as torch's `x + d` in either dtype. The order does not depend on the CPU (no SIMD
//! intrinsics; the compiler may vectorize the lanes as written), so every machine gets the
//! same bits.

use super::Elem;

wide!(norm_rows_wide = norm_rows(x: &[T], w: &[T], eps: f32, out: &mut [T]));
wide!(add_norm_rows_wide = add_norm_rows(x: &[T], delta: &[T], w: &[T], eps: f32, sum: &mut [T], out: &mut [T]));
use crate::error::{CoreError, Result};

const LANES: usize = 16;

#[derive(Clone, Debug)]
enum Weight {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
}

/// An RMS norm's weight and epsilon (see the module docs for what a call computes).
#[derive(Clone, Debug)]
pub struct RmsNorm {
    weight: Weight,
    eps: f32,
}

fn check_eps(eps: f32) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(CoreError::value(format!("eps: expected a finite value >= 0, got {eps}")));
    }
    Ok(())
}

impl RmsNorm {
    /// A float32 weight [cols].
    pub fn from_f32(weight: &[f32], eps: f32) -> Result<Self> {
        check_eps(eps)?;
        if weight.is_empty() {
            return Err(CoreError::shape("weight", "at least one value", "none"));
        }
        Ok(RmsNorm { weight: Weight::F32(weight.to_vec()), eps })
    }

    /// A bfloat16 weight [cols] (bit patterns).
    pub fn from_bf16(weight: &[u16], eps: f32) -> Result<Self> {
        check_eps(eps)?;
        if weight.is_empty() {
            return Err(CoreError::shape("weight", "at least one value", "none"));
        }
        Ok(RmsNorm { weight: Weight::Bf16(weight.to_vec()), eps })
    }

    /// The row length.
    pub fn cols(&self) -> usize {
        match &self.weight {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
        }
    }

    /// Whether the weight (and so every call's rows) is bfloat16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.weight, Weight::Bf16(_))
    }

    /// The epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    fn rows(&self, what: &'static str, len: usize) -> Result<usize> {
        let cols = self.cols();
        if len == 0 || len % cols != 0 {
            return Err(CoreError::shape(what, format!("a positive multiple of {cols} values (whole rows)"), len));
        }
        Ok(len / cols)
    }

    fn same(what: &'static str, len: usize, got: usize) -> Result<()> {
        if got != len {
            return Err(CoreError::shape(what, format!("{len} values (as x)"), got));
        }
        Ok(())
    }

    fn f32_weight(&self) -> Result<&[f32]> {
        match &self.weight {
            Weight::F32(w) => Ok(w),
            Weight::Bf16(_) => Err(CoreError::value("x: float32 rows need a float32 weight; this norm holds bfloat16")),
        }
    }

    fn bf16_weight(&self) -> Result<&[u16]> {
        match &self.weight {
            Weight::Bf16(w) => Ok(w),
            Weight::F32(_) => Err(CoreError::value("x: bfloat16 rows need a bfloat16 weight; this norm holds float32")),
        }
    }

    /// `out = norm(x)` for float32 rows (x: rows x cols, row-major).
    pub fn forward(&self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.norm_checked(self.f32_weight()?, x, out)
    }

    /// `out = norm(x)` for bfloat16 rows (bit patterns).
    pub fn forward_bf16(&self, x: &[u16], out: &mut [u16]) -> Result<()> {
        self.norm_checked(self.bf16_weight()?, x, out)
    }

    /// `sum = x + delta; out = norm(sum)` for float32 rows.
    pub fn add_forward(&self, x: &[f32], delta: &[f32], sum: &mut [f32], out: &mut [f32]) -> Result<()> {
        self.add_rows(self.f32_weight()?, x, delta, sum, out)
    }

    /// `sum = x + delta; out = norm(sum)` for bfloat16 rows (bit patterns; the sum rounded).
    pub fn add_forward_bf16(&self, x: &[u16], delta: &[u16], sum: &mut [u16], out: &mut [u16]) -> Result<()> {
        self.add_rows(self.bf16_weight()?, x, delta, sum, out)
    }

    fn norm_checked<T: Elem>(&self, w: &[T], x: &[T], out: &mut [T]) -> Result<()> {
        self.rows("x", x.len())?;
        Self::same("out", x.len(), out.len())?;
        norm_rows_wide(x, w, self.eps, out);
        Ok(())
    }

    fn add_rows<T: Elem>(&self, w: &[T], x: &[T], delta: &[T], sum: &mut [T], out: &mut [T]) -> Result<()> {
        self.rows("x", x.len())?;
        Self::same("delta", x.len(), delta.len())?;
        Self::same("sum", x.len(), sum.len())?;
        Self::same("out", x.len(), out.len())?;
        add_norm_rows_wide(x, delta, w, self.eps, sum, out);
        Ok(())
    }
}

/// The sum of squares of a row in the documented lane order.
#[inline(always)]
fn sum_squares<T: Elem>(x: &[T]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let v = c[l].widen();
            acc[l] += v * v;
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        let v = v.widen();
        acc[l] += v * v;
    }
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0]
}

#[inline(always)]
fn add_norm_rows<T: Elem>(x: &[T], delta: &[T], w: &[T], eps: f32, sum: &mut [T], out: &mut [T]) {
    for (s, (a, b)) in sum.iter_mut().zip(x.iter().zip(delta)) {
        *s = T::narrow(a.widen() + b.widen());
    }
    norm_rows(sum, w, eps, out)
}

#[inline(always)]
fn norm_rows<T: Elem>(x: &[T], w: &[T], eps: f32, out: &mut [T]) {
    for (xr, yr) in x.chunks_exact(w.len()).zip(out.chunks_exact_mut(w.len())) {
        norm_row(xr, w, eps, yr);
    }
}

#[inline(always)]
fn norm_row<T: Elem>(x: &[T], w: &[T], eps: f32, out: &mut [T]) {
    let r = 1.0f32 / (sum_squares(x) / x.len() as f32 + eps).sqrt();
    for ((y, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *y = T::narrow(g.widen() * T::narrow(v.widen() * r).widen());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::{bf16_to_f32, f32_to_bf16};

    fn reference(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        // float64 arithmetic: within float32 rounding of the kernel
        let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let r = 1.0 / (ss / x.len() as f64 + eps as f64).sqrt();
        x.iter().zip(w).map(|(&v, &g)| (g as f64 * v as f64 * r) as f32).collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n).map(|i| (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5) * 4.0).collect()
    }

    #[test]
    fn float32_rows_match_a_float64_reference() {
        for cols in [1usize, 7, 16, 17, 576, 1000] {
            let w = values(cols, 3);
            let x = values(cols * 3, 11);
            let norm = RmsNorm::from_f32(&w, 1e-5).unwrap();
            let mut y = vec![0.0; x.len()];
            norm.forward(&x, &mut y).unwrap();
            for (xr, yr) in x.chunks(cols).zip(y.chunks(cols)) {
                for (a, b) in reference(xr, &w, 1e-5).iter().zip(yr) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "cols {cols}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn bf16_rows_round_like_the_float32_path() {
        let cols = 576;
        let w: Vec<u16> = values(cols, 5).iter().map(|&v| f32_to_bf16(v)).collect();
        let x: Vec<u16> = values(cols * 2, 9).iter().map(|&v| f32_to_bf16(v)).collect();
        let norm = RmsNorm::from_bf16(&w, 1e-6).unwrap();
        let mut y = vec![0u16; x.len()];
        norm.forward_bf16(&x, &mut y).unwrap();
        for (xr, yr) in x.chunks(cols).zip(y.chunks(cols)) {
            let xf: Vec<f32> = xr.iter().map(|&v| bf16_to_f32(v)).collect();
            let r = 1.0f32 / (sum_squares(&xf) / cols as f32 + 1e-6).sqrt();
            for i in 0..cols {
                let h = f32_to_bf16(xf[i] * r);
                assert_eq!(yr[i], f32_to_bf16(bf16_to_f32(w[i]) * bf16_to_f32(h)));
            }
        }
    }

    #[test]
    fn the_fused_add_equals_the_add_then_the_norm() {
        let cols = 40;
        let w = values(cols, 1);
        let (x, d) = (values(cols * 4, 2), values(cols * 4, 7));
        let norm = RmsNorm::from_f32(&w, 1e-5).unwrap();
        let (mut s, mut y) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        norm.add_forward(&x, &d, &mut s, &mut y).unwrap();
        let added: Vec<f32> = x.iter().zip(&d).map(|(a, b)| a + b).collect();
        assert_eq!(s, added);
        let mut y2 = vec![0.0; x.len()];
        norm.forward(&added, &mut y2).unwrap();
        assert_eq!(y, y2);
        let wb: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
        let (xb, db): (Vec<u16>, Vec<u16>) = (x.iter().map(|&v| f32_to_bf16(v)).collect(), d.iter().map(|&v| f32_to_bf16(v)).collect());
        let nb = RmsNorm::from_bf16(&wb, 1e-5).unwrap();
        let (mut sb, mut yb) = (vec![0u16; x.len()], vec![0u16; x.len()]);
        nb.add_forward_bf16(&xb, &db, &mut sb, &mut yb).unwrap();
        let addb: Vec<u16> = xb.iter().zip(&db).map(|(&a, &b)| f32_to_bf16(bf16_to_f32(a) + bf16_to_f32(b))).collect();
        assert_eq!(sb, addb);
        let mut yb2 = vec![0u16; x.len()];
        nb.forward_bf16(&addb, &mut yb2).unwrap();
        assert_eq!(yb, yb2);
    }

    #[test]
    fn bad_shapes_and_dtypes_are_errors() {
        assert!(RmsNorm::from_f32(&[], 1e-5).is_err());
        assert!(RmsNorm::from_f32(&[1.0], f32::NAN).is_err());
        assert!(RmsNorm::from_f32(&[1.0], -1.0).is_err());
        assert!(RmsNorm::from_bf16(&[], 1e-5).is_err());
        let norm = RmsNorm::from_f32(&[1.0; 4], 1e-5).unwrap();
        let mut y = vec![0.0; 6];
        assert!(norm.forward(&[1.0; 6], &mut y).is_err()); // not whole rows
        assert!(norm.forward(&[], &mut []).is_err());
        assert!(norm.forward(&[1.0; 4], &mut y).is_err()); // out of another size
        assert!(norm.forward_bf16(&[0; 4], &mut [0; 4]).is_err()); // dtype
        assert!(norm.add_forward(&[1.0; 4], &[1.0; 8], &mut [0.0; 4], &mut [0.0; 4]).is_err());
        // NaN and infinities go through (no panic)
        let mut y = vec![0.0; 4];
        norm.forward(&[f32::NAN, 1.0, f32::INFINITY, 0.0], &mut y).unwrap();
        assert!(y[0].is_nan());
        norm.forward(&[0.0; 4], &mut y).unwrap();
        assert_eq!(y, vec![0.0; 4]);
    }
}
