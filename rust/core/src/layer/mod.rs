//! The non-linear parts of a decoder layer's step, each one call over the step's rows: the RMS
//! norm fused with the residual add before it ([`norm`]) and the rotary embedding of the query
//! and key heads ([`rotary`]), the gated MLP's activation fused with its product ([`silu`]). Activations are float32 or bfloat16 bit patterns; every kernel
//! computes in float32 and rounds where torch rounds (bfloat16: after each operation, nearest
//! even), with no SIMD intrinsics and no fused multiply-adds: the same bits on every CPU. The
//! loops run through `wide!`, which compiles them for AVX-512 or AVX2 where the CPU has them
//! (wider vectors, the same operations in the same order: the same bits).

/// `wide!(name = body(a: A, b: B, ...))` defines `fn name<T: Elem>(a: A, ...)` that runs
/// `body::<T>` (an `#[inline(always)]` kernel loop) compiled for the widest vectors this CPU has:
/// AVX-512 (F + BW), else AVX2, else the baseline. The compiler never contracts a multiply and
/// an add into a fused one, so every version computes the same bits. (A closure handed to a
/// `#[target_feature]` function is not reliably inlined into it: the body must be a function.)
macro_rules! wide {
    ($name:ident = $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        fn $name<T: $crate::layer::Elem>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw")]
                unsafe fn avx512<T: $crate::layer::Elem>($($arg: $ty),*) {
                    $body::<T>($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2<T: $crate::layer::Elem>($($arg: $ty),*) {
                    $body::<T>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has the features the function is compiled for (checked above)
                    return unsafe { avx512::<T>($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: as above
                    return unsafe { avx2::<T>($($arg),*) };
                }
            }
            $body::<T>($($arg),*)
        }
    };
}

pub mod norm;
pub mod rotary;
pub mod silu;

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
