//! The DC-PDD score (arXiv 2409.14781, "divergence-based calibration"): for a text with
//! tokens `x_1..x_n` and model probabilities `p_i = p(x_i | x_<i)`, and a token-frequency
//! distribution `f` of a reference corpus,
//!
//! ```text
//! alpha_i = min(p_i * log(1 / f(x_i)), a)      (cross-entropy term, clipped at a)
//! score   = mean of alpha_i over FOS             (FOS: first occurrence of each distinct token)
//! ```
//!
//! Higher means "more likely a member of the training data". The paper's reference uses a = 0.01.

use std::collections::HashSet;

use crate::error::{check_index, CoreError, Result};

/// Indices `i` where `ids[i]` occurs for the first time in `ids` (increasing).
pub fn first_occurrences(ids: &[i64]) -> Vec<usize> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.iter().enumerate().filter(|(_, t)| seen.insert(**t)).map(|(i, _)| i).collect()
}

/// The DC-PDD score of one text.
///
/// `ids[i]` is the scored token `x_i`, `probs[i]` its model probability, `freq` the smoothed
/// frequency distribution (every entry in (0, 1]), `a > 0` the clip. Errors: length mismatch,
/// no token, an id outside `freq`, a probability outside [0, 1] or NaN, a frequency outside
/// (0, 1], a clip that is not a positive finite number.
pub fn dcpdd_score(ids: &[i64], probs: &[f64], freq: &[f64], a: f64) -> Result<f64> {
    if ids.len() != probs.len() {
        return Err(CoreError::shape("probs", format!("length {} (= len(ids))", ids.len()), probs.len()));
    }
    if ids.is_empty() {
        return Err(CoreError::value("ids: expected at least one scored token, got 0"));
    }
    if !(a.is_finite() && a > 0.0) {
        return Err(CoreError::value(format!("a: expected a positive finite clip, got {a}")));
    }
    for (&t, &p) in ids.iter().zip(probs) {
        let v = check_index("ids", t, freq.len())?;
        if !(0.0..=1.0).contains(&p) {
            return Err(CoreError::value(format!("probs: expected probabilities in [0, 1], got {p}")));
        }
        let f = freq[v];
        if !(f > 0.0 && f <= 1.0) {
            return Err(CoreError::value(format!("freq: expected frequencies in (0, 1], got {f} for id {t}")));
        }
    }
    let fos = first_occurrences(ids);
    let sum: f64 = fos
        .iter()
        .map(|&i| (probs[i] * -freq[ids[i] as usize].ln()).min(a))
        .sum();
    Ok(sum / fos.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_and_clip() {
        assert_eq!(first_occurrences(&[5, 3, 5, 1, 3]), vec![0, 1, 3]);
        let freq = [0.5, 0.25, 0.25];
        // token 0 twice: only its first probability (0.1) counts.
        let s = dcpdd_score(&[0, 1, 0], &[0.1, 0.2, 0.9], &freq, 10.0).unwrap();
        let want = (0.1 * 2f64.ln() + 0.2 * 4f64.ln()) / 2.0;
        assert!((s - want).abs() < 1e-15);
        let clipped = dcpdd_score(&[0, 1, 0], &[0.1, 0.2, 0.9], &freq, 0.1).unwrap();
        assert!((clipped - (0.1 * 2f64.ln()).min(0.1) / 2.0 - 0.05).abs() < 1e-15);
    }

    #[test]
    fn bad_input() {
        let freq = [0.5, 0.5];
        assert!(dcpdd_score(&[0], &[0.5, 0.5], &freq, 0.01).is_err());
        assert!(dcpdd_score(&[], &[], &freq, 0.01).is_err());
        assert!(matches!(dcpdd_score(&[2], &[0.5], &freq, 0.01), Err(CoreError::Index { .. })));
        assert!(dcpdd_score(&[0], &[1.5], &freq, 0.01).is_err());
        assert!(dcpdd_score(&[0], &[f64::NAN], &freq, 0.01).is_err());
        assert!(dcpdd_score(&[0], &[0.5], &[0.0, 1.0], 0.01).is_err());
        assert!(dcpdd_score(&[0], &[0.5], &freq, 0.0).is_err());
        assert!(dcpdd_score(&[0], &[0.5], &freq, f64::INFINITY).is_err());
    }
}
