//! The rotary position embedding of a step's query and key heads, as transformers'
//! `apply_rotary_pos_emb` computes it (`x * cos + rotate_half(x) * sin`), bit for bit, reading
//! the heads straight from the projections' output rows and writing them head-major.
//!
//! For row `r = b * T + t` of `x` (the step's token `t` of batch row `b`), head `h < heads` and
//! dimension `j < D` (`D` even, `x_h = x[r, h * D .. (h + 1) * D]`):
//!
//! ```text
//! out[b, h, t, j] = round(round(x_h[j] * cos[r, j]) + round(x_h[(j + D/2) % D] * ssin[r, j]))
//! ```
//!
//! with `ssin` the sine with its first half negated (`rotate_half(x) * sin = cat(x2, x1) *
//! cat(-sin1, sin2)`: a product's rounding does not depend on which factor carries the sign)
//! and `round` torch's rounding of each operation to the activations' dtype (identity for
//! float32, nearest even for bfloat16). The output is `[B, heads, T, D]`, contiguous.

use super::Elem;

wide!(rotate_wide = rotate_rows(s: RotaryShape, x: &[T], cos: &[T], ssin: &[T], out: &mut [T]));
use crate::error::{CoreError, Result};

/// The sizes of one call.
#[derive(Clone, Copy, Debug)]
pub struct RotaryShape {
    /// Rows of `x`: batch x tokens.
    pub rows: usize,
    /// Values per row of `x` (at least `heads * head_dim`: the heads are its first columns).
    pub cols: usize,
    /// Heads rotated (the query heads, then the key heads, side by side in a row).
    pub heads: usize,
    /// D, even.
    pub head_dim: usize,
    /// Batch rows B (`rows` a multiple of it).
    pub batch: usize,
}

impl RotaryShape {
    fn check(&self, x: usize, cos: usize, ssin: usize, out: usize) -> Result<()> {
        let s = *self;
        if s.head_dim == 0 || s.head_dim % 2 != 0 {
            return Err(CoreError::value(format!("head_dim: expected an even number > 0, got {}", s.head_dim)));
        }
        if s.heads == 0 {
            return Err(CoreError::value("heads: expected at least one head"));
        }
        if s.batch == 0 || s.rows == 0 || s.rows % s.batch != 0 {
            return Err(CoreError::value(format!("x: expected a positive multiple of batch = {} rows, got {}", s.batch, s.rows)));
        }
        let width = s.heads.checked_mul(s.head_dim).ok_or_else(|| CoreError::value("heads x head_dim overflows"))?;
        if width > s.cols {
            return Err(CoreError::shape("x", format!("at least heads x head_dim = {width} columns"), s.cols));
        }
        let want = |n: usize, m: usize| n.checked_mul(m).ok_or_else(|| CoreError::value("sizes overflow"));
        if x != want(s.rows, s.cols)? {
            return Err(CoreError::shape("x", format!("{} x {} values", s.rows, s.cols), x));
        }
        for (what, got) in [("cos", cos), ("signed_sin", ssin)] {
            if got != want(s.rows, s.head_dim)? {
                return Err(CoreError::shape(what, format!("{} x {} values (a row per row of x)", s.rows, s.head_dim), got));
            }
        }
        if out != want(s.rows, width)? {
            return Err(CoreError::shape("out", format!("{} values", s.rows * width), out));
        }
        Ok(())
    }
}

fn rotate<T: Elem>(s: RotaryShape, x: &[T], cos: &[T], ssin: &[T], out: &mut [T]) -> Result<()> {
    s.check(x.len(), cos.len(), ssin.len(), out.len())?;
    rotate_wide(s, x, cos, ssin, out);
    Ok(())
}

#[inline(always)]
fn rotate_rows<T: Elem>(s: RotaryShape, x: &[T], cos: &[T], ssin: &[T], out: &mut [T]) {
    let (d, half, t) = (s.head_dim, s.head_dim / 2, s.rows / s.batch);
    for b in 0..s.batch {
        for h in 0..s.heads {
            for tt in 0..t {
                let r = b * t + tt;
                let xh = &x[r * s.cols + h * d..][..d];
                let (c, sn) = (&cos[r * d..][..d], &ssin[r * d..][..d]);
                let o = &mut out[((b * s.heads + h) * t + tt) * d..][..d];
                // the first half pairs with the second and back (no branch in the loops: they vectorize)
                let (x1, x2) = xh.split_at(half);
                let (c1, c2) = c.split_at(half);
                let (s1, s2) = sn.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                half_rotate(o1, x1, c1, x2, s1);
                half_rotate(o2, x2, c2, x1, s2);
            }
        }
    }
}

/// `o[j] = round(round(x[j] * c[j]) + round(partner[j] * s[j]))`.
#[inline(always)]
fn half_rotate<T: Elem>(o: &mut [T], x: &[T], c: &[T], partner: &[T], s: &[T]) {
    for ((((y, &v), &cv), &p), &sv) in o.iter_mut().zip(x).zip(c).zip(partner).zip(s) {
        let a = T::narrow(v.widen() * cv.widen()).widen();
        let e = T::narrow(p.widen() * sv.widen()).widen();
        *y = T::narrow(a + e);
    }
}

/// float32 rows (see the module docs).
pub fn rotate_heads(s: RotaryShape, x: &[f32], cos: &[f32], ssin: &[f32], out: &mut [f32]) -> Result<()> {
    rotate(s, x, cos, ssin, out)
}

/// bfloat16 rows (bit patterns; see the module docs).
pub fn rotate_heads_bf16(s: RotaryShape, x: &[u16], cos: &[u16], ssin: &[u16], out: &mut [u16]) -> Result<()> {
    rotate(s, x, cos, ssin, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_come_out_head_major_and_rotated() {
        // B = 2, T = 2, 2 heads of D = 4 in rows of 10 columns (2 trailing columns ignored)
        let s = RotaryShape { rows: 4, cols: 10, heads: 2, head_dim: 4, batch: 2 };
        let x: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let cos = vec![1.0f32; 16];
        let ssin = vec![0.0f32; 16];
        let mut out = vec![0.0f32; 32];
        rotate_heads(s, &x, &cos, &ssin, &mut out).unwrap();
        // cos = 1, sin = 0: the heads themselves, [B, H, T, D]
        for b in 0..2 {
            for h in 0..2 {
                for t in 0..2 {
                    for j in 0..4 {
                        assert_eq!(out[((b * 2 + h) * 2 + t) * 4 + j], x[(b * 2 + t) * 10 + h * 4 + j]);
                    }
                }
            }
        }
        // cos = 0, signed sin = 1: the halves swapped
        let mut out2 = vec![0.0f32; 32];
        rotate_heads(s, &x, &vec![0.0; 16], &vec![1.0; 16], &mut out2).unwrap();
        assert_eq!(&out2[..4], &[2.0, 3.0, 0.0, 1.0]);
    }

    #[test]
    fn bad_sizes_are_errors() {
        let ok = RotaryShape { rows: 2, cols: 8, heads: 2, head_dim: 4, batch: 1 };
        let (x, c, mut o) = (vec![0.0f32; 16], vec![0.0f32; 8], vec![0.0f32; 16]);
        assert!(rotate_heads(ok, &x, &c, &c, &mut o).is_ok());
        for bad in [
            RotaryShape { head_dim: 3, ..ok },
            RotaryShape { head_dim: 0, ..ok },
            RotaryShape { heads: 0, ..ok },
            RotaryShape { heads: 3, ..ok },
            RotaryShape { batch: 0, ..ok },
            RotaryShape { batch: 3, ..ok },
        ] {
            assert!(rotate_heads(bad, &x, &c, &c, &mut o).is_err(), "{bad:?}");
        }
        assert!(rotate_heads(ok, &x[..15], &c, &c, &mut o).is_err());
        assert!(rotate_heads(ok, &x, &c[..7], &c, &mut o).is_err());
        assert!(rotate_heads(ok, &x, &c, &c, &mut o[..8]).is_err());
    }
}
