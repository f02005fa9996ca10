//! The micro-kernels of [`super::PackedLinear`]: one weight panel times up to [`MR`] rows
//! ([`Isa::max_rows`] for each family), accumulated in registers over all of K, then written
//! (bias added) to the output.
//!
//! Every family computes each output element the same way, so they give bit-identical results:
//! `acc = 0; for k in 0..K { acc = fma(x[m, k], w[n, k], acc) }` (one rounding per step), then
//! `acc + bias[n]`. Only how many rows and columns share one pass differs.

use super::{bf16_to_f32, PackedLinear, PanelsRef, MR, NR};

// (the AMX panels run in `super::amx`, never here)

/// A kernel family; [`Isa::detect`] picks the best one this CPU has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, always available, always correct.
    Scalar,
    /// x86-64 AVX2 + FMA (256-bit vectors, two per panel row; up to 6 rows a pass).
    Avx2Fma,
    /// x86-64 AVX-512F (512-bit vectors, one per panel row; up to [`MR`] = 30 rows a pass).
    Avx512,
}

/// Most rows an AVX2 pass takes: 2 x 6 accumulators, 2 weight vectors and a broadcast fill
/// 15 of the 16 ymm registers.
const AVX2_ROWS: usize = 6;

impl Isa {
    /// The fastest kernel family this CPU runs (checked at run time).
    pub fn detect() -> Isa {
        if Isa::Avx512.available() {
            Isa::Avx512
        } else if Isa::Avx2Fma.available() {
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
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx2Fma | Isa::Avx512 => false,
        }
    }

    /// Its name (`"scalar"`, `"avx2+fma"`, `"avx512f"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2Fma => "avx2+fma",
            Isa::Avx512 => "avx512f",
        }
    }

    /// Most rows one micro-kernel call of the family takes (M is split into nearly equal
    /// blocks of at most this many rows).
    pub fn max_rows(self) -> usize {
        match self {
            Isa::Avx2Fma => AVX2_ROWS,
            Isa::Scalar | Isa::Avx512 => MR,
        }
    }
}

/// The output matrix ([m, n], row-major) shared by the threads of one call: float32, or
/// bfloat16 bits (each float32 result rounded to nearest even, as torch rounds).
pub(super) struct Out {
    pub ptr: OutPtr,
    pub m: usize,
    pub n: usize,
}

/// Where [`Out`] writes.
#[derive(Clone, Copy)]
pub(super) enum OutPtr {
    F32(*mut f32),
    Bf16(*mut u16),
}

// SAFETY: `Out` points into the `out` slice that `PackedLinear::forward` borrows mutably for
// the whole call (the pool's workers finish before it returns); each thread writes only the
// columns of its own, disjoint range of panels, so no element is written by two threads and
// none is read.
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    /// Writes `tile` (its rows are rows `r0..r0 + tile.len()`, panel `p`) plus `bias` into the
    /// output, dropping the padding columns past n.
    pub(super) fn store(&self, tile: &[[f32; NR]], r0: usize, p: usize, bias: Option<&[f32]>) {
        let c0 = p * NR;
        let cols = NR.min(self.n - c0);
        let bias = bias.map(|b| &b[c0..c0 + cols]);
        match self.ptr {
            OutPtr::F32(ptr) => {
                for (r, trow) in tile.iter().enumerate() {
                    debug_assert!(r0 + r < self.m);
                    // SAFETY: r0 + r < m and c0 + cols <= n, so the range lies inside the [m, n]
                    // output; this thread owns panel p's columns (see `unsafe impl Sync`).
                    let dst = unsafe { std::slice::from_raw_parts_mut(ptr.add((r0 + r) * self.n + c0), cols) };
                    match bias {
                        Some(b) => dst.iter_mut().zip(&trow[..cols]).zip(b).for_each(|((d, &t), &bv)| *d = t + bv),
                        None => dst.copy_from_slice(&trow[..cols]),
                    }
                }
            }
            OutPtr::Bf16(ptr) => {
                for (r, trow) in tile.iter().enumerate() {
                    debug_assert!(r0 + r < self.m);
                    // SAFETY: as above.
                    let dst = unsafe { std::slice::from_raw_parts_mut(ptr.add((r0 + r) * self.n + c0), cols) };
                    match bias {
                        Some(b) => dst.iter_mut().zip(&trow[..cols]).zip(b).for_each(|((d, &t), &bv)| *d = super::f32_to_bf16(t + bv)),
                        None => dst.iter_mut().zip(&trow[..cols]).for_each(|(d, &t)| *d = super::f32_to_bf16(t)),
                    }
                }
            }
        }
    }
}

/// Panels `p0..p1` of `lin` times all `m` rows of `x`, into `out`.
///
/// The rows go in `ceil(m / isa.max_rows())` nearly equal blocks (33 rows with 30 at most:
/// 17 + 16, not 30 + 3; 7 with 6: 4 + 3): a pass of few rows is bound by the FMA latency (each
/// accumulator waits for its previous step), so balanced blocks keep every pass throughput-bound.
pub(super) fn run(isa: Isa, lin: &PackedLinear, x: &[f32], m: usize, out: &Out, p0: usize, p1: usize) {
    let k = lin.in_features();
    let mut tile = [[0.0f32; NR]; MR];
    let blocks = m.div_ceil(isa.max_rows());
    for p in p0..p1 {
        let span = p * NR * k..(p + 1) * NR * k;
        for b in 0..blocks {
            let (r0, r1) = (b * m / blocks, (b + 1) * m / blocks);
            let rows = r1 - r0;
            let xs = &x[r0 * k..r1 * k];
            let part = (b, blocks);
            match (isa, lin.panels()) {
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, PanelsRef::F32(w)) => avx2::tile_f32(&w[span.clone()], xs, rows, k, part, &mut tile),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx2Fma, PanelsRef::Bf16(w)) => avx2::tile_bf16(&w[span.clone()], xs, rows, k, part, &mut tile),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, PanelsRef::F32(w)) => avx512::tile_f32(&w[span.clone()], xs, rows, k, part, &mut tile),
                #[cfg(target_arch = "x86_64")]
                (Isa::Avx512, PanelsRef::Bf16(w)) => avx512::tile_bf16(&w[span.clone()], xs, rows, k, part, &mut tile),
                (_, PanelsRef::F32(w)) => scalar_tile(&w[span.clone()], xs, rows, k, &mut tile, |v| v),
                (_, PanelsRef::Bf16(w)) => scalar_tile(&w[span.clone()], xs, rows, k, &mut tile, bf16_to_f32),
                (_, PanelsRef::Amx(_)) => unreachable!("AMX panels run in linear::amx"),
            }
            out.store(&tile[..rows], r0, p, lin.bias());
        }
    }
}

/// The portable kernel: `tile[r][j] = sum_k x[r, k] * widen(panel[k * NR + j])`, one fused
/// multiply-add per step (`mul_add`: the same rounding as the vector kernels' FMAs; where the
/// CPU has no FMA instruction it is computed in software, slower but exact).
fn scalar_tile<W: Copy>(panel: &[W], x: &[f32], rows: usize, k: usize, tile: &mut [[f32; NR]; MR], widen: impl Fn(W) -> f32) {
    for (r, trow) in tile.iter_mut().enumerate().take(rows) {
        let xr = &x[r * k..(r + 1) * k];
        let mut acc = [0.0f32; NR];
        for (wk, &xv) in panel.chunks_exact(NR).zip(xr) {
            for (a, &w) in acc.iter_mut().zip(wk) {
                *a = xv.mul_add(widen(w), *a);
            }
        }
        *trow = acc;
    }
}

/// Bytes ahead of the weight being read that a vector kernel's near prefetch asks for (into L1).
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 4096;

/// Where a vector kernel call prefetches: `(near, near_step, next, next_step)`; at step kk it
/// asks for `near + kk * near_step` into L1 (the weights [`PREFETCH`] bytes ahead) and for
/// `next + kk * next_step` into L2 (the next panel, whole, one panel ahead).
///
/// The next panel's prefetch is spread over the row blocks of the panel (block `b` of `nb`
/// asks for the b-th `1/nb` of it), so the memory stream runs during every block's arithmetic,
/// not only the first's: with the near prefetch alone, a panel's later blocks (which find it in
/// cache) left the memory idle, and a single-block pass asked for the next panel only
/// [`PREFETCH`] bytes before it was needed. Measured on the 2-core Sapphire Rapids VM (all
/// linears of one 135M-model step, f32, one thread): M=9 -8%, M=33 -10% (AVX-512); AVX2 M=17
/// and M=33 -20%; M=1 unchanged or better.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_plan(panel: *const i8, row_bytes: usize, k: usize, (b, nb): (usize, usize)) -> (*const i8, usize, *const i8, usize) {
    let panel_bytes = k * row_bytes;
    // (a prefetch never faults, so these addresses may lie past the weights)
    (panel.wrapping_add(PREFETCH), row_bytes, panel.wrapping_add(panel_bytes + b * panel_bytes / nb), row_bytes / nb)
}

/// `$kernel::<R>(args...)` for the const `R` equal to `$rows`: one arm per listed row count,
/// the last taking every larger value (callers check the bound first, see [`check`]).
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($kernel:ident, $rows:expr, $args:tt; $($r:literal)* ; $last:literal) => {
        match $rows {
            $($r => $kernel::<$r> $args,)*
            _ => $kernel::<$last> $args,
        }
    };
}

/// The sizes a vector kernel's loads rely on: a panel of NR x k values, 1 to `max_rows` rows of
/// k values of x (a mismatch is a bug of this module, never reached from the public API).
#[cfg(target_arch = "x86_64")]
fn check(panel_len: usize, x: &[f32], rows: usize, k: usize, max_rows: usize) {
    assert!(panel_len == NR * k && (1..=max_rows).contains(&rows) && x.len() == rows * k, "linear kernel: internal size mismatch");
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{check, prefetch_plan, AVX2_ROWS, MR, NR};

    /// One kernel call: `R` rows (const, so the 2 x R accumulators stay in registers).
    /// `load(kk)` gives the panel's two 8-wide vectors of row kk.
    #[inline(always)]
    unsafe fn tile_rows<const R: usize>(
        x: &[f32],
        k: usize,
        tile: &mut [[f32; NR]; MR],
        (near, near_step, next, next_step): (*const i8, usize, *const i8, usize),
        load: impl Fn(usize) -> (__m256, __m256),
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        let xp = x.as_ptr();
        for kk in 0..k {
            // Ask for the weights a little ahead into L1 and for the next panel into L2 (see
            // `prefetch_plan`), so the stream from memory overlaps the arithmetic.
            _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(kk * near_step));
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * next_step));
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

    /// `tile_rows::<rows>`, for 1 to [`AVX2_ROWS`] rows.
    macro_rules! avx2_rows {
        ($rows:expr, $x:expr, $k:expr, $tile:expr, $pf:expr, $load:expr) => {
            by_rows!(tile_rows, $rows, ($x, $k, $tile, $pf, $load); 1 2 3 4 5; 6)
        };
    }
    const _: () = assert!(AVX2_ROWS <= 6, "avx2_rows! covers 1 to 6 rows");

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_f32_impl(panel: &[f32], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // SAFETY (of the loads): panel holds k rows of NR = 16 floats, kk < k.
        let pf = prefetch_plan(wp as *const i8, NR * 4, k, part);
        avx2_rows!(rows, x, k, tile, pf, |kk: usize| (_mm256_loadu_ps(wp.add(kk * NR)), _mm256_loadu_ps(wp.add(kk * NR + 8))))
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_bf16_impl(panel: &[u16], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // bf16 -> f32: zero-extend each 16-bit pattern to 32 bits and shift it to the top half.
        let widen = |p: *const u16| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i))));
        // SAFETY (of the loads): panel holds k rows of NR = 16 values, kk < k; each load reads 8.
        let pf = prefetch_plan(wp as *const i8, NR * 2, k, part);
        avx2_rows!(rows, x, k, tile, pf, |kk: usize| (widen(wp.add(kk * NR)), widen(wp.add(kk * NR + 8))))
    }

    pub(super) fn tile_f32(panel: &[f32], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k, AVX2_ROWS);
        // SAFETY: only called with Isa::Avx2Fma after `Isa::available` confirmed AVX2 and FMA;
        // the sizes the loads rely on were checked just above.
        unsafe { tile_f32_impl(panel, x, rows, k, part, tile) }
    }

    pub(super) fn tile_bf16(panel: &[u16], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k, AVX2_ROWS);
        // SAFETY: as `tile_f32`.
        unsafe { tile_bf16_impl(panel, x, rows, k, part, tile) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{check, prefetch_plan, MR, NR};

    /// One kernel call: `R` rows, one 16-lane accumulator each (R <= 30 of the 32 zmm
    /// registers; the weight vector takes one more, the x values are broadcast from memory by
    /// the FMAs themselves). `load(kk)` gives the panel's row kk (NR = 16 values) as f32.
    #[inline(always)]
    unsafe fn tile_rows<const R: usize>(
        x: &[f32],
        k: usize,
        tile: &mut [[f32; NR]; MR],
        (near, near_step, next, next_step): (*const i8, usize, *const i8, usize),
        load: impl Fn(usize) -> __m512,
    ) {
        let mut acc = [_mm512_setzero_ps(); R];
        let xp = x.as_ptr();
        for kk in 0..k {
            // As in the AVX2 kernel: the weights a little ahead into L1, the next panel into L2.
            _mm_prefetch::<_MM_HINT_T0>(near.wrapping_add(kk * near_step));
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * next_step));
            let w = load(kk);
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: the caller passes x with R rows of k values, so r * k + kk < x.len().
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(r * k + kk)), w, *a);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            // SAFETY: tile[r] is NR = 16 floats, one zmm.
            _mm512_storeu_ps(tile[r].as_mut_ptr(), *a);
        }
    }

    /// `tile_rows::<rows>`, for 1 to [`MR`] = 30 rows.
    macro_rules! avx512_rows {
        ($rows:expr, $x:expr, $k:expr, $tile:expr, $pf:expr, $load:expr) => {
            by_rows!(tile_rows, $rows, ($x, $k, $tile, $pf, $load);
                1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29; 30)
        };
    }
    const _: () = assert!(MR <= 30, "avx512_rows! covers 1 to 30 rows");

    #[target_feature(enable = "avx512f")]
    unsafe fn tile_f32_impl(panel: &[f32], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // SAFETY (of the loads): panel holds k rows of NR = 16 floats, kk < k.
        let pf = prefetch_plan(wp as *const i8, NR * 4, k, part);
        avx512_rows!(rows, x, k, tile, pf, |kk: usize| _mm512_loadu_ps(wp.add(kk * NR)))
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn tile_bf16_impl(panel: &[u16], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        let wp = panel.as_ptr();
        // bf16 -> f32: zero-extend each 16-bit pattern to 32 bits and shift it to the top half.
        // SAFETY (of the loads): panel holds k rows of NR = 16 values, kk < k; each load reads 16.
        let pf = prefetch_plan(wp as *const i8, NR * 2, k, part);
        avx512_rows!(rows, x, k, tile, pf, |kk: usize| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256(wp.add(kk * NR) as *const __m256i)
        ))))
    }

    pub(super) fn tile_f32(panel: &[f32], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k, MR);
        // SAFETY: only called with Isa::Avx512 after `Isa::available` confirmed AVX-512F; the
        // sizes the loads rely on were checked just above.
        unsafe { tile_f32_impl(panel, x, rows, k, part, tile) }
    }

    pub(super) fn tile_bf16(panel: &[u16], x: &[f32], rows: usize, k: usize, part: (usize, usize), tile: &mut [[f32; NR]; MR]) {
        check(panel.len(), x, rows, k, MR);
        // SAFETY: as `tile_f32`.
        unsafe { tile_bf16_impl(panel, x, rows, k, part, tile) }
    }
}
