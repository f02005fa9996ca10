use super::*;

/// Deterministic values in [-1, 1) (a small LCG; no dependency).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn to_bf16(v: f32) -> u16 {
    (v.to_bits() >> 16) as u16 // truncation: any bf16 pattern is a valid weight
}

/// The reference: `y[m, n] = sum_k x[m, k] w[n, k] + b[n]` in float64.
fn reference(x: &[f32], w: &[f32], b: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = b.map_or(0.0, |b| b[j] as f64);
            for kk in 0..k {
                s += x[i * k + kk] as f64 * w[j * k + kk] as f64;
            }
            y[i * n + j] = s;
        }
    }
    y
}

fn assert_close(got: &[f32], want: &[f64], x: &[f32], w: &[f32], k: usize, n: usize) {
    // float32 rounding of a K-term sum: a few ulps of sum |x||w| per term count
    for (idx, (&g, &r)) in got.iter().zip(want).enumerate() {
        let (i, j) = (idx / n, idx % n);
        let mag: f64 = (0..k).map(|kk| (x[i * k + kk] as f64 * w[j * k + kk] as f64).abs()).sum::<f64>() + 1.0;
        let tol = 4.0 * k as f64 * f32::EPSILON as f64 * mag;
        assert!((g as f64 - r).abs() <= tol, "element {idx}: got {g}, expected {r} (tolerance {tol})");
    }
}

fn isas() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2Fma, Isa::Avx512].into_iter().filter(|i| i.available()).collect()
}

#[test]
fn matches_the_reference_for_f32_and_bf16_weights() {
    for &(m, n, k) in &[(1, 1, 1), (1, 16, 8), (3, 17, 5), (6, 33, 64), (7, 15, 3), (13, 40, 31), (17, 48, 576), (33, 5, 70)] {
        let x = values(m * k, 1 + m as u64);
        let w = values(n * k, 2 + n as u64);
        let b = values(n, 3);
        let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
        let w_rounded: Vec<f32> = wb.iter().map(|&v| f32::from_bits((v as u32) << 16)).collect();
        for bias in [None, Some(&b[..])] {
            let f = PackedLinear::from_f32(&w, n, k, bias).unwrap();
            let h = PackedLinear::from_bf16(&wb, n, k, bias).unwrap();
            let want_f = reference(&x, &w, bias, m, n, k);
            let want_h = reference(&x, &w_rounded, bias, m, n, k);
            for isa in isas() {
                for threads in [1, 2, 3] {
                    let mut y = vec![f32::NAN; m * n];
                    f.forward_with(isa, &x, m, &mut y, threads).unwrap();
                    assert_close(&y, &want_f, &x, &w, k, n);
                    let mut y = vec![f32::NAN; m * n];
                    h.forward_with(isa, &x, m, &mut y, threads).unwrap();
                    assert_close(&y, &want_h, &x, &w_rounded, k, n);
                }
            }
        }
    }
}

#[test]
fn kernels_agree_with_each_other_and_threads_change_nothing() {
    let (m, n, k) = (9, 50, 37);
    let x = values(m * k, 5);
    let w = values(n * k, 6);
    let lin = PackedLinear::from_f32(&w, n, k, None).unwrap();
    let mut one = vec![0.0; m * n];
    lin.forward(&x, m, &mut one, 1).unwrap();
    let mut two = vec![0.0; m * n];
    lin.forward(&x, m, &mut two, 2).unwrap();
    assert_eq!(one, two); // same kernel, same per-element order: bit-identical
    let mut scalar = vec![0.0; m * n];
    lin.forward_with(Isa::Scalar, &x, m, &mut scalar, 1).unwrap();
    assert_eq!(one, scalar); // every kernel: the same FMA sequence per element
}

/// Every kernel family against the scalar one, bit for bit, for every row count from 1 to 64
/// (the most a Python call sends; one to three row blocks, every micro-kernel size), N not a multiple
/// of 16 (a padded last panel), with and without bias, f32 and bf16 weights, 1 and 2 threads.
/// A family this CPU lacks runs the scalar kernel, so the check holds (trivially) there too.
#[test]
fn every_kernel_is_bit_identical_to_the_scalar_one_for_1_to_64_rows() {
    let (n, k) = (37, 67);
    let w = values(n * k, 31);
    let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
    let b = values(n, 32);
    let xall = values(64 * k, 33);
    for bias in [None, Some(&b[..])] {
        for lin in [PackedLinear::from_f32(&w, n, k, bias).unwrap(), PackedLinear::from_bf16(&wb, n, k, bias).unwrap()] {
            for m in 1..=64 {
                let x = &xall[..m * k];
                let mut want = vec![f32::NAN; m * n];
                lin.forward_with(Isa::Scalar, x, m, &mut want, 1).unwrap();
                for isa in [Isa::Avx2Fma, Isa::Avx512] {
                    for threads in [1, 2] {
                        let mut got = vec![f32::NAN; m * n];
                        lin.forward_with(isa, x, m, &mut got, threads).unwrap();
                        let same = got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits());
                        assert!(same, "{} rows, {:?}, bf16 {}, bias {}, {threads} threads", m, isa, lin.is_bf16(), bias.is_some());
                    }
                }
            }
        }
    }
}

#[test]
fn the_fastest_family_is_detected() {
    let isa = Isa::detect();
    assert!(isa.available());
    if Isa::Avx512.available() {
        assert_eq!((isa, isa.name(), isa.max_rows()), (Isa::Avx512, "avx512f", MR));
    } else if Isa::Avx2Fma.available() {
        assert_eq!((isa, isa.name(), isa.max_rows()), (Isa::Avx2Fma, "avx2+fma", 6));
    } else {
        assert_eq!(isa.name(), "scalar");
    }
}

#[test]
fn bad_shapes_are_errors_not_panics() {
    assert!(PackedLinear::from_f32(&[], 0, 4, None).is_err());
    assert!(PackedLinear::from_f32(&[1.0; 6], 2, 4, None).is_err());
    assert!(PackedLinear::from_f32(&[1.0; 8], 2, 4, Some(&[0.0; 3])).is_err());
    assert!(PackedLinear::from_bf16(&[0; 8], 4, 0, None).is_err());
    assert!(PackedLinear::from_f32(&[1.0; 8], usize::MAX, 2, None).is_err());
    let lin = PackedLinear::from_f32(&[1.0; 8], 2, 4, None).unwrap();
    let mut y = vec![0.0; 2];
    assert!(lin.forward(&[1.0; 4], 0, &mut [], 1).is_err());
    assert!(lin.forward(&[1.0; 3], 1, &mut y, 1).is_err());
    assert!(lin.forward(&[1.0; 4], 1, &mut y[..1], 1).is_err());
    assert!(lin.forward(&[1.0; 4], 1, &mut y, 0).is_err());
    assert!(lin.forward(&[1.0; 4], 1, &mut y, MAX_THREADS + 1).is_err());
    lin.forward(&[1.0; 4], 1, &mut y, 1).unwrap();
    assert_eq!(y, vec![4.0, 4.0]);
    assert_eq!((lin.out_features(), lin.in_features(), lin.is_bf16(), lin.weight_bytes()), (2, 4, false, NR * 4 * 4));
}

fn widen(v: u16) -> f32 {
    f32::from_bits((v as u32) << 16)
}

/// A short reference of the AMX panels' portable kernel: x rounded to bfloat16 (nearest even),
/// then `acc = fma(x[k], w[k], acc)` over k in order, plus the bias.
fn amx_portable_reference(x: &[f32], wb: &[u16], b: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for kk in 0..k {
                acc = widen(f32_to_bf16(x[i * k + kk])).mul_add(widen(wb[j * k + kk]), acc);
            }
            y[i * n + j] = acc + b.map_or(0.0, |b| b[j]);
        }
    }
    y
}

#[test]
fn bf16_rounding_is_nearest_even_like_torch() {
    let f = f32_to_bf16;
    assert_eq!(f(1.0), 0x3f80);
    assert_eq!(f(f32::from_bits(0x3f80_8000)), 0x3f80); // tie, even stays
    assert_eq!(f(f32::from_bits(0x3f81_8000)), 0x3f82); // tie, odd rounds up
    assert_eq!(f(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(f(f32::from_bits(0x3f80_7fff)), 0x3f80);
    assert_eq!(f(-0.0), 0x8000);
    assert_eq!(f(f32::INFINITY), 0x7f80);
    assert_eq!(f(f32::NEG_INFINITY), 0xff80);
    assert_eq!(f(f32::MAX), 0x7f80); // rounds up to infinity, as torch does
    assert_eq!(f(f32::NAN), 0x7fc0);
    assert_eq!(f(f32::from_bits(0xffff_ffff)), 0x7fc0);
}

/// The AMX panels (the hardware kernel where this CPU has it, else the portable one) against
/// the float64 sum of the bf16-rounded inputs, and the portable kernel bit for bit against its
/// short reference; K not a multiple of 32 (padding), N not a multiple of 16, 1-3 threads.
#[test]
fn amx_panels_match_the_reference() {
    for &(m, n, k) in &[(1, 1, 1), (1, 16, 32), (3, 17, 5), (6, 33, 64), (16, 40, 31), (17, 48, 576), (33, 5, 70), (64, 20, 100)] {
        let x = values(m * k, 11 + m as u64);
        let xr: Vec<f32> = x.iter().map(|&v| widen(f32_to_bf16(v))).collect();
        let w = values(n * k, 12 + n as u64);
        let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
        let wr: Vec<f32> = wb.iter().map(|&v| widen(v)).collect();
        let b = values(n, 13);
        for bias in [None, Some(&b[..])] {
            let lin = PackedLinear::from_bf16_amx(&wb, n, k, bias).unwrap();
            assert!(lin.is_amx() && lin.is_bf16());
            let want = reference(&xr, &wr, bias, m, n, k);
            let portable = amx_portable_reference(&x, &wb, bias, m, n, k);
            for threads in [1, 2, 3] {
                let mut y = vec![f32::NAN; m * n];
                lin.forward(&x, m, &mut y, threads).unwrap();
                assert_close(&y, &want, &xr, &wr, k, n);
                let mut y = vec![f32::NAN; m * n];
                lin.forward_with(Isa::Scalar, &x, m, &mut y, threads).unwrap();
                assert!(y.iter().zip(&portable).all(|(a, b)| a.to_bits() == b.to_bits()), "portable AMX kernel, {m}x{n}x{k}");
            }
        }
    }
}

/// What a tree step needs from a kernel: each output row depends on its own input row alone.
/// For every row count from 1 to 100 (one to seven row blocks of every size, one to four
/// passes per panel), every row of a call is bit-equal to the same row computed alone, for the AMX panels (hardware where this
/// CPU has it) and their portable kernel, on 1 and 2 threads.
#[test]
fn amx_rows_do_not_depend_on_the_other_rows() {
    let (n, k) = (37, 96);
    let wb: Vec<u16> = values(n * k, 41).iter().map(|&v| to_bf16(v)).collect();
    let b = values(n, 42);
    let lin = PackedLinear::from_bf16_amx(&wb, n, k, Some(&b)).unwrap();
    let xall = values(100 * k, 43);
    for isa in [Isa::detect(), Isa::Scalar] {
        let alone: Vec<Vec<f32>> = (0..100)
            .map(|r| {
                let mut y = vec![0.0; n];
                lin.forward_with(isa, &xall[r * k..(r + 1) * k], 1, &mut y, 1).unwrap();
                y
            })
            .collect();
        for m in 1..=100 {
            for threads in [1, 2] {
                let mut y = vec![f32::NAN; m * n];
                lin.forward_with(isa, &xall[..m * k], m, &mut y, threads).unwrap();
                for (r, row) in y.chunks_exact(n).enumerate() {
                    assert!(row.iter().zip(&alone[r]).all(|(a, b)| a.to_bits() == b.to_bits()), "{isa:?}: row {r} of {m} differs from the row alone");
                }
            }
        }
    }
}

/// `forward_bf16` (bf16 rows in, bf16 out) gives the float32 call's output on the widened rows,
/// rounded to nearest even, for every kind of panel.
#[test]
fn bf16_calls_round_the_float32_results() {
    let (m, n, k) = (5, 21, 40);
    let xb: Vec<u16> = values(m * k, 51).iter().map(|&v| to_bf16(v)).collect();
    let xw: Vec<f32> = xb.iter().map(|&v| widen(v)).collect();
    let w = values(n * k, 52);
    let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
    let b = values(n, 53);
    for lin in [
        PackedLinear::from_f32(&w, n, k, Some(&b)).unwrap(),
        PackedLinear::from_bf16(&wb, n, k, Some(&b)).unwrap(),
        PackedLinear::from_bf16_amx(&wb, n, k, Some(&b)).unwrap(),
    ] {
        for threads in [1, 2] {
            let mut y = vec![0.0f32; m * n];
            lin.forward(&xw, m, &mut y, threads).unwrap();
            let mut yb = vec![0u16; m * n];
            lin.forward_bf16(&xb, m, &mut yb, threads).unwrap();
            assert_eq!(yb, y.iter().map(|&v| f32_to_bf16(v)).collect::<Vec<_>>(), "{}", lin.kernel_name());
        }
    }
    let lin = PackedLinear::from_bf16_amx(&wb, n, k, None).unwrap();
    assert!(lin.forward_bf16(&xb[..k - 1], 1, &mut vec![0; n], 1).is_err());
    assert!(lin.forward_bf16(&xb[..k], 1, &mut vec![0; n - 1], 1).is_err());
    assert!(lin.forward_bf16(&xb[..k], 1, &mut vec![0; n], 0).is_err());
    assert!(PackedLinear::from_bf16_amx(&wb, n, k + 1, None).is_err());
    assert_eq!(lin.kernel_name(), if amx_available() { "amx-bf16" } else { "amx-portable" });
}

/// Column views ([`PackedLinear::columns`]) of one packed weight give, bit for bit, the
/// columns of the whole layer's output and the output of each part packed on its own, for
/// every kind of panel, kernel, row count and thread count; they share the weight (no copy).
#[test]
fn column_views_equal_the_parts_packed_alone() {
    // parts of 32, 16 and 21 columns (the last ends off a panel boundary), K off 32
    let (k, parts) = (70, [32usize, 16, 21]);
    let n: usize = parts.iter().sum();
    let w = values(n * k, 61);
    let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
    let b = values(n, 62);
    type Pack = fn(&[f32], &[u16], usize, usize, Option<&[f32]>) -> PackedLinear;
    let packs: [Pack; 3] = [
        |w, _, n, k, b| PackedLinear::from_f32(w, n, k, b).unwrap(),
        |_, wb, n, k, b| PackedLinear::from_bf16(wb, n, k, b).unwrap(),
        |_, wb, n, k, b| PackedLinear::from_bf16_amx(wb, n, k, b).unwrap(),
    ];
    for pack in packs {
        for bias in [None, Some(&b[..])] {
            let whole = pack(&w, &wb, n, k, bias);
            let mut start = 0;
            for &cols in &parts {
                let end = start + cols;
                let view = whole.columns(start, end).unwrap();
                let alone = pack(&w[start * k..end * k], &wb[start * k..end * k], cols, k, bias.map(|b| &b[start..end]));
                assert_eq!((view.out_features(), view.in_features(), view.weight_bytes()), (cols, k, alone.weight_bytes()));
                assert!(Arc::ptr_eq(&view.panels, &whole.panels));
                for isa in [Isa::detect(), Isa::Scalar] {
                    for m in [1, 2, 17, 40] {
                        let x = values(m * k, 63 + m as u64);
                        let mut y_whole = vec![0.0f32; m * n];
                        whole.forward_with(isa, &x, m, &mut y_whole, 1).unwrap();
                        for threads in [1, 2] {
                            let (mut y_view, mut y_alone) = (vec![f32::NAN; m * cols], vec![f32::NAN; m * cols]);
                            view.forward_with(isa, &x, m, &mut y_view, threads).unwrap();
                            alone.forward_with(isa, &x, m, &mut y_alone, threads).unwrap();
                            let cut: Vec<u32> = y_whole.chunks_exact(n).flat_map(|r| r[start..end].iter().map(|v| v.to_bits())).collect();
                            let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&y_view), cut, "{} {isa:?} m={m}: view {start}..{end} vs the whole layer", view.kernel_name());
                            assert_eq!(bits(&y_alone), cut, "{} {isa:?} m={m}: part {start}..{end} packed alone", view.kernel_name());
                        }
                    }
                }
                // a view of a view
                if cols > NR {
                    let inner = view.columns(NR, cols).unwrap();
                    let x = values(3 * k, 71);
                    let (mut a, mut c) = (vec![0.0f32; 3 * (cols - NR)], vec![0.0f32; 3 * n]);
                    inner.forward(&x, 3, &mut a, 2).unwrap();
                    whole.forward(&x, 3, &mut c, 2).unwrap();
                    let cut: Vec<f32> = c.chunks_exact(n).flat_map(|r| r[start + NR..end].to_vec()).collect();
                    assert_eq!(a, cut);
                }
                start = end;
            }
            // spans that are not panels are errors, not panics
            for (s, e) in [(0, 0), (5, 16), (0, 17), (16, n + 1), (32, 16)] {
                assert!(whole.columns(s, e).is_err(), "{s}..{e}");
            }
            assert!(whole.columns(64, n).is_ok());
        }
    }
}

/// A small linear for the pool tests: 3 panels (so 2 threads both get work) and its result on
/// one thread.
fn tiny() -> (PackedLinear, Vec<f32>, Vec<f32>) {
    let (m, n, k) = (2, 40, 24);
    let lin = PackedLinear::from_f32(&values(n * k, 21), n, k, Some(&values(n, 22))).unwrap();
    let x = values(m * k, 23);
    let mut want = vec![0.0; m * n];
    lin.forward(&x, m, &mut want, 1).unwrap();
    (lin, x, want)
}

#[test]
fn many_tiny_two_thread_calls_are_all_right() {
    // Back to back: the worker is spinning when each call comes (the no-system-call path).
    let (lin, x, want) = tiny();
    let mut y = vec![0.0; want.len()];
    for i in 0..20_000 {
        y.fill(f32::NAN);
        lin.forward(&x, 2, &mut y, 2).unwrap();
        assert_eq!(y, want, "call {i}");
    }
}

#[test]
fn calls_after_pauses_longer_than_the_spin_wake_parked_workers() {
    let (lin, x, want) = tiny();
    let mut y = vec![0.0; want.len()];
    for i in 0..30 {
        // the workers spin for pool::SPIN, then park on the condition variable
        std::thread::sleep(pool::SPIN * (2 + i % 3) + std::time::Duration::from_micros(50 * (i % 5) as u64));
        for threads in [2, 3] {
            y.fill(f32::NAN);
            lin.forward(&x, 2, &mut y, threads).unwrap();
            assert_eq!(y, want, "call {i}, {threads} threads");
        }
    }
}

/// Per-call cost of a tiny (64 x 64, one row) call on 1 and 2 threads: what the pool's
/// hand-off costs, back to back (gap 0) and when the caller does other work between calls (a
/// busy wait of `gap` microseconds, as Python runs the model's other operations; past the
/// pool's spin a worker that has gone to sleep must be woken). Timing only, no thresholds; run
/// with `cargo test -p tokenloom-core --release -- --ignored --nocapture tiny_call_cost`.
#[test]
#[ignore]
fn tiny_call_cost() {
    let (n, k) = (64, 64);
    let lin = PackedLinear::from_f32(&values(n * k, 11), n, k, None).unwrap();
    let x = values(k, 12);
    let mut y = vec![0.0f32; n];
    for (gap_us, calls, rounds) in [(0u64, 2000, 9usize), (20, 300, 5), (300, 300, 5), (1500, 100, 5)] {
        let gap = std::time::Duration::from_micros(gap_us);
        let mut per: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for _round in 0..rounds {
            for (i, threads) in [1usize, 2].into_iter().enumerate() {
                let mut total = 0.0;
                for _ in 0..calls {
                    let g = std::time::Instant::now();
                    while g.elapsed() < gap {
                        std::hint::spin_loop();
                    }
                    let t = std::time::Instant::now();
                    lin.forward(&x, 1, &mut y, threads).unwrap();
                    total += t.elapsed().as_secs_f64();
                }
                per[i].push(total / calls as f64 * 1e6);
            }
        }
        for (i, threads) in [1, 2].into_iter().enumerate() {
            per[i].sort_by(|a, b| a.partial_cmp(b).unwrap());
            let (lo, mid, hi) = (per[i][0], per[i][rounds / 2], per[i][rounds - 1]);
            eprintln!("tiny call after {gap_us} us of other work, {threads} thread(s): median {mid:.2} us (min {lo:.2}, max {hi:.2})");
        }
    }
}

/// Time per call of each kernel family for a few row counts on the embedded model's 1536 x 576
/// weight (f32 and bf16, one thread), interleaved, medians. Timing only; run with
/// `cargo test -p tokenloom-core --release -- --ignored --nocapture kernel_rows_timing`.
#[test]
#[ignore]
fn kernel_rows_timing() {
    let (n, k) = (1536, 576);
    let w = values(n * k, 41);
    let wb: Vec<u16> = w.iter().map(|&v| to_bf16(v)).collect();
    let lins = [PackedLinear::from_f32(&w, n, k, None).unwrap(), PackedLinear::from_bf16(&wb, n, k, None).unwrap()];
    let rows = [1usize, 8, 9, 12, 16, 17, 24, 25, 30, 33];
    let isas: Vec<Isa> = isas().into_iter().filter(|&i| i != Isa::Scalar).collect();
    let x = values(33 * k, 42);
    let mut y = vec![0.0f32; 33 * n];
    let mut t: std::collections::HashMap<(usize, usize, usize), Vec<f64>> = Default::default();
    for _round in 0..7 {
        for (li, lin) in lins.iter().enumerate() {
            for &m in &rows {
                for (ii, &isa) in isas.iter().enumerate() {
                    let reps = 20;
                    let s = std::time::Instant::now();
                    for _ in 0..reps {
                        lin.forward_with(isa, &x[..m * k], m, &mut y[..m * n], 1).unwrap();
                    }
                    t.entry((li, m, ii)).or_default().push(s.elapsed().as_secs_f64() / reps as f64 * 1e6);
                }
            }
        }
    }
    for li in 0..2 {
        for &m in &rows {
            let line: Vec<String> = isas
                .iter()
                .enumerate()
                .map(|(ii, isa)| {
                    let v = t.get_mut(&(li, m, ii)).unwrap();
                    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    format!("{} {:.1} us", isa.name(), v[v.len() / 2])
                })
                .collect();
            eprintln!("{} M={m}: {}", if li == 0 { "f32 " } else { "bf16" }, line.join(", "));
        }
    }
}

/// All linears of one decoding step of a 135M model (30 layers of 576x576, 192x576 x2, 576x576,
/// 1536x576 x2, 576x1536, and a 49152 x 576 head) for a few row counts, 1 and 2 threads,
/// medians of 5. f32 weights, the detected kernel family; `BF16=1` for bf16 weights, `AMX=1`
/// for bf16 weights in the AMX panels, `AVX2=1` for the AVX2 kernels. Timing only:
/// `cargo test -p tokenloom-core --release -- --ignored --nocapture step_timing`.
#[test]
#[ignore]
fn step_timing() {
    let shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let bf16 = std::env::var("BF16").is_ok();
    let amx = std::env::var("AMX").is_ok();
    let mk = |w: &[f32], n: usize, k: usize| {
        if amx {
            PackedLinear::from_bf16_amx(&w.iter().map(|&v| to_bf16(v)).collect::<Vec<u16>>(), n, k, None).unwrap()
        } else if bf16 {
            PackedLinear::from_bf16(&w.iter().map(|&v| to_bf16(v)).collect::<Vec<u16>>(), n, k, None).unwrap()
        } else {
            PackedLinear::from_f32(w, n, k, None).unwrap()
        }
    };
    let isa = if std::env::var("AVX2").is_ok() { Isa::Avx2Fma } else { Isa::detect() };
    let mut lins = Vec::new();
    for l in 0..30 {
        for (i, &(n, k)) in shapes.iter().enumerate() {
            lins.push(mk(&values(n * k, (l * 7 + i) as u64), n, k));
        }
    }
    lins.push(mk(&values(49152 * 576, 999), 49152, 576));
    let x = values(33 * 1536, 5);
    let mut y = vec![0.0f32; 33 * 49152];
    let ms = [1usize, 2, 9, 17, 33];
    // `BF16_IO=1`: bf16 rows in and out (forward_bf16), as the Python layer calls a bf16 model
    let bf16_io = std::env::var("BF16_IO").is_ok();
    let xb: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
    let mut yb = vec![0u16; y.len()];
    let mut step = |m: usize, th: usize, y: &mut [f32]| {
        for lin in &lins {
            let (n, k) = (lin.out_features(), lin.in_features());
            if bf16_io {
                lin.forward_bf16(&xb[..m * k], m, &mut yb[..m * n], th).unwrap();
            } else {
                lin.forward_with(isa, &x[..m * k], m, &mut y[..m * n], th).unwrap();
            }
        }
    };
    let mut t: std::collections::HashMap<(usize, usize), Vec<f64>> = Default::default();
    for round in 0..6 {
        for &m in &ms {
            for th in [1, 2] {
                let s = std::time::Instant::now();
                step(m, th, &mut y);
                if round > 0 {
                    t.entry((m, th)).or_default().push(s.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    }
    for th in [1, 2] {
        let line: Vec<String> = ms
            .iter()
            .map(|&m| {
                let v = t.get_mut(&(m, th)).unwrap();
                v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                format!("M={m}: {:.1}", v[v.len() / 2])
            })
            .collect();
        eprintln!("{} threads {th} (ms): {}", lins[0].kernel_name(), line.join(", "));
    }
}

/// GFLOP/s of the detected kernel family with a weight that stays in L2 (128 x 576 f32, one
/// thread): the arithmetic alone, without the memory stream. On the 2-core Sapphire Rapids VM
/// the AVX-512 kernel reaches ~160 GFLOP/s (the FMA peak of one core) from M=16 on, so what a
/// step loses beyond its memory time is overlap, not the micro-kernel. Timing only:
/// `cargo test -p tokenloom-core --release -- --ignored --nocapture l2_gflops`.
#[test]
#[ignore]
fn l2_gflops() {
    let (n, k) = (128, 576);
    let lin = PackedLinear::from_f32(&values(n * k, 3), n, k, None).unwrap();
    let x = values(33 * k, 5);
    let mut y = vec![0.0f32; 33 * n];
    for &m in &[1usize, 9, 16, 17, 30, 33] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let reps = 2000;
            let s = std::time::Instant::now();
            for _ in 0..reps {
                lin.forward(&x[..m * k], m, &mut y[..m * n], 1).unwrap();
            }
            best = best.min(s.elapsed().as_secs_f64() / reps as f64);
        }
        eprintln!("M={m}: {:.1} us, {:.1} GFLOP/s", best * 1e6, 2.0 * (m * n * k) as f64 / best / 1e9);
    }
}

/// The AMX kernel with a weight that stays in L2 (576 x 576 bf16, one thread): the tile
/// arithmetic alone, without the memory stream. Timing only:
/// `cargo test -p tokenloom-core --release -- --ignored --nocapture amx_l2_rate`.
#[test]
#[ignore]
fn amx_l2_rate() {
    let (n, k) = (576, 576);
    let wb: Vec<u16> = values(n * k, 3).iter().map(|&v| to_bf16(v)).collect();
    let lin = PackedLinear::from_bf16_amx(&wb, n, k, None).unwrap();
    let x: Vec<u16> = values(64 * k, 5).iter().map(|&v| to_bf16(v)).collect();
    let mut y = vec![0u16; 64 * n];
    for &m in &[1usize, 8, 16, 17, 24, 32, 33, 48, 64] {
        let mut best = f64::MAX;
        for _ in 0..5 {
            let reps = 500;
            let s = std::time::Instant::now();
            for _ in 0..reps {
                lin.forward_bf16(&x[..m * k], m, &mut y[..m * n], 1).unwrap();
            }
            best = best.min(s.elapsed().as_secs_f64() / reps as f64);
        }
        eprintln!("{} M={m}: {:.1} us, {:.1} GFLOP/s, {:.1} GB/s of weights", lin.kernel_name(), best * 1e6, 2.0 * (m * n * k) as f64 / best / 1e9, (n * k * 2) as f64 / best / 1e9);
    }
}
