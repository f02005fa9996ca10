//! Small-M linear layers for CPU decoding: `y[M, N] = x[M, K] @ W[N, K]^T (+ bias)` for the
//! few rows (1 to a few tens) that a speculative tree step feeds through a model.
//!
//! Why: at such M a linear is bound by reading its weight from memory, and a general GEMM that
//! re-reads or re-packs the weight per call (or does not overlap the weight stream with the
//! arithmetic) costs up to twice the memory time. Here the weight is packed once
//! ([`PackedLinear::from_f32`], [`PackedLinear::from_bf16`]) into panels of [`NR`] output
//! columns by K, contiguous, the last panel zero-padded; a call streams every panel exactly
//! once and computes all M rows from it while it sits in the cache (nearly equal row blocks of
//! up to [`MR`] rows, register-blocked micro-kernels), so the weight is read from memory once
//! per call whatever M is.
//!
//! Weights may be float32 or bfloat16 (kept as bf16, half the bytes streamed; widened to f32
//! in registers); inputs, accumulation and outputs are float32. Every output element is the
//! sequential sum over k of `x[m, k] * w[n, k]` (a fused multiply-add per step: computed in
//! software by the scalar kernel where the CPU has no FMA instruction), plus the bias.
//!
//! Kernels: AVX-512F, else AVX2+FMA on x86-64 when the CPU has them (checked at run time), else
//! a portable scalar loop that is always correct ([`Isa`]); all give bit-identical results.
//! The N panels may be split over threads ([`PackedLinear::forward`]), run by a persistent pool
//! (workers spin briefly after a call, then sleep).

mod amx;
mod kernels;
mod pool;

use std::sync::Arc;

use crate::error::{CoreError, Result};

pub use amx::available as amx_available;
pub use kernels::Isa;

/// Output columns per weight panel.
pub const NR: usize = 16;
/// Most rows one micro-kernel call computes from a panel (the AVX-512 kernels: 30 accumulators
/// of the 32 zmm registers; the AVX2 ones take at most 6: see [`Isa::max_rows`]). Measured on
/// a 2-core Sapphire Rapids VM (1536 x 576 weight, one thread): a pass of 8-9 rows runs at
/// about half the FMA rate of a pass of 16 or more, so 17 rows in one pass took ~220 us where
/// 9 + 8 took ~260 us; 25 rows in one pass ~320 us vs ~340 us in two or three.
pub const MR: usize = 30;
/// Most threads one call may use.
pub const MAX_THREADS: usize = 64;

/// The packed weight: `panels` of [`NR`] columns x `k`, element `(n, kk)` at
/// `(n / NR) * NR * k + kk * NR + n % NR`; columns past `n` are zero.
#[derive(Debug, Clone)]
pub(crate) enum Panels {
    F32(Vec<f32>),
    Bf16(Vec<u16>),
    /// bfloat16 in the AMX layout (K in pairs, padded to a multiple of 32; see `amx`).
    Amx(Vec<u16>),
}

/// One call's view of the packed weight: the panels of this layer's columns only.
#[derive(Clone, Copy)]
pub(crate) enum PanelsRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
    Amx(&'a [u16]),
}

/// A linear layer's weight (and bias) packed for small-M products. Immutable once built;
/// share it between threads freely.
///
/// It may be a view of columns of another packed weight ([`PackedLinear::columns`]): the
/// panels are shared (not copied), `first` is the view's first panel in them.
#[derive(Debug, Clone)]
pub struct PackedLinear {
    n: usize,
    k: usize,
    panels: Arc<Panels>,
    first: usize,
    bias: Option<Vec<f32>>,
}

fn check_dims(n: usize, k: usize, len: usize, bias: Option<&[f32]>) -> Result<usize> {
    if n == 0 || k == 0 {
        return Err(CoreError::value(format!("linear weight: expected a non-empty [N, K] matrix, got [{n}, {k}]")));
    }
    let expected = n.checked_mul(k).ok_or_else(|| CoreError::value(format!("linear weight: [{n}, {k}] is too large")))?;
    if len != expected {
        return Err(CoreError::shape("linear weight", format!("{expected} values ([{n}, {k}])"), len));
    }
    if let Some(b) = bias {
        if b.len() != n {
            return Err(CoreError::shape("linear bias", format!("{n} values"), b.len()));
        }
    }
    let panels = n.div_ceil(NR);
    panels
        .checked_mul(NR)
        .and_then(|c| c.checked_mul(k))
        .ok_or_else(|| CoreError::value(format!("linear weight: [{n}, {k}] is too large")))
}

fn pack<T: Copy + Default>(w: &[T], n: usize, k: usize, size: usize) -> Vec<T> {
    let mut out = vec![T::default(); size];
    for (row, wrow) in w.chunks_exact(k).enumerate() {
        let base = (row / NR) * NR * k + row % NR;
        for (kk, &v) in wrow.iter().enumerate() {
            out[base + kk * NR] = v;
        }
    }
    debug_assert!(w.len() == n * k);
    out
}

impl PackedLinear {
    fn new(n: usize, k: usize, panels: Panels, bias: Option<&[f32]>) -> Self {
        PackedLinear { n, k, panels: Arc::new(panels), first: 0, bias: bias.map(<[f32]>::to_vec) }
    }

    /// The linear of output columns `start..end` of this one, sharing its packed weight (no
    /// copy): for every input, its output is bit for bit columns `start..end` of this layer's
    /// (each panel's columns are computed the same way wherever the panel sits). So the
    /// separate layers of one fused weight (a model's q / k / v projections packed as one)
    /// cost no second copy of it.
    ///
    /// Errors: `start` not a multiple of [`NR`] (a panel's first column), `end` neither a
    /// multiple of [`NR`] nor this layer's last column, or an empty or out-of-range span.
    pub fn columns(&self, start: usize, end: usize) -> Result<Self> {
        if start >= end || end > self.n {
            return Err(CoreError::value(format!("linear columns: expected 0 <= start < end <= {}, got {start}..{end}", self.n)));
        }
        if start % NR != 0 || (end % NR != 0 && end != self.n) {
            return Err(CoreError::value(format!(
                "linear columns: start and end must fall on panels of {NR} columns (or end on the last column, {}), got {start}..{end}",
                self.n
            )));
        }
        Ok(PackedLinear {
            n: end - start,
            k: self.k,
            panels: Arc::clone(&self.panels),
            first: self.first + start / NR,
            bias: self.bias.as_ref().map(|b| b[start..end].to_vec()),
        })
    }

    /// Packs a float32 weight `w` ([N, K], row-major, as `nn.Linear.weight`) and an optional
    /// bias ([N]).
    ///
    /// Errors: N or K zero, `w.len() != N * K`, a bias of another length, or a size that
    /// overflows.
    pub fn from_f32(w: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Result<Self> {
        let size = check_dims(n, k, w.len(), bias)?;
        Ok(Self::new(n, k, Panels::F32(pack(w, n, k, size)), bias))
    }

    /// Packs a bfloat16 weight given as its raw 16-bit patterns ([N, K], row-major; the upper
    /// half of the float32 of the same value), with an optional float32 bias ([N]).
    ///
    /// Errors: as [`PackedLinear::from_f32`].
    pub fn from_bf16(w: &[u16], n: usize, k: usize, bias: Option<&[f32]>) -> Result<Self> {
        let size = check_dims(n, k, w.len(), bias)?;
        Ok(Self::new(n, k, Panels::Bf16(pack(w, n, k, size)), bias))
    }

    /// Packs a bfloat16 weight (as [`PackedLinear::from_bf16`]) for the AMX kernel: on a CPU
    /// and OS with AMX-BF16 ([`amx_available`]) every call runs `TDPBF16PS` tiles (x rounded to
    /// bfloat16, exact products, float32 sums in the hardware's order: within float32 rounding
    /// of the other kernels, not bit-equal to them; each output row depends on its own input
    /// row alone); elsewhere a portable kernel of the same layout.
    ///
    /// Errors: as [`PackedLinear::from_f32`].
    pub fn from_bf16_amx(w: &[u16], n: usize, k: usize, bias: Option<&[f32]>) -> Result<Self> {
        check_dims(n, k, w.len(), bias)?;
        let size = amx::packed_len(n, k).ok_or_else(|| CoreError::value(format!("linear weight: [{n}, {k}] is too large")))?;
        Ok(Self::new(n, k, Panels::Amx(amx::pack(w, n, k, size)), bias))
    }

    /// Output features (N).
    pub fn out_features(&self) -> usize {
        self.n
    }

    /// Input features (K).
    pub fn in_features(&self) -> usize {
        self.k
    }

    /// Whether the weight is kept as bfloat16.
    pub fn is_bf16(&self) -> bool {
        matches!(*self.panels, Panels::Bf16(_) | Panels::Amx(_))
    }

    /// Whether the weight is packed for the AMX kernel ([`PackedLinear::from_bf16_amx`]).
    pub fn is_amx(&self) -> bool {
        matches!(*self.panels, Panels::Amx(_))
    }

    /// The kernel a call runs: `"amx-bf16"` (AMX panels on an AMX CPU), `"amx-portable"` (AMX
    /// panels elsewhere), else the [`Isa`] family's name ([`Isa::detect`]).
    pub fn kernel_name(&self) -> &'static str {
        match (&*self.panels, amx::available()) {
            (Panels::Amx(_), true) => "amx-bf16",
            (Panels::Amx(_), false) => "amx-portable",
            _ => Isa::detect().name(),
        }
    }

    /// Bytes of this layer's packed panels (what one call streams; a [`PackedLinear::columns`]
    /// view counts its own panels only).
    pub fn weight_bytes(&self) -> usize {
        let panels = self.n.div_ceil(NR);
        match &*self.panels {
            Panels::F32(_) => panels * NR * self.k * 4,
            Panels::Bf16(_) => panels * NR * self.k * 2,
            Panels::Amx(_) => panels * NR * amx::kpad(self.k) * 2,
        }
    }

    /// `out[M, N] = x[M, K] @ W^T (+ bias)`, with the fastest kernel this CPU has.
    /// `threads` (1 to [`MAX_THREADS`]) split the weight panels; 1 runs on the calling thread.
    ///
    /// Errors: M zero, `x.len() != M * K`, `out.len() != M * N`, threads out of range.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32], threads: usize) -> Result<()> {
        self.forward_with(Isa::detect(), x, m, out, threads)
    }

    /// [`PackedLinear::forward`] with a chosen kernel; an `isa` this CPU lacks runs the scalar
    /// one (never an illegal instruction). AMX panels run the AMX kernel where the CPU has it,
    /// unless `isa` is [`Isa::Scalar`] (then their portable kernel).
    pub fn forward_with(&self, isa: Isa, x: &[f32], m: usize, out: &mut [f32], threads: usize) -> Result<()> {
        self.check_call(m, x.len(), out.len(), threads)?;
        let dst = kernels::Out { ptr: kernels::OutPtr::F32(out.as_mut_ptr()), m, n: self.n };
        self.run_call(isa, Input::F32(x), m, &dst, threads);
        Ok(())
    }

    /// `out[M, N] = x[M, K] @ W^T (+ bias)` for bfloat16 rows: `x` and `out` hold bfloat16 bit
    /// patterns (the float32 results rounded to nearest even, as torch's `.to(torch.bfloat16)`
    /// rounds). The same arithmetic as [`PackedLinear::forward`] on the widened x.
    ///
    /// Errors: as [`PackedLinear::forward`].
    pub fn forward_bf16(&self, x: &[u16], m: usize, out: &mut [u16], threads: usize) -> Result<()> {
        self.check_call(m, x.len(), out.len(), threads)?;
        let dst = kernels::Out { ptr: kernels::OutPtr::Bf16(out.as_mut_ptr()), m, n: self.n };
        self.run_call(Isa::detect(), Input::Bf16(x), m, &dst, threads);
        Ok(())
    }

    fn check_call(&self, m: usize, xlen: usize, outlen: usize, threads: usize) -> Result<()> {
        if m == 0 {
            return Err(CoreError::value("linear input: expected at least one row, got 0"));
        }
        if !(1..=MAX_THREADS).contains(&threads) {
            return Err(CoreError::value(format!("linear threads: expected 1 to {MAX_THREADS}, got {threads}")));
        }
        let (n, k) = (self.n, self.k);
        let want = m.checked_mul(k).ok_or_else(|| CoreError::value("linear input: too many rows"))?;
        if xlen != want {
            return Err(CoreError::shape("linear input", format!("{want} values ([{m}, {k}])"), xlen));
        }
        let olen = m.checked_mul(n).ok_or_else(|| CoreError::value("linear output: too many rows"))?;
        if outlen != olen {
            return Err(CoreError::shape("linear output", format!("{olen} values ([{m}, {n}])"), outlen));
        }
        Ok(())
    }

    /// One checked call: the panels split over `threads` (contiguous, nearly equal ranges; the
    /// caller takes the first; one thread runs on the caller alone, see `pool::run`).
    fn run_call(&self, isa: Isa, x: Input<'_>, m: usize, dst: &kernels::Out, threads: usize) {
        let k = self.k;
        let panels = self.n.div_ceil(NR);
        let threads = threads.min(panels);
        let bounds: Vec<usize> = (0..=threads).map(|t| t * panels / threads).collect();
        if let PanelsRef::Amx(w) = self.panels() {
            let rows = match x {
                Input::F32(x) => amx::Rows::new(m, k, |r, d| d.iter_mut().zip(&x[r * k..]).for_each(|(d, &v)| *d = f32_to_bf16(v))),
                Input::Bf16(x) => amx::Rows::new(m, k, |r, d| d.copy_from_slice(&x[r * k..(r + 1) * k])),
            };
            let hw = isa != Isa::Scalar && amx::available();
            return pool::run(threads, &|t| amx::run(hw, self, w, &rows, dst, bounds[t], bounds[t + 1]));
        }
        let isa = if isa.available() { isa } else { Isa::Scalar };
        let widened: Vec<f32>;
        let xs: &[f32] = match x {
            Input::F32(x) => x,
            Input::Bf16(x) => {
                widened = x.iter().map(|&v| bf16_to_f32(v)).collect();
                &widened
            }
        };
        pool::run(threads, &|t| kernels::run(isa, self, xs, m, dst, bounds[t], bounds[t + 1]));
    }

    /// This layer's panels (from its first, to the end of the shared buffer: a kernel reads
    /// panels `0..ceil(n / NR)` of it).
    pub(crate) fn panels(&self) -> PanelsRef<'_> {
        let k = self.k;
        match &*self.panels {
            Panels::F32(p) => PanelsRef::F32(&p[self.first * NR * k..]),
            Panels::Bf16(p) => PanelsRef::Bf16(&p[self.first * NR * k..]),
            Panels::Amx(p) => PanelsRef::Amx(&p[self.first * NR * amx::kpad(k)..]),
        }
    }

    pub(crate) fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
    }
}

/// bfloat16 bits -> the float32 of the same value (exact).
#[inline]
pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// float32 -> bfloat16 bits, round to nearest even (NaN -> the quiet NaN 0x7fc0), as torch's
/// `tensor.to(torch.bfloat16)` rounds.
#[inline]
pub(crate) fn f32_to_bf16(v: f32) -> u16 {
    if v.is_nan() {
        return 0x7fc0;
    }
    let b = v.to_bits();
    // no overflow: the largest non-NaN pattern is 0xff800000 (-inf)
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The rows of one call: float32, or bfloat16 bit patterns.
#[derive(Clone, Copy)]
enum Input<'a> {
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

#[cfg(test)]
mod tests;
