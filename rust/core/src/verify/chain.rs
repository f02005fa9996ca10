//! Chain speculative sampling (Leviathan et al. 2023, Chen et al. 2023) with the bonus token,
//! with the semantics of FlashInfer's `chain_speculative_sampling`.
//!
//! Draft token `x_i` (i = 0..n) was drawn from `q_i = draft[i]`; `p_i = target[i]` is the
//! target's distribution at the same position. Step i accepts `x_i` with probability
//! `min(1, p_i(x_i) / q_i(x_i))`; at the first rejection it emits
//! `y ~ norm(max(0, p_i - q_i))` and stops; if all n are accepted it emits the bonus
//! `y ~ p_n = target[n]`. In tree terms the chain is nodes 0..=n, node i+1 carrying `x_i`, so
//! `path = [0, 1, .., k]`. Step i draws its acceptance uniform with counter `i << 32 | 1` and
//! its residual/bonus uniform with counter `i << 32`.

use super::{batch_rows, reject_update, sample_dist, Dist, Rows, VerifyResult};
use crate::error::{check_index, CoreError, Result};
use crate::rng::{counter, Stream};
use crate::sampling::{check_entry, check_row, sample_scanned, Real};

/// Reusable buffers of a chain walk.
#[derive(Default)]
pub struct Scratch {
    p_chunks: Vec<f64>,
    q_chunks: Vec<f64>,
    chunks: Vec<f64>,
    r: Vec<f64>,
    tmp: Vec<f64>,
}

/// Verifies one chain. Shapes: `draft_tokens` [n], `draft` [n, V], `target` [n + 1, V].
pub fn verify_chain<R: Real>(
    draft_tokens: &[i64],
    draft: Rows<R>,
    target: Rows<R>,
    rng: Stream,
) -> Result<VerifyResult> {
    verify_chain_with(draft_tokens, draft, target, rng, &mut Scratch::default())
}

/// [`verify_chain`] with caller-owned buffers.
pub fn verify_chain_with<R: Real>(
    draft_tokens: &[i64],
    draft: Rows<R>,
    target: Rows<R>,
    rng: Stream,
    s: &mut Scratch,
) -> Result<VerifyResult> {
    let n = draft_tokens.len();
    if draft.rows != n || draft.vocab != target.vocab {
        return Err(CoreError::shape(
            "draft_probs",
            format!("[{n}, {}] (one row per draft token)", target.vocab),
            format!("[{}, {}]", draft.rows, draft.vocab),
        ));
    }
    if target.rows != n + 1 {
        return Err(CoreError::shape(
            "target_probs",
            format!("{} rows (n + 1, bonus row included)", n + 1),
            target.rows,
        ));
    }
    for &x in draft_tokens {
        check_index("draft_tokens", x, target.vocab)?;
    }
    let mut out = VerifyResult {
        path: vec![0],
        tokens: Vec::with_capacity(n + 1),
    };
    for (i, &x) in draft_tokens.iter().enumerate() {
        // Rows are used as given (they sum to 1 within PROB_TOL): an accepted step reads two
        // entries; a rejected step reads, and checks, both rows in full.
        let (p, qrow) = (target.row(i), draft.row(i));
        let xi = x as usize;
        let (px, qx) = (p[xi].get(), qrow[xi].get());
        check_entry("target_probs", i, xi, px)?;
        check_entry("draft_probs", i, xi, qx)?;
        if rng.uniform(counter(i, 1)) * qx < px {
            out.path.push(i as i64 + 1);
            out.tokens.push(x);
            continue;
        }
        let mp = check_row("target_probs", i, p, &mut s.p_chunks)?;
        check_row("draft_probs", i, qrow, &mut s.q_chunks)?;
        let mut r: Dist<R> = Dist::Row { row: p, inv: 1.0 };
        let q: Dist<R> = Dist::Row {
            row: qrow,
            inv: 1.0,
        };
        reject_update(&mut r, &mut s.r, &q, &[], &mut s.tmp);
        out.tokens.push(sample_dist(
            &r,
            &s.r,
            &s.p_chunks,
            mp,
            rng.uniform(counter(i, 0)),
            &mut s.chunks,
        ));
        return Ok(out);
    }
    let p = target.row(n);
    let mp = check_row("target_probs", n, p, &mut s.p_chunks)?;
    out.tokens
        .push(sample_scanned(p, &s.p_chunks, rng.uniform(counter(n, 0)) * mp) as i64);
    Ok(out)
}

/// Verifies B padded chains: `draft_tokens` row-major [B, n_max]; `draft[b]` the [n_max, V]
/// and `target[b]` the [n_max + 1, V] probabilities of chain b, which uses its first
/// `lengths[b]` drafts (and `lengths[b] + 1` target rows) and stream `b` of `seed`.
pub fn verify_chain_batch<R: Real>(
    draft_tokens: &[i64],
    n_max: usize,
    draft: &[&[R]],
    target: &[&[R]],
    vocab: usize,
    lengths: &[i64],
    seed: u64,
) -> Result<Vec<VerifyResult>> {
    let b = lengths.len();
    if draft_tokens.len() != b * n_max {
        return Err(CoreError::shape(
            "draft_tokens",
            format!("[{b}, {n_max}]"),
            format!("{} elements", draft_tokens.len()),
        ));
    }
    for (what, arr) in [("draft_probs", draft), ("target_probs", target)] {
        if arr.len() != b {
            return Err(CoreError::shape(
                what,
                format!("{b} chains (= len(lengths))"),
                arr.len(),
            ));
        }
    }
    let mut s = Scratch::default();
    let mut results = Vec::with_capacity(b);
    for (row, &len) in lengths.iter().enumerate() {
        let n = check_index("lengths", len, n_max + 1)?;
        let d = batch_rows("draft_probs", draft, row, n_max, vocab)?;
        let t = batch_rows("target_probs", target, row, n_max + 1, vocab)?;
        let d = Rows {
            data: &d.data[..n * vocab],
            rows: n,
            vocab,
        };
        let t = Rows {
            data: &t.data[..(n + 1) * vocab],
            rows: n + 1,
            vocab,
        };
        let toks = &draft_tokens[row * n_max..row * n_max + n];
        results.push(verify_chain_with(
            toks,
            d,
            t,
            Stream::new(seed, row as u64),
            &mut s,
        )?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(data: &[f64], v: usize) -> Rows<'_, f64> {
        Rows::new("p", data, data.len() / v, v).unwrap()
    }

    #[test]
    fn all_accepted_when_p_equals_q_then_bonus() {
        let q = [0.5, 0.5, 0.5, 0.5];
        let p = [0.5, 0.5, 0.5, 0.5, 0.0, 1.0];
        for seed in 0..30 {
            let r = verify_chain(&[0, 1], rows(&q, 2), rows(&p, 2), Stream::new(seed, 0)).unwrap();
            assert_eq!(r.path, vec![0, 1, 2]);
            assert_eq!(r.tokens[2], 1);
        }
    }

    #[test]
    fn rejection_emits_from_residual() {
        // p puts no mass on the draft token 0 -> always rejected; residual = p.
        let q = [1.0, 0.0, 0.0];
        let p = [0.0, 0.5, 0.5, 1.0, 0.0, 0.0];
        for seed in 0..30 {
            let r = verify_chain(&[0], rows(&q, 3), rows(&p, 3), Stream::new(seed, 0)).unwrap();
            assert_eq!(r.path, vec![0]);
            assert!(r.tokens == vec![1] || r.tokens == vec![2]);
        }
    }

    #[test]
    fn first_token_law() {
        let p = [0.1, 0.6, 0.3, 0.2, 0.3, 0.5];
        let q = [0.5, 0.3, 0.2];
        let n = 40_000u64;
        let mut counts = [0f64; 3];
        for seed in 0..n {
            let u = (seed as f64 + 0.5) / n as f64; // stratified draft token
            let x = crate::sampling::sample_row(&q, u) as i64;
            let r = verify_chain(&[x], rows(&q, 3), rows(&p, 3), Stream::new(seed, 0)).unwrap();
            counts[r.tokens[0] as usize] += 1.0;
        }
        let chi2: f64 = (0..3)
            .map(|i| (counts[i] - n as f64 * p[i]).powi(2) / (n as f64 * p[i]))
            .sum();
        assert!(chi2 < 13.8, "chi2 {chi2} {counts:?}"); // 2 dof, P = 0.001
    }

    #[test]
    fn bad_input() {
        let q = [0.5, 0.5];
        let p = [0.5, 0.5, 0.5, 0.5];
        let s = Stream::new(0, 0);
        assert!(matches!(
            verify_chain(&[2], rows(&q, 2), rows(&p, 2), s),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            verify_chain(&[0, 1], rows(&q, 2), rows(&p, 2), s),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            verify_chain(&[0], rows(&q, 2), rows(&q, 2), s),
            Err(CoreError::Shape { .. })
        ));
        let bad = [0.5, 0.5, 0.2, 0.2];
        assert!(matches!(
            verify_chain(&[0], rows(&q, 2), rows(&bad, 2), s),
            Err(CoreError::Value(_))
        ));
        // Empty chain: just the bonus token.
        let r = verify_chain(&[], rows(&[], 2), rows(&[0.0, 1.0], 2), s).unwrap();
        assert_eq!((r.path, r.tokens), (vec![0], vec![1]));
    }
}
