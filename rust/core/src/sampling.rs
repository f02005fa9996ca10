//! Sampling transforms (logits -> probabilities), probability-row checks and categorical
//! sampling: the one implementation every sampler and verifier of tokenloom uses.
//!
//! # Transforms, in this order
//! 1. **temperature** `T`: `z = logits / T`. `T == 0` means greedy: the result is the one-hot
//!    row of the argmax (ties -> lowest id) and the other transforms are skipped.
//! 2. **top-k** `k >= 1`: keep every token whose logit is `>=` the k-th largest logit (ties at
//!    the boundary are all kept, as in transformers' `TopKLogitsWarper`).
//! 3. **top-p** `0 < p <= 1`: with `P = softmax(z)` over the kept tokens sorted by decreasing
//!    probability, let `m` be the smallest count whose cumulative mass reaches `p`; keep every
//!    token whose probability is `>=` the m-th one (ties kept). `p == 1` keeps everything.
//! 4. **min-p** `0 <= m <= 1`: keep every token with probability `>= m * max probability`.
//! 5. Renormalise. All arithmetic is in `f64` (a max-subtracted softmax).
//!
//! Logits may be `-inf` (a masked token); `NaN` and `+inf` are errors, and so is a row whose
//! logits are all `-inf`.
//!
//! Temperature divides (`(l - max) / T`, never `(l - max) * (1 / T)`): for a subnormal `T` the
//! reciprocal overflows to `inf` and `0 * inf` would be NaN. Dividing keeps the exact limit
//! `T -> 0+`: every maximal logit gets `exp(0) = 1`, every other one `exp(-inf) = 0`, so the
//! row is uniform over the tied maxima (`T == 0` instead takes the lowest tied id).
//!
//! # Probability rows
//! One check, one tolerance, for every kernel that reads probabilities: entries must be finite
//! and non-negative, and the row must sum to 1 within [`PROB_TOL`] ([`check_row`], a full
//! distribution: verifiers) or to at most `1 + PROB_TOL` ([`check_partial_row`], a restriction
//! of a distribution such as its top-k: the dynamic tree builder). The tolerance is absolute,
//! which for a sum of 1 is also relative. Rows are used divided by their actual sum.
//! Categorical sampling is the inverse CDF: for a uniform `u in [0, 1)` the sample is the
//! smallest index `j` with `p_0 + ... + p_j > u * sum(p)`.

use crate::error::{CoreError, Result};

/// Largest allowed `|sum(row) - 1|` of a probability row.
pub const PROB_TOL: f64 = 1e-4;

/// Elements per partial sum kept by [`scan_row`] (the inverse CDF skips whole chunks).
pub const CHUNK: usize = 64;

/// The element types of probability and logit arrays (`f32`, `f64`); arithmetic is in `f64`.
pub trait Real: Copy + Send + Sync + 'static {
    fn get(self) -> f64;
}

impl Real for f32 {
    #[inline(always)]
    fn get(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    #[inline(always)]
    fn get(self) -> f64 {
        self
    }
}

/// Sums `row` in f64 and fills `chunks` with the sums of its [`CHUNK`]-element pieces.
/// Returns `Err(index)` of the first entry that is negative, NaN or infinite.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(x >= 0.0)` is true for NaN on purpose
pub fn scan_row<R: Real>(row: &[R], chunks: &mut Vec<f64>) -> std::result::Result<f64, usize> {
    chunks.clear();
    let mut total = 0.0;
    let mut low = 0.0f64;
    for piece in row.chunks(CHUNK) {
        let mut lanes = [0.0f64; 8];
        let mut mins = [0.0f64; 8];
        let mut it = piece.chunks_exact(8);
        for eight in &mut it {
            for j in 0..8 {
                let x = eight[j].get();
                lanes[j] += x;
                mins[j] = if x < mins[j] { x } else { mins[j] };
            }
        }
        for (j, x) in it.remainder().iter().enumerate() {
            let x = x.get();
            lanes[j] += x;
            mins[j] = if x < mins[j] { x } else { mins[j] };
        }
        let s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]))
            + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        low = mins.iter().fold(low, |a, &b| if b < a { b } else { a });
        chunks.push(s);
        total += s;
    }
    // NaN and +inf make the sum non-finite; a negative entry (-inf included) lowers the minimum.
    if low < 0.0 || !total.is_finite() {
        let i = row
            .iter()
            .position(|x| !(x.get() >= 0.0) || x.get() == f64::INFINITY)
            .unwrap_or(0);
        return Err(i);
    }
    Ok(total)
}

/// What the sum of a probability row must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowSum {
    /// A full distribution: `|sum - 1| <= PROB_TOL`.
    One,
    /// Part of a distribution (e.g. its top-k entries): `sum <= 1 + PROB_TOL`.
    AtMostOne,
}

/// Checks one probability row (entries finite and `>= 0`, the sum as `want` says, within
/// [`PROB_TOL`]) and returns its sum; `chunks` receives the partial sums for
/// [`sample_scanned`]. `what[row_index]` names the row in error messages.
pub fn check_row_sum<R: Real>(
    what: &str,
    row_index: usize,
    row: &[R],
    want: RowSum,
    chunks: &mut Vec<f64>,
) -> Result<f64> {
    match scan_row(row, chunks) {
        Err(i) => Err(entry_error(what, row_index, i, row[i].get())),
        Ok(s) if want == RowSum::One && (s - 1.0).abs() > PROB_TOL => Err(CoreError::value(
            format!("{what}[{row_index}] sums to {s}: expected 1 within {PROB_TOL}"),
        )),
        Ok(s) if want == RowSum::AtMostOne && s > 1.0 + PROB_TOL => Err(CoreError::value(format!(
            "{what}[{row_index}] sums to {s}: expected at most 1 (+{PROB_TOL})"
        ))),
        Ok(s) => Ok(s),
    }
}

/// [`check_row_sum`] of a full distribution (sums to 1 within [`PROB_TOL`]).
pub fn check_row<R: Real>(
    what: &str,
    row_index: usize,
    row: &[R],
    chunks: &mut Vec<f64>,
) -> Result<f64> {
    check_row_sum(what, row_index, row, RowSum::One, chunks)
}

/// [`check_row_sum`] of part of a distribution (sums to at most `1 + PROB_TOL`).
pub fn check_partial_row<R: Real>(
    what: &str,
    row_index: usize,
    row: &[R],
    chunks: &mut Vec<f64>,
) -> Result<f64> {
    check_row_sum(what, row_index, row, RowSum::AtMostOne, chunks)
}

fn entry_error(what: &str, row: usize, col: usize, v: f64) -> CoreError {
    CoreError::value(format!(
        "{what}[{row}, {col}] = {v}: expected a probability in [0, 1] (finite and >= 0)"
    ))
}

/// Checks one probability entry `what[row, col] = v` (finite, `>= 0`).
#[inline]
pub fn check_entry(what: &str, row: usize, col: usize, v: f64) -> Result<()> {
    if (0.0..f64::INFINITY).contains(&v) {
        Ok(())
    } else {
        Err(entry_error(what, row, col, v))
    }
}

/// Inverse-CDF sample from a row already summed by [`scan_row`]: the smallest `j` with
/// `row[0] + ... + row[j] > target`, where `target = u * sum`. Falls back to the last positive
/// entry when rounding leaves `target` beyond the running sum.
pub fn sample_scanned<R: Real>(row: &[R], chunks: &[f64], target: f64) -> usize {
    let mut cum = 0.0;
    for (c, &s) in chunks.iter().enumerate() {
        if cum + s > target {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(row.len());
            for (j, x) in row[start..end].iter().enumerate() {
                cum += x.get();
                if cum > target {
                    return start + j;
                }
            }
        } else {
            cum += s;
        }
    }
    row.iter().rposition(|x| x.get() > 0.0).unwrap_or(0)
}

/// Inverse-CDF sample of a non-negative row with a uniform `u in [0, 1)` (the row need not be
/// normalised; it must have a positive sum).
pub fn sample_row<R: Real>(row: &[R], u: f64) -> usize {
    let mut chunks = Vec::with_capacity(row.len() / CHUNK + 1);
    let total = scan_row(row, &mut chunks).unwrap_or(0.0);
    sample_scanned(row, &chunks, u * total)
}

/// Index of the largest value; ties -> lowest index. `NaN` entries are never chosen.
pub fn argmax<R: Real>(row: &[R]) -> usize {
    let mut best = 0;
    let mut best_v = f64::NEG_INFINITY;
    for (i, x) in row.iter().enumerate() {
        let x = x.get();
        if x > best_v {
            best_v = x;
            best = i;
        }
    }
    best
}

/// The sampling transforms, validated. See the module docs for the order and definitions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transforms {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub min_p: Option<f64>,
}

impl Transforms {
    /// Checks `temperature >= 0` (finite), `top_k >= 1`, `0 < top_p <= 1`, `0 <= min_p <= 1`.
    pub fn new(
        temperature: f64,
        top_k: Option<i64>,
        top_p: Option<f64>,
        min_p: Option<f64>,
    ) -> Result<Self> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(CoreError::value(format!(
                "temperature: expected a finite value >= 0, got {temperature}"
            )));
        }
        let top_k = match top_k {
            None => None,
            Some(k) if k >= 1 => Some(k as usize),
            Some(k) => {
                return Err(CoreError::value(format!(
                    "top_k: expected an integer >= 1, got {k}"
                )))
            }
        };
        if let Some(p) = top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(CoreError::value(format!(
                    "top_p: expected 0 < top_p <= 1, got {p}"
                )));
            }
        }
        if let Some(m) = min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(CoreError::value(format!(
                    "min_p: expected 0 <= min_p <= 1, got {m}"
                )));
            }
        }
        Ok(Transforms {
            temperature,
            top_k,
            top_p,
            min_p,
        })
    }

    /// Plain softmax at temperature 1.
    pub fn identity() -> Self {
        Transforms {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            min_p: None,
        }
    }

    pub fn greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Writes the probabilities of one logit row into `out` (same length). `row_index` names
    /// the row in error messages; `scratch` is reused between rows.
    pub fn probs_into<R: Real>(
        &self,
        row_index: usize,
        logits: &[R],
        out: &mut [f64],
        scratch: &mut Vec<f64>,
    ) -> Result<()> {
        let (max, arg, finite) = check_logits(row_index, logits)?;
        if self.greedy() {
            out.iter_mut().for_each(|o| *o = 0.0);
            out[arg] = 1.0;
            return Ok(());
        }
        // Divide (see the module docs): a subnormal temperature keeps the argmax set.
        let t = self.temperature;
        for (o, l) in out.iter_mut().zip(logits) {
            let l = l.get();
            *o = if l == f64::NEG_INFINITY {
                0.0
            } else {
                ((l - max) / t).exp()
            };
        }
        if let Some(k) = self.top_k.filter(|&k| k < finite) {
            scratch.clear();
            scratch.extend(
                logits
                    .iter()
                    .map(|l| l.get())
                    .filter(|l| *l > f64::NEG_INFINITY),
            );
            let (_, kth, _) = scratch.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            for (o, l) in out.iter_mut().zip(logits) {
                if l.get() < kth {
                    *o = 0.0;
                }
            }
        }
        if let Some(p) = self.top_p.filter(|&p| p < 1.0) {
            let mass: f64 = out.iter().sum();
            scratch.clear();
            scratch.extend(out.iter().copied().filter(|&w| w > 0.0));
            scratch.sort_unstable_by(|a, b| b.total_cmp(a));
            let want = p * mass;
            let mut cum = 0.0;
            let mut tau = scratch.last().copied().unwrap_or(0.0);
            for &w in scratch.iter() {
                cum += w;
                if cum >= want {
                    tau = w;
                    break;
                }
            }
            out.iter_mut().filter(|o| **o < tau).for_each(|o| *o = 0.0);
        }
        if let Some(m) = self.min_p.filter(|&m| m > 0.0) {
            let top = out.iter().copied().fold(0.0, f64::max);
            let cut = m * top;
            out.iter_mut().filter(|o| **o < cut).for_each(|o| *o = 0.0);
        }
        let mass: f64 = out.iter().sum();
        let inv = 1.0 / mass;
        out.iter_mut().for_each(|o| *o *= inv);
        Ok(())
    }

    /// Probabilities of `rows` logit rows of width `vocab` (row-major), as one flat vector.
    pub fn probs<R: Real>(&self, logits: &[R], rows: usize, vocab: usize) -> Result<Vec<f64>> {
        check_matrix("logits", logits.len(), rows, vocab)?;
        let mut out = vec![0.0; rows * vocab];
        let mut scratch = Vec::new();
        for r in 0..rows {
            let span = r * vocab..(r + 1) * vocab;
            self.probs_into(r, &logits[span.clone()], &mut out[span], &mut scratch)?;
        }
        Ok(out)
    }

    /// One token per logit row: row `r` is sampled with the uniform
    /// `rng::uniform(seed, stream0 + r, counter)` (greedy rows take the argmax).
    pub fn sample<R: Real>(
        &self,
        logits: &[R],
        rows: usize,
        vocab: usize,
        seed: u64,
        stream0: u64,
        counter: u64,
    ) -> Result<Vec<i64>> {
        check_matrix("logits", logits.len(), rows, vocab)?;
        let mut out = Vec::with_capacity(rows);
        let mut probs = vec![0.0; vocab];
        let mut scratch = Vec::new();
        for r in 0..rows {
            let row = &logits[r * vocab..(r + 1) * vocab];
            if self.greedy() {
                let (_, arg, _) = check_logits(r, row)?;
                out.push(arg as i64);
                continue;
            }
            self.probs_into(r, row, &mut probs, &mut scratch)?;
            let u = crate::rng::uniform(seed, stream0.wrapping_add(r as u64), counter);
            out.push(sample_row(&probs, u) as i64);
        }
        Ok(out)
    }
}

fn check_matrix(what: &'static str, len: usize, rows: usize, vocab: usize) -> Result<()> {
    if vocab == 0 {
        return Err(CoreError::shape(
            what,
            "a vocabulary of at least 1 token",
            "0 columns",
        ));
    }
    if len != rows * vocab {
        return Err(CoreError::shape(
            what,
            format!("[{rows}, {vocab}]"),
            format!("{len} elements"),
        ));
    }
    Ok(())
}

/// Validates a logit row; returns (max finite logit, its lowest index, count of finite logits).
fn check_logits<R: Real>(row_index: usize, logits: &[R]) -> Result<(f64, usize, usize)> {
    let mut max = f64::NEG_INFINITY;
    let mut arg = 0;
    let mut finite = 0;
    for (i, l) in logits.iter().enumerate() {
        let l = l.get();
        if l.is_nan() || l == f64::INFINITY {
            return Err(CoreError::value(format!(
                "logits[{row_index}, {i}] = {l}: NaN and +inf logits are not allowed (use -inf to mask a token)"
            )));
        }
        if l > f64::NEG_INFINITY {
            finite += 1;
            if l > max {
                max = l;
                arg = i;
            }
        }
    }
    if finite == 0 {
        return Err(CoreError::value(format!(
            "logits[{row_index}]: every logit is -inf (nothing to sample)"
        )));
    }
    Ok((max, arg, finite))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(t: &Transforms, logits: &[f64]) -> Vec<f64> {
        t.probs(logits, 1, logits.len()).unwrap()
    }

    #[test]
    fn softmax_and_temperature() {
        let p = probs(
            &Transforms::identity(),
            &[0.0, (2.0f64).ln(), f64::NEG_INFINITY],
        );
        assert!(
            (p[0] - 1.0 / 3.0).abs() < 1e-12 && (p[1] - 2.0 / 3.0).abs() < 1e-12 && p[2] == 0.0
        );
        let t = Transforms::new(0.5, None, None, None).unwrap();
        let p = probs(&t, &[0.0, (2.0f64).ln()]);
        assert!((p[1] - 0.8).abs() < 1e-12);
        let g = Transforms::new(0.0, None, None, None).unwrap();
        assert_eq!(probs(&g, &[1.0, 3.0, 3.0]), vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn subnormal_temperature_is_the_limit_distribution() {
        // 1 / T overflows for T < ~5.6e-309; dividing keeps the T -> 0+ limit: uniform over the
        // tied maxima, exactly, and never NaN.
        for t in [5e-324, 1e-310, 1e-300] {
            let tr = Transforms::new(t, None, None, None).unwrap();
            assert_eq!(probs(&tr, &[0.0, 1.0, 2.0]), vec![0.0, 0.0, 1.0]);
            assert_eq!(probs(&tr, &[2.0, 1.0, 2.0]), vec![0.5, 0.0, 0.5]);
            let ids = tr
                .sample(&[0.0, 1.0, 2.0, 2.0, 0.0, 1.0], 2, 3, 7, 0, 0)
                .unwrap();
            assert_eq!(ids, vec![2, 0]);
        }
    }

    #[test]
    fn one_row_check_two_sums() {
        let mut c = Vec::new();
        // A top-k restriction may sum to less than 1, never to more than 1 + PROB_TOL.
        assert!(check_partial_row("q", 0, &[0.3f64, 0.2], &mut c).is_ok());
        assert!(check_row("q", 0, &[0.3f64, 0.2], &mut c).is_err());
        let over = [0.5f64, 0.5 + 2.0 * PROB_TOL];
        assert!(check_partial_row("q", 0, &over, &mut c).is_err());
        assert!(check_row("q", 0, &over, &mut c).is_err());
        let e = check_partial_row("q", 3, &[0.5f64, f64::NAN], &mut c).unwrap_err();
        assert!(e.to_string().starts_with("q[3, 1] = NaN"), "{e}");
    }

    #[test]
    fn top_k_p_min_p() {
        let l: Vec<f64> = [0.1f64, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
        let k2 = Transforms::new(1.0, Some(2), None, None).unwrap();
        let p = probs(&k2, &l);
        assert!((p[3] - 4.0 / 7.0).abs() < 1e-12 && p[0] == 0.0 && p[1] == 0.0);
        // top-p 0.65: 0.4 + 0.3 = 0.7 >= 0.65 -> keep {2, 3}.
        let tp = Transforms::new(1.0, None, Some(0.65), None).unwrap();
        let p = probs(&tp, &l);
        assert!((p[2] - 3.0 / 7.0).abs() < 1e-12 && p[1] == 0.0);
        // min-p 0.5: keep p >= 0.2.
        let mp = Transforms::new(1.0, None, None, Some(0.5)).unwrap();
        let p = probs(&mp, &l);
        assert!(p[0] == 0.0 && (p[1] - 0.2 / 0.9).abs() < 1e-12);
        // ties at the top-k boundary are kept.
        let p = probs(&k2, &[0.0, 1.0, 1.0, 1.0]);
        assert!(p[0] == 0.0 && (p[1] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn bad_logits_and_params() {
        let t = Transforms::identity();
        assert!(t.probs(&[0.0, f64::NAN], 1, 2).is_err());
        assert!(t.probs(&[0.0, f64::INFINITY], 1, 2).is_err());
        assert!(t.probs(&[f64::NEG_INFINITY; 2], 1, 2).is_err());
        assert!(t.probs(&[0.0; 3], 1, 2).is_err());
        assert!(Transforms::new(-1.0, None, None, None).is_err());
        assert!(Transforms::new(f64::NAN, None, None, None).is_err());
        assert!(Transforms::new(1.0, Some(0), None, None).is_err());
        assert!(Transforms::new(1.0, None, Some(0.0), None).is_err());
        assert!(Transforms::new(1.0, None, None, Some(1.5)).is_err());
    }

    #[test]
    fn rows_are_checked() {
        let mut c = Vec::new();
        assert!(check_row("p", 0, &[0.5f32, 0.5], &mut c).is_ok());
        assert!(check_row("p", 0, &[0.5f32, 0.4], &mut c).is_err());
        assert!(check_row("p", 0, &[1.5f32, -0.5], &mut c).is_err());
        assert!(check_row("p", 0, &[f32::NAN, 1.0], &mut c).is_err());
        assert!(check_row("p", 0, &[f32::INFINITY, 1.0], &mut c).is_err());
    }

    #[test]
    fn inverse_cdf_counts() {
        // A long row so that chunk skipping is exercised; exact bucket frequencies.
        let v = 300;
        let mut row = vec![0.0f64; v];
        row[5] = 0.25;
        row[130] = 0.5;
        row[299] = 0.25;
        let mut c = Vec::new();
        let s = scan_row(&row, &mut c).unwrap();
        let n = 4000;
        let mut hits = [0usize; 3];
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            match sample_scanned(&row, &c, u * s) {
                5 => hits[0] += 1,
                130 => hits[1] += 1,
                299 => hits[2] += 1,
                j => panic!("sampled a zero-probability index {j}"),
            }
        }
        assert_eq!(hits, [1000, 2000, 1000]);
        // Rounding past the end falls back to the last positive entry.
        assert_eq!(sample_scanned(&row, &c, 2.0), 299);
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn sampled_ids_have_positive_probability(
            w in prop::collection::vec(0.0f64..1.0, 1..200), u in 0.0f64..1.0,
            k in 1i64..10, p in 0.05f64..1.0, m in 0.0f64..1.0, t in 0.1f64..3.0,
        ) {
            let logits: Vec<f64> = w.iter().map(|x| x.ln()).collect();
            prop_assume!(logits.iter().any(|l| *l > f64::NEG_INFINITY));
            let tr = Transforms::new(t, Some(k), Some(p), Some(m)).unwrap();
            let probs = tr.probs(&logits, 1, logits.len()).unwrap();
            let s: f64 = probs.iter().sum();
            prop_assert!((s - 1.0).abs() < 1e-9);
            let j = sample_row(&probs, u);
            prop_assert!(j < probs.len() && probs[j] > 0.0);
            let ids = tr.sample(&logits, 1, logits.len(), 3, 0, 0).unwrap();
            prop_assert!(probs[ids[0] as usize] > 0.0);
        }
    }
}
