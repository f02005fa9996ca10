//! The sampling transforms on hostile parameters (any f64 temperature, top-k, top-p, min-p)
//! and logits (NaN, infinities, subnormals): an error, or rows of probabilities that are
//! finite, >= 0 and sum to 1, from which only positive-probability ids are sampled.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::sampling::{check_partial_row, check_row, sample_row, Transforms};
use tokenloom_fuzz::small;

fn float(u: &mut Unstructured<'_>) -> arbitrary::Result<f64> {
    Ok(match small(u, 4)? {
        0 => u.arbitrary()?,
        1 => f64::from(u.arbitrary::<i8>()?) / 8.0,
        2 => f64::from_bits(u.arbitrary::<u16>()? as u64), // subnormal
        _ => f64::from(u.arbitrary::<u8>()?) / 255.0,
    })
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let temperature = float(u)?;
    let top_k = if u.arbitrary()? {
        Some(u.arbitrary::<i64>()? % 40)
    } else {
        None
    };
    let top_p = if u.arbitrary()? {
        Some(float(u)?)
    } else {
        None
    };
    let min_p = if u.arbitrary()? {
        Some(float(u)?)
    } else {
        None
    };
    let Ok(tr) = Transforms::new(temperature, top_k, top_p, min_p) else {
        return Ok(());
    };
    let rows = 1 + small(u, 4)?;
    let v = 1 + small(u, 40)?;
    let logits: Vec<f64> = (0..rows * v)
        .map(|_| float(u))
        .collect::<arbitrary::Result<_>>()?;
    let as_f32: Vec<f32> = logits.iter().map(|&x| x as f32).collect();
    if let Ok(p) = tr.probs(&logits, rows, v) {
        for r in 0..rows {
            let row = &p[r * v..(r + 1) * v];
            assert!(row.iter().all(|x| x.is_finite() && *x >= 0.0), "{row:?}");
            let s: f64 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-9, "sum {s}");
            let mut c = Vec::new();
            check_row("p", r, row, &mut c).unwrap();
            let j = sample_row(row, f64::from(u.arbitrary::<u32>()?) / 4294967296.0);
            assert!(row[j] > 0.0);
        }
        let ids = tr
            .sample(&logits, rows, v, u.arbitrary()?, 0, u.arbitrary()?)
            .unwrap();
        for (r, &i) in ids.iter().enumerate() {
            assert!(p[r * v + i as usize] > 0.0);
        }
    }
    let _ = tr.probs(&as_f32, rows, v);
    let mut c = Vec::new();
    let _ = check_partial_row("q", 0, &logits, &mut c);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
