//! The SiLU activation (`x * sigmoid(x)`) of a gated MLP, alone or fused with the product by the
//! up projection, for the rows of one step.
//!
//! `silu(x) = x / (1 + exp(-x))` in float32 with this module's [`exp`]: a branch-free
//! Cephes-style `expf` (range reduction by `ln 2` in two parts, to the nearest multiple, a degree-5 polynomial; within
//! 2 ulp of the exact exponential on [-87.3, 88.7], the argument clamped to it) that the compiler
//! vectorizes, the same bits on every CPU (no fused multiply-adds). A NaN stays NaN. It is not
//! torch's own `silu` bit for bit (another `exp`): tokenloom swaps it into the model for the
//! rows it runs (see `tokenloom.runtime.cpunorm`). The fused form computes
//! `round(round(silu(g)) * u)` (`round`: the activations' dtype), i.e. torch's `act(g) * u`
//! with this activation.

use super::Elem;

wide!(silu_wide = silu_loop(x: &[T], out: &mut [T]));
wide!(silu_mul_wide = silu_mul_loop(x: &[T], inter: usize, out: &mut [T]));
use crate::error::{CoreError, Result};

const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const ROUNDER: f32 = 12_582_912.0; // 1.5 * 2^23
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];

/// `exp(x)` for float32 (see the module docs); NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.max(EXP_LO).min(EXP_HI);
    // n = c / ln 2 rounded to nearest (even) by the 1.5 * 2^23 trick: no floor call, no
    // float-to-int conversion; n's integer value is in the low bits of `shifted`
    let shifted = c * LOG2E + ROUNDER;
    let n = shifted - ROUNDER;
    let r = c - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let mut p = P[0];
    for &k in &P[1..] {
        p = p * r + k;
    }
    let y = p * r2 + r + 1.0;
    let e = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()).wrapping_add(127);
    let scale = f32::from_bits(e << 23);
    let v = y * scale;
    if x.is_nan() {
        x
    } else {
        v
    }
}

/// `x / (1 + exp(-x))`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

fn check(what: &'static str, len: usize, cols: usize) -> Result<usize> {
    if cols == 0 || len == 0 || len % cols != 0 {
        return Err(CoreError::shape(what, format!("a positive multiple of {cols} values (whole rows)"), len));
    }
    Ok(len / cols)
}

fn silu_rows<T: Elem>(x: &[T], out: &mut [T]) -> Result<()> {
    if out.len() != x.len() {
        return Err(CoreError::shape("out", format!("{} values (as x)", x.len()), out.len()));
    }
    silu_wide(x, out);
    Ok(())
}

#[inline(always)]
fn silu_loop<T: Elem>(x: &[T], out: &mut [T]) {
    for (y, &v) in out.iter_mut().zip(x) {
        *y = T::narrow(silu(v.widen()));
    }
}

#[inline(always)]
fn silu_mul_loop<T: Elem>(x: &[T], inter: usize, out: &mut [T]) {
    for (row, o) in x.chunks_exact(2 * inter).zip(out.chunks_exact_mut(inter)) {
        let (g, u) = row.split_at(inter);
        for ((y, &gv), &uv) in o.iter_mut().zip(g).zip(u) {
            *y = T::narrow(T::narrow(silu(gv.widen())).widen() * uv.widen());
        }
    }
}

fn silu_mul_rows<T: Elem>(x: &[T], inter: usize, out: &mut [T]) -> Result<()> {
    let rows = check("x", x.len(), 2 * inter)?;
    if out.len() != rows * inter {
        return Err(CoreError::shape("out", format!("{} values", rows * inter), out.len()));
    }
    silu_mul_wide(x, inter, out);
    Ok(())
}

/// `out = silu(x)`, float32.
pub fn silu_f32(x: &[f32], out: &mut [f32]) -> Result<()> {
    silu_rows(x, out)
}

/// `out = silu(x)`, bfloat16 bits (rounded once, as torch's bfloat16 `silu`).
pub fn silu_bf16(x: &[u16], out: &mut [u16]) -> Result<()> {
    silu_rows(x, out)
}

/// Rows of `x` are `[gate (inter values), up (inter values)]`: `out[r] = round(round(silu(gate)) * up)`,
/// `[rows, inter]`; float32.
pub fn silu_mul_f32(x: &[f32], inter: usize, out: &mut [f32]) -> Result<()> {
    silu_mul_rows(x, inter, out)
}

/// As [`silu_mul_f32`], bfloat16 bits.
pub fn silu_mul_bf16(x: &[u16], inter: usize, out: &mut [u16]) -> Result<()> {
    silu_mul_rows(x, inter, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        ((a - b32).abs() / (b32.abs() * f32::EPSILON).max(f32::MIN_POSITIVE)) as f64
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_exact_one() {
        let mut worst: f64 = 0.0;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) >= 0.0 && exp(-1000.0) < 1e-37);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn silu_and_the_fused_product() {
        for &v in &[-20.0f32, -3.5, -1e-3, 0.0, 0.25, 2.0, 9.0, 100.0] {
            let want = v as f64 / (1.0 + (-(v as f64)).exp());
            assert!((silu(v) as f64 - want).abs() <= 4.0 * f32::EPSILON as f64 * want.abs().max(1e-30), "{v}");
        }
        assert!(silu(f32::NAN).is_nan());
        assert_eq!(silu(f32::INFINITY), f32::INFINITY);
        let x = [1.0f32, -2.0, 3.0, 0.5, 4.0, 2.0, -1.0, 1.5]; // 2 rows of [g g | u u]
        let mut out = [0.0f32; 4];
        silu_mul_f32(&x, 2, &mut out).unwrap();
        assert_eq!(out, [silu(1.0) * 3.0, silu(-2.0) * 0.5, silu(4.0) * -1.0, silu(2.0) * 1.5]);
        assert!(silu_mul_f32(&x[..6], 2, &mut out).is_err());
        assert!(silu_mul_f32(&x, 0, &mut out).is_err());
        assert!(silu_mul_f32(&x, 2, &mut out[..3]).is_err());
        assert!(silu_f32(&x, &mut out).is_err());
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p tokenloom-core -- --ignored --nocapture silu_rate`: ns per value.
    #[test]
    #[ignore]
    fn silu_rate() {
        let inter = 1536;
        let x: Vec<f32> = (0..17 * 2 * inter).map(|i| ((i % 97) as f32 - 48.0) / 7.0).collect();
        let mut out = vec![0.0f32; 17 * inter];
        for _ in 0..100 {
            silu_mul_f32(&x, inter, &mut out).unwrap();
        }
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            silu_mul_f32(&x, inter, &mut out).unwrap();
        }
        println!("silu_mul f32: {:.3} ns per value", t.elapsed().as_nanos() as f64 / 1000.0 / out.len() as f64);
    }
}
