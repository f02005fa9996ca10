//! The AMX kernel of [`super::PackedLinear`] for bfloat16 weights (`Panels::Amx`), and its
//! portable stand-in.
//!
//! Why: on a CPU with AMX-BF16 (Sapphire Rapids and later) one `TDPBF16PS` multiplies a tile
//! of up to 16 rows of x by 16 output columns x 32 of K, so the arithmetic of a tree step's
//! extra rows is nearly free and a call is bound by streaming the weight. Measured on a 2-core
//! Sapphire Rapids VM, all linears of the embedded 135M model (212 MB of bf16), 2 threads:
//! 7.4 ms at 1 row, 8.9 ms at 17, 10 ms at 32; the AVX-512 kernel, which widens each weight to
//! float32, takes ~15 ms at 1 row and is bound by its FMAs beyond ~8 rows.
//!
//! Layout (packed once): panels of [`NR`] output columns; within a panel, K in pairs, each pair
//! holding the 16 columns' two values side by side (`panel[k / 2][n][k % 2]`, the "VNNI" form
//! that `TDPBF16PS` reads); K zero-padded to a multiple of 32 ([`kpad`]).
//!
//! Arithmetic: x is rounded to bfloat16 (exact for a bfloat16 model's activations), every
//! product of two bfloat16 values is exact in float32, and the products are summed in float32
//! by the hardware in its own (fixed) order. That order is not the sequential one, so the AMX
//! result is not bit-equal to the other kernel families; it is within float32 rounding of the
//! exact sum. What it keeps is **row invariance**: each output row is a function of its own
//! input row alone, the same whatever other rows share the call (every row goes through the
//! same sequence of tile operations), which is what a tree step needs to match the one-token
//! steps. Where the CPU (or OS) has no AMX, the portable kernel runs the same layout with a
//! sequential float32 sum: row-invariant too, but not bit-equal to AMX.

use super::kernels::Out;
use super::{bf16_to_f32, PackedLinear, NR};

/// K of every chunk one `TDPBF16PS` consumes (a 64-byte row of bf16 pairs).
const KC: usize = 32;
/// Most rows of one tile (one row block).
const TILE_ROWS: usize = 16;

/// K padded to a multiple of [`KC`].
pub(super) fn kpad(k: usize) -> usize {
    k.div_ceil(KC) * KC
}

/// Packs `w` ([n, k] bf16 bits, row-major) into the AMX panel layout (see the module doc).
pub(super) fn pack(w: &[u16], n: usize, k: usize, size: usize) -> Vec<u16> {
    let kp = kpad(k);
    debug_assert!(size == n.div_ceil(NR) * NR * kp);
    let mut out = vec![0u16; size];
    for (row, wrow) in w.chunks_exact(k).enumerate() {
        let base = (row / NR) * NR * kp + (row % NR) * 2;
        for (kk, &v) in wrow.iter().enumerate() {
            out[base + (kk / 2) * 2 * NR + kk % 2] = v;
        }
    }
    out
}

/// Packed size (elements) for [n, k], or None on overflow.
pub(super) fn packed_len(n: usize, k: usize) -> Option<usize> {
    n.div_ceil(NR).checked_mul(NR)?.checked_mul(kpad(k))
}

/// How one call's rows are laid out for the tiles: `blocks` row blocks of `rb` rows each (the
/// last zero-padded), x as bf16 in `[blocks * rb, kpad]`, zero columns past k.
pub(super) struct Rows {
    pub x: Vec<u16>,
    pub rb: usize,
    pub blocks: usize,
    pub m: usize,
}

impl Rows {
    /// `m` rows of `k` values, each given by `row(r, dst)` writing the row's k bf16 values.
    pub(super) fn new(m: usize, k: usize, row: impl Fn(usize, &mut [u16])) -> Rows {
        let blocks = m.div_ceil(TILE_ROWS);
        let rb = m.div_ceil(blocks);
        let kp = kpad(k);
        let mut x = vec![0u16; blocks * rb * kp];
        for (r, dst) in x.chunks_exact_mut(kp).take(m).enumerate() {
            row(r, &mut dst[..k]);
        }
        Rows { x, rb, blocks, m }
    }
}

/// Whether this CPU and OS run AMX-BF16 (checked once: CPUID, then Linux's permission request
/// for the tile data, which also fails where the kernel does not support it).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID.(EAX=7, ECX=0):EDX bit 22 = AMX-BF16, bit 24 = AMX-TILE
    // SAFETY: CPUID leaf 7 exists on every x86-64 CPU that reports a max leaf >= 7, checked first.
    #[allow(unused_unsafe)]
    let max_leaf = unsafe { std::arch::x86_64::__cpuid(0) }.eax;
    if max_leaf < 7 {
        return false;
    }
    #[allow(unused_unsafe)]
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    if (edx >> 22) & 1 == 0 || (edx >> 24) & 1 == 0 {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only asks the kernel for a permission; it reads
    // and writes no memory of ours. It is process-wide and idempotent.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Panels `p0..p1` of `lin` (AMX layout) times the rows of `rows`, into `out`: with the AMX
/// instructions when `hardware` (the caller checked [`available`]), else the portable kernel.
pub(super) fn run(hardware: bool, lin: &PackedLinear, panels: &[u16], rows: &Rows, out: &Out, p0: usize, p1: usize) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    if hardware {
        // SAFETY: `hardware` is only true where `available()` is (CPU has AMX-BF16, the OS
        // granted the tile data); the sizes are checked inside.
        unsafe { tiles::run(lin, panels, rows, out, p0, p1) };
        return;
    }
    let _ = hardware;
    portable(lin, panels, rows, out, p0, p1)
}

/// The portable kernel: per output, `acc = 0; for k: acc = fma(x_bf16[m, k], w[n, k], acc)`
/// (each product exact), then the bias.
fn portable(lin: &PackedLinear, panels: &[u16], rows: &Rows, out: &Out, p0: usize, p1: usize) {
    let kp = kpad(lin.in_features());
    let mut tile = vec![[0.0f32; NR]; rows.m];
    for p in p0..p1 {
        let panel = &panels[p * NR * kp..(p + 1) * NR * kp];
        for (r, trow) in tile.iter_mut().enumerate() {
            let xr = &rows.x[r * kp..(r + 1) * kp];
            let mut acc = [0.0f32; NR];
            for (pair, xp) in panel.chunks_exact(2 * NR).zip(xr.chunks_exact(2)) {
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = bf16_to_f32(xp[0]).mul_add(bf16_to_f32(pair[2 * j]), *a);
                    *a = bf16_to_f32(xp[1]).mul_add(bf16_to_f32(pair[2 * j + 1]), *a);
                }
            }
            *trow = acc;
        }
        out.store(&tile, 0, p, lin.bias());
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod tiles {
    use std::arch::asm;

    use super::{kpad, Rows, KC, NR, TILE_ROWS};
    use crate::linear::kernels::Out;
    use crate::linear::PackedLinear;

    /// The 64-byte tile configuration (palette 1): tiles 0-3 accumulators (`rb` rows x 16
    /// float32), 4-5 x blocks (`rb` rows x 32 bf16), 6-7 weight chunks (16 pairs x 16 columns).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    impl Config {
        fn new(rb: usize) -> Config {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t] = 64; // bytes per row (low byte of the u16; high byte 0)
                c[48 + t] = if t < 6 { rb as u8 } else { TILE_ROWS as u8 };
            }
            Config(c)
        }
    }

    /// Panels `p0..p1` times every row block: two panels and two row blocks at a time (4
    /// accumulator tiles), each weight chunk loaded once per pair of row blocks.
    ///
    /// # Safety
    /// The CPU must have AMX-BF16 and the OS must have granted the tile data (`available`).
    pub(super) unsafe fn run(lin: &PackedLinear, panels: &[u16], rows: &Rows, out: &Out, p0: usize, p1: usize) {
        let kp = kpad(lin.in_features());
        let (rb, blocks, m) = (rows.rb, rows.blocks, rows.m);
        assert!(
            (1..=TILE_ROWS).contains(&rb) && rows.x.len() == blocks * rb * kp && panels.len() >= p1 * NR * kp && m <= blocks * rb,
            "amx kernel: internal size mismatch"
        );
        let cfg = Config::new(rb);
        let xstride = kp * 2; // bytes per x row
        let chunks = kp / KC;
        let mut buf = vec![[0.0f32; NR]; 2 * rb];
        // SAFETY (every asm block below): the tiles are configured by this ldtilecfg, each
        // load reads rb (x) or 16 (weights) rows of 64 bytes inside `rows.x` / `panels` (sizes
        // asserted above), each store writes rb rows of 64 bytes inside `buf`.
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        let mut p = p0;
        while p < p1 {
            let two = p + 1 < p1;
            let w0 = panels.as_ptr().add(p * NR * kp) as *const u8;
            let w1 = if two { w0.add(NR * kp * 2) } else { w0 };
            let mut b = 0;
            while b < blocks {
                let second = b + 1 < blocks;
                asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                let x0 = (rows.x.as_ptr() as *const u8).add(b * rb * xstride);
                let x1 = x0.add(rb * xstride);
                for ch in 0..chunks {
                    let (xa, xb) = (x0.add(ch * KC * 2), x1.add(ch * KC * 2));
                    let (wa, wb) = (w0.add(ch * KC * NR * 2), w1.add(ch * KC * NR * 2));
                    asm!(
                        "tileloadd tmm4, [{x} + {s} * 1]",
                        "tileloadd tmm6, [{w} + {s64} * 1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        x = in(reg) xa, s = in(reg) xstride, w = in(reg) wa, s64 = in(reg) 64usize,
                        options(nostack, readonly)
                    );
                    if second {
                        asm!(
                            "tileloadd tmm5, [{x} + {s} * 1]",
                            "tdpbf16ps tmm1, tmm5, tmm6",
                            x = in(reg) xb, s = in(reg) xstride,
                            options(nostack, readonly)
                        );
                    }
                    if two {
                        asm!(
                            "tileloadd tmm7, [{w} + {s64} * 1]",
                            "tdpbf16ps tmm2, tmm4, tmm7",
                            w = in(reg) wb, s64 = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                        if second {
                            asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem));
                        }
                    }
                }
                let r0 = b * rb;
                let valid = m.min(r0 + if second { 2 * rb } else { rb }) - r0;
                let dst = buf.as_mut_ptr() as *mut u8;
                asm!("tilestored [{d} + {s} * 1], tmm0", d = in(reg) dst, s = in(reg) 64usize, options(nostack));
                if second {
                    asm!("tilestored [{d} + {s} * 1], tmm1", d = in(reg) dst.add(rb * 64), s = in(reg) 64usize, options(nostack));
                }
                out.store(&buf[..valid], r0, p, lin.bias());
                if two {
                    asm!("tilestored [{d} + {s} * 1], tmm2", d = in(reg) dst, s = in(reg) 64usize, options(nostack));
                    if second {
                        asm!("tilestored [{d} + {s} * 1], tmm3", d = in(reg) dst.add(rb * 64), s = in(reg) 64usize, options(nostack));
                    }
                    out.store(&buf[..valid], r0, p + 1, lin.bias());
                }
                b += 2;
            }
            p += if two { 2 } else { 1 };
        }
        asm!("tilerelease", options(nostack, nomem));
    }
}
