//! The micro-kernels of [`super::PackedLinear`]: one weight panel times up to [`MR`] rows,
//! accumulated in registers over all of K, then written (bias added) to the output.

use super::{PackedLinear, Panels, MR, NR};

/// A kernel family; [`Isa::detect`] picks the best one this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, always available, always correct.
    Scalar,
    /// x86-64 AVX2 + FMA (256-bit vectors, two per panel row).
    Avx2Fma,
}

impl Isa {
    /// The fastest kernel family this CPU runs (checked at run time).
    pub fn detect() -> Isa {
        if Isa::Avx2Fma.available() {
            Isa::Avx2Fma
        } else {
            Isa::Scalar
        }
    }

    /// Whether this CPU can run the family.
    pub fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma => std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma => false,
        }
    }

    /// Its name (`"scalar"`, `"avx2+fma"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma => "avx2+fma",
        }
    }
}

/// The output matrix ([m, n], row-major) shared by the threads of one call.
pub(super) struct Out {
    pub ptr: *mut f32,
    pub m: usize,
    pub n: usize,
}

// SAFETY: `Out` points into the `out` slice that `PackedLinear::forward` borrows mutably for
// the whole call (the pool's workers finish before it returns); each thread writes only the
// columns of its own, disjoint range of panels, so no element is written by two threads and
// none is read.
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// Writes `tile` (rows `r0..r0 + rows`, panel `p`) plus `bias` into the output, dropping
    /// the padding columns past n.
    fn store(&self, tile: &[[f32; NR]; MR], r0: usize, rows: usize, p: usize, bias: Option<&[f32]>) {
        let c0 = p * NR;
        let cols = NR.min(self.n - c0);
        for (r, trow) in tile.iter().enumerate().take(rows) {
            debug_assert!(r0 + r < self.m);
            let at = (r0 + r) * self.n + c0;
            // SAFETY: r0 + r < m and c0 + cols <= n, so at..at + cols lies inside the [m, n]
            // output; this thread owns panel p's columns (see `unsafe impl Sync for Out`).
            let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), cols) };
            match bias {
                Some(b) => {
                    for ((d, &t), &bv) in dst.iter_mut().zip(trow).zip(&b[c0..c0 + cols]) {
                        *d = t + bv;
                    }
                }
                None => dst.copy_from_slice(&trow[..cols]),
            }
        }
    }
}

#[inline]
fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// Panels `p0..p1` of `lin` times all `m` rows of `x`, into `out`.
pub(super) fn run(isa: Isa, lin: &PackedLinear, x: &[f32], m: usize, out: &Out, p0: usize, p1: usize) {
    let k = lin.in_features();
    let mut tile = [[0.0f32; NR]; MR];
    for p in p0..p1 {
        let span = p * NR * k..(p + 1) * NR * k;
        for r0 in (0..m).step_by(MR) {
            let rows = MR.min(m - r0);
            let xs = &x[r0 * k..(r0 + rows) * k];
            match (isa, lin.panels()) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, Panels::F32(w)) => avx2::tile_f32(&w[span.clone()], xs, rows, k, &mut tile),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, Panels::Bf16(w)) => avx2::tile_bf16(&w[span.clone()], xs, rows, k, &mut tile),
                (_, Panels::F32(w)) => scalar_tile(&w[span.clone()], xs, rows, k, &mut tile, |v| v),
                (_, Panels::Bf16(w)) => scalar_tile(&w[span.clone()], xs, rows, k, &mut tile, bf16_to_f32),
            }
            out.store(&tile, r0, rows, p, lin.bias());
        }
    }
}

/// The portable kernel: `tile[r][j] = sum_k x[r, k] * widen(panel[k * NR + j])`.
fn scalar_tile<W: Copy>(panel: &[W], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR], widen: impl Fn(W) -> f32) {
    for (r, trow) in tile.iter_mut().enumerate().take(rows) {
        let xr = &x[r * k..(r + 1) * k];
        let mut acc = [0.0f32; NR];
        for (wk, &xv) in panel.chunks_exact(NR).zip(xr) {
            for (a, &w) in acc.iter_mut().zip(wk) {
                *a += xv * widen(w);
            }
        }
        *trow = acc;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{MR, NR};

    /// One kernel call: `R` rows (const, so the 2 x R accumulators stay in registers).
    /// `load(kk)` gives the panel's two 8-wide vectors of row kk.
    #[inline(always)]
    unsafe fn tile_rows<const R: usize>(
        x: &[f32],
        k: usize,
        tile: &mut [[f32; NR]; MR],
        (prefetch, step): (*const i8, usize),
        load: impl Fn(usize) -> (__m256, __m256),
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let xp = x.as_ptr();
        for kk in 0..k {
            // Ask for the weights PREFETCH bytes ahead (past this panel's end: the next panel's,
            // which follows it in memory), so the stream from memory overlaps the arithmetic.
            _mm_prefetch::<_MM_HINT_T0>(prefetch.wrapping_add(kk * step));
            let (w0, w1) = load(kk);
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: the caller passes x with R rows of k values, so r * k + kk < x.len().
                let xv = _mm256_set1_ps(*xp.add(r * k + kk));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: tile[r] is NR = 16 floats; the two stores cover 0..8 and 8..16.
            _mm256_storeu_ps(tile[r].as_mut_ptr(), a[0]);
            _mm256_storeu_ps(tile[r].as_mut_ptr().add(8), a[1]);
        }
    }

    /// Bytes ahead of the weight being read that a prefetch asks for.
    const PREFETCH: usize = 4096;

    macro_rules! by_rows {
        ($rows:expr, $x:expr, $k:expr, $tile:expr, $pf:expr, $load:expr) => {
            match $rows {
                1 => tile_rows::<1>($x, $k, $tile, $pf, $load),
                2 => tile_rows::<2>($x, $k, $tile, $pf, $load),
                3 => tile_rows::<3>($x, $k, $tile, $pf, $load),
                4 => tile_rows::<4>($x, $k, $tile, $pf, $load),
                5 => tile_rows::<5>($x, $k, $tile, $pf, $load),
                _ => tile_rows::<6>($x, $k, $tile, $pf, $load),
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_f32_impl(panel: &[f32], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // SAFETY (of the loads): panel holds k rows of NR = 16 floats, kk < k.
        // (a prefetch never faults, so its address may lie past the weights)
        let pf = ((wp as *const i8).wrapping_add(PREFETCH), NR * 4);
        by_rows!(rows, x, k, tile, pf, |kk: usize| (_mm256_loadu_ps(wp.add(kk * NR)), _mm256_loadu_ps(wp.add(kk * NR + 8))))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_bf16_impl(panel: &[u16], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // bf16 -> f32: zero-extend each 16-bit pattern to 32 bits and shift it to the top half.
        let widen = |p: *const u16| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))));
        // SAFETY (of the loads): panel holds k rows of NR = 16 values, kk < k; each load reads 8.
        let pf = ((wp as *const i8).wrapping_add(PREFETCH), NR * 2);
        by_rows!(rows, x, k, tile, pf, |kk: usize| (widen(wp.add(kk * NR)), widen(wp.add(kk * NR + 8))))
    }

    fn check(panel_len: usize, x: &[f32], rows: usize, k: usize) {
        assert!(panel_len == NR * k && (1..=MR).contains(&rows) && x.len() == rows * k, "linear kernel: internal size mismatch");
    }

    pub(super) fn tile_f32(panel: &[f32], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k);
        // SAFETY: only called with Isa::Avx2Fma after `Isa::available` confirmed AVX2 and FMA;
        // the sizes the loads rely on were checked just above.
        unsafe { tile_f32_impl(panel, x, rows, k, tile) }
    }

    pub(super) fn tile_bf16(panel: &[u16], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k);
        // SAFETY: as `tile_f32`.
        unsafe { tile_bf16_impl(panel, x, rows, k, tile) }
    }
}
