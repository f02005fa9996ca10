//! The non-linear parts of a decoder layer's step, each one call over the step's rows: the RMS
//! norm fused with the residual add before it ([`norm`]) and the rotary embedding of the query
//! and key heads ([`rotary`]). Activations are float32 or bfloat16 bit patterns; every kernel
//! computes in float32 and rounds where torch rounds (bfloat16: after each operation, nearest
//! even), with no SIMD intrinsics: the same bits on every CPU.

pub mod norm;
pub mod rotary;

pub use norm::RmsNorm;

#[cfg(test)]
mod tests {
    use super::Elem;
    use crate::linear::f32_to_bf16;

    #[test]
    fn narrowing_is_the_linear_kernels_rounding() {
        let mut v: u32 = 1;
        for _ in 0..200_000 {
            v = v.wrapping_mul(1664525).wrapping_add(1013904223);
            let f = f32::from_bits(v);
            assert_eq!(<u16 as Elem>::narrow(f), f32_to_bf16(f), "{v:#x}");
        }
        for f in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, -f32::MAX, 0.0, -0.0, f32::MIN_POSITIVE] {
            assert_eq!(<u16 as Elem>::narrow(f), f32_to_bf16(f));
        }
    }
}

use crate::linear::bf16_to_f32;

/// An activation element: float32, or bfloat16 bits (`u16`).
pub(crate) trait Elem: Copy + Send + Sync {
    fn widen(self) -> f32;
    fn narrow(v: f32) -> Self;
}

impl Elem for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        v
    }
}

impl Elem for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        bf16_to_f32(self)
    }
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        // `f32_to_bf16` without its early return (a select: the loops vectorize); the same bits
        let b = v.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        if v.is_nan() {
            0x7fc0
        } else {
            rounded
        }
    }
}
