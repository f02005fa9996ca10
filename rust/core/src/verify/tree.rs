//! Lossless (exact) verification of draft trees by rejection sampling.
//!
//! **Deterministic drafts** (`draft = None`; Token Recycling, n-gram, retrieval trees): at each
//! visited node `i` draw one `y ~ target[i]`; if a child of `i` carries `y`, descend into it
//! (duplicate siblings: the lowest index), else emit `y` and stop. Every emitted token is a
//! draw from the target given the accepted prefix, so the output has exactly the target's
//! distribution, for any tree.
//!
//! **Sampled drafts** (`draft = Some(q)`; the children of node `i` were drawn from `q[i]`):
//! SpecInfer's multi-draft rule. `r := p`; for each child `x` in index order accept with
//! probability `min(1, r(x) / q(x))` and descend; on rejection `r := norm(max(0, r - q))`.
//! If every child is rejected, emit `y ~ r`. With `replacement = false` (children drawn
//! without replacement, e.g. by Gumbel-top-k) a rejection also sets `q(x) := 0` and
//! renormalises `q` (Sequoia). A leaf never reads its draft row.

use super::{batch_rows, reject_update, sample_dist, Dist, Rows, VerifyResult};
use crate::error::{check_index, CoreError, Result};
use crate::rng::{counter, Stream};
use crate::sampling::{check_entry, check_row, sample_scanned, Real};
use crate::tree::validate_parents;

/// Reusable buffers of a walk (one per thread).
#[derive(Default)]
pub struct Scratch {
    p_chunks: Vec<f64>,
    q_chunks: Vec<f64>,
    chunks: Vec<f64>,
    kids: Vec<usize>,
    r: Vec<f64>,
    q: Vec<f64>,
    tmp: Vec<f64>,
}

/// Verifies one tree. Shapes: `parents`, `tokens` [T]; `target` and `draft` [T, V].
///
/// Errors: shape mismatches, an empty or badly ordered tree, and a visited probability row
/// that is negative, non-finite or does not sum to 1 -> `Value`/`Shape`; a draft token
/// outside `[0, V)` -> `Index`.
pub fn verify_tree<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    target: Rows<R>,
    draft: Option<Rows<R>>,
    rng: Stream,
    replacement: bool,
) -> Result<VerifyResult> {
    verify_tree_with(
        parents,
        tokens,
        target,
        draft,
        rng,
        replacement,
        &mut Scratch::default(),
    )
}

/// [`verify_tree`] with caller-owned buffers.
pub fn verify_tree_with<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    target: Rows<R>,
    draft: Option<Rows<R>>,
    rng: Stream,
    replacement: bool,
    s: &mut Scratch,
) -> Result<VerifyResult> {
    check_tree(parents, tokens, &target, draft.as_ref())?;
    match draft {
        None => walk_deterministic(parents, tokens, &target, rng, s),
        Some(q) => walk_sampled(parents, tokens, &target, &q, rng, replacement, s),
    }
}

fn check_tree<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    target: &Rows<R>,
    draft: Option<&Rows<R>>,
) -> Result<()> {
    let t = parents.len();
    if tokens.len() != t {
        return Err(CoreError::shape(
            "tokens",
            format!("length {t} (= len(parents))"),
            tokens.len(),
        ));
    }
    validate_parents(parents)?;
    if target.rows != t {
        return Err(CoreError::shape(
            "target_probs",
            format!("{t} rows (one per node)"),
            target.rows,
        ));
    }
    if let Some(q) = draft {
        if q.rows != t || q.vocab != target.vocab {
            return Err(CoreError::shape(
                "draft_probs",
                format!("[{t}, {}] (the shape of target_probs)", target.vocab),
                format!("[{}, {}]", q.rows, q.vocab),
            ));
        }
    }
    for &x in &tokens[1..] {
        check_index("tokens", x, target.vocab)?;
    }
    Ok(())
}

/// The child of `cur` carrying `y` with the lowest index, if any.
#[inline]
fn child_with(parents: &[i64], tokens: &[i64], cur: usize, y: i64) -> Option<usize> {
    (cur + 1..parents.len()).find(|&i| parents[i] == cur as i64 && tokens[i] == y)
}

fn walk_deterministic<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    target: &Rows<R>,
    rng: Stream,
    s: &mut Scratch,
) -> Result<VerifyResult> {
    let mut out = VerifyResult {
        path: vec![0],
        tokens: Vec::new(),
    };
    let mut cur = 0usize;
    loop {
        let row = target.row(cur);
        let mass = check_row("target_probs", cur, row, &mut s.p_chunks)?;
        let y = sample_scanned(row, &s.p_chunks, rng.uniform(counter(cur, 0)) * mass) as i64;
        out.tokens.push(y);
        match child_with(parents, tokens, cur, y) {
            Some(c) => {
                out.path.push(c as i64);
                cur = c;
            }
            None => return Ok(out),
        }
    }
}

fn walk_sampled<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    target: &Rows<R>,
    draft: &Rows<R>,
    rng: Stream,
    replacement: bool,
    s: &mut Scratch,
) -> Result<VerifyResult> {
    let mut out = VerifyResult {
        path: vec![0],
        tokens: Vec::new(),
    };
    let mut cur = 0usize;
    'walk: loop {
        let p = target.row(cur);
        s.kids.clear();
        s.kids
            .extend((cur + 1..parents.len()).filter(|&i| parents[i] == cur as i64));
        // Rows are used as given (they sum to 1 within PROB_TOL); an acceptance test reads two
        // entries, and a row is checked in full when the walk first needs all of it.
        let mut r: Dist<R> = Dist::Row { row: p, inv: 1.0 };
        let mut mass_p = None;
        if !s.kids.is_empty() {
            let qrow = draft.row(cur);
            let mut q: Dist<R> = Dist::Row {
                row: qrow,
                inv: 1.0,
            };
            for k in 0..s.kids.len() {
                let c = s.kids[k];
                let x = tokens[c] as usize;
                let (rx, qx) = (r.at(&s.r, x), q.at(&s.q, x));
                if mass_p.is_none() {
                    check_entry("target_probs", cur, x, rx)?;
                    check_entry("draft_probs", cur, x, qx)?;
                }
                if rng.uniform(counter(cur, k as u32 + 1)) * qx < rx {
                    out.path.push(c as i64);
                    out.tokens.push(x as i64);
                    cur = c;
                    continue 'walk;
                }
                if mass_p.is_none() {
                    mass_p = Some(check_row("target_probs", cur, p, &mut s.p_chunks)?);
                    check_row("draft_probs", cur, qrow, &mut s.q_chunks)?;
                }
                reject_update(&mut r, &mut s.r, &q, &s.q, &mut s.tmp);
                if !replacement {
                    drop_token(&mut q, &mut s.q, x, qx);
                }
            }
        }
        let mp = match mass_p {
            Some(m) => m,
            None => check_row("target_probs", cur, p, &mut s.p_chunks)?,
        };
        let u = rng.uniform(counter(cur, 0));
        out.tokens
            .push(sample_dist(&r, &s.r, &s.p_chunks, mp, u, &mut s.chunks));
        return Ok(out);
    }
}

/// Sequoia's update after rejecting `x`: `q(x) := 0`, then renormalise (unless nothing is left).
fn drop_token<R: Real>(q: &mut Dist<R>, own: &mut Vec<f64>, x: usize, qx: f64) {
    if let Dist::Row { row, inv } = *q {
        own.clear();
        own.extend(row.iter().map(|v| v.get() * inv));
        *q = Dist::Own;
    }
    own[x] = 0.0;
    let rest = 1.0 - qx;
    if rest > super::RESIDUAL_FLOOR {
        let inv = 1.0 / rest;
        own.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Verifies B padded trees. `parents`, `tokens`: row-major [B, T_max]; `target[b]` (and
/// `draft[b]`): the [T_max, V] probabilities of tree b; tree b uses its first `lengths[b]`
/// nodes and stream `b` of `seed`.
#[allow(clippy::too_many_arguments)]
pub fn verify_tree_batch<R: Real>(
    parents: &[i64],
    tokens: &[i64],
    t_max: usize,
    target: &[&[R]],
    draft: Option<&[&[R]]>,
    vocab: usize,
    lengths: &[i64],
    seed: u64,
    replacement: bool,
) -> Result<Vec<VerifyResult>> {
    let b = lengths.len();
    for (what, arr) in [("parents", parents), ("tokens", tokens)] {
        if arr.len() != b * t_max {
            return Err(CoreError::shape(
                what,
                format!("[{b}, {t_max}]"),
                format!("{} elements", arr.len()),
            ));
        }
    }
    if target.len() != b {
        return Err(CoreError::shape(
            "target_probs",
            format!("{b} trees (= len(lengths))"),
            target.len(),
        ));
    }
    if let Some(d) = draft {
        if d.len() != b {
            return Err(CoreError::shape(
                "draft_probs",
                format!("{b} trees (= len(lengths))"),
                d.len(),
            ));
        }
    }
    let mut s = Scratch::default();
    let mut results = Vec::with_capacity(b);
    for (row, &len) in lengths.iter().enumerate() {
        let n = check_index("lengths", len, t_max + 1)?;
        let span = row * t_max..row * t_max + n;
        let tp = batch_rows("target_probs", target, row, t_max, vocab)?;
        let tp = Rows {
            data: &tp.data[..n * vocab],
            rows: n,
            vocab,
        };
        let dp = match draft {
            Some(d) => {
                let d = batch_rows("draft_probs", d, row, t_max, vocab)?;
                Some(Rows {
                    data: &d.data[..n * vocab],
                    rows: n,
                    vocab,
                })
            }
            None => None,
        };
        let rng = Stream::new(seed, row as u64);
        results.push(verify_tree_with(
            &parents[span.clone()],
            &tokens[span],
            tp,
            dp,
            rng,
            replacement,
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
    fn deterministic_follows_sure_tokens() {
        // root -> 1 (tok 2) -> 2 (tok 0); the target is one-hot along the path.
        let parents = [-1, 0, 1];
        let tokens = [0, 2, 0];
        let p = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
        for seed in 0..20 {
            let r = verify_tree(
                &parents,
                &tokens,
                rows(&p, 3),
                None,
                Stream::new(seed, 0),
                true,
            )
            .unwrap();
            assert_eq!(r.path, vec![0, 1, 2]);
            assert_eq!(r.tokens, vec![2, 0, 1]);
        }
    }

    #[test]
    fn sampled_accepts_when_p_equals_q() {
        let parents = [-1, 0, 0];
        let tokens = [0, 1, 1];
        let p = [0.2, 0.5, 0.3, 0.2, 0.5, 0.3, 0.2, 0.5, 0.3];
        for seed in 0..50 {
            let r = verify_tree(
                &parents,
                &tokens,
                rows(&p, 3),
                Some(rows(&p, 3)),
                Stream::new(seed, 0),
                true,
            )
            .unwrap();
            assert_eq!(r.path, vec![0, 1]);
            assert_eq!(r.tokens[0], 1);
        }
    }

    #[test]
    fn rejected_token_is_never_emitted_when_p_is_zero() {
        let parents = [-1, 0, 0];
        let tokens = [0, 0, 0];
        let p = [0.0, 0.5, 0.5, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        let q = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        for replacement in [true, false] {
            for seed in 0..50 {
                let r = verify_tree(
                    &parents,
                    &tokens,
                    rows(&p, 3),
                    Some(rows(&q, 3)),
                    Stream::new(seed, 0),
                    replacement,
                )
                .unwrap();
                assert_eq!(r.path, vec![0]);
                assert!(r.tokens[0] == 1 || r.tokens[0] == 2);
            }
        }
    }

    #[test]
    fn bad_input() {
        let p = [0.5, 0.5, 0.5, 0.5];
        let s = Stream::new(0, 0);
        assert!(matches!(
            verify_tree(&[-1, 0], &[0, 2], rows(&p, 2), None, s, true),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            verify_tree(&[-1, 0], &[0], rows(&p, 2), None, s, true),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            verify_tree(&[-1], &[0], rows(&p, 2), None, s, true),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            verify_tree(&[-1, 1], &[0, 1], rows(&p, 2), None, s, true),
            Err(CoreError::Value(_))
        ));
        let bad = [0.7, 0.7, 0.5, 0.5];
        assert!(matches!(
            verify_tree(&[-1, 0], &[0, 1], rows(&bad, 2), None, s, true),
            Err(CoreError::Value(_))
        ));
        let neg = [1.5, -0.5, 0.5, 0.5];
        let e =
            verify_tree(&[-1, 0], &[0, 1], rows(&p, 2), Some(rows(&neg, 2)), s, true).unwrap_err();
        assert!(e.to_string().contains("draft_probs[0, 1]"), "{e}");
    }

    #[test]
    fn batch_row_b_uses_stream_b() {
        let parents = [-1, 0, 0, -1, 0, 0];
        let tokens = [0, 1, 2, 0, 2, 1];
        let p: Vec<f64> = [0.3, 0.3, 0.4].repeat(3);
        let flat = [p.as_slice(), p.as_slice()];
        for seed in 0..20 {
            let rs = verify_tree_batch(
                &parents,
                &tokens,
                3,
                &flat,
                Some(&flat),
                3,
                &[3, 2],
                seed,
                true,
            )
            .unwrap();
            for (b, r) in rs.iter().enumerate() {
                let n = [3, 2][b];
                let one = verify_tree(
                    &parents[b * 3..b * 3 + n],
                    &tokens[b * 3..b * 3 + n],
                    rows(&p[..n * 3], 3),
                    Some(rows(&p[..n * 3], 3)),
                    Stream::new(seed, b as u64),
                    true,
                )
                .unwrap();
                assert_eq!(r, &one);
            }
        }
    }

    use crate::rng::uniform;
    use proptest::prelude::*;

    /// First-token law over many seeds: deterministic drafts on a fixed tree with duplicate
    /// siblings, and sampled drafts whose children are drawn from q (with and without
    /// replacement); the frequency of every emitted first token must match p[0].
    #[test]
    fn first_token_frequencies() {
        let parents = [-1, 0, 0, 0, 1];
        let p = [0.1, 0.2, 0.3, 0.4].repeat(5);
        let q = [0.4, 0.3, 0.2, 0.1].repeat(5);
        for mode in 0..3 {
            let mut counts = [0f64; 4];
            let n = 40_000u64;
            for seed in 0..n {
                let mut tokens = vec![0i64, 1, 1, 2, 0];
                if mode > 0 {
                    // Draw the three root children from q (mode 2: without replacement).
                    let mut w = q[..4].to_vec();
                    for c in 1..4 {
                        let x = crate::sampling::sample_row(&w, uniform(!seed, 9, c as u64));
                        tokens[c] = x as i64;
                        if mode == 2 {
                            w[x] = 0.0;
                        }
                    }
                }
                let draft = if mode > 0 { Some(rows(&q, 4)) } else { None };
                let r = verify_tree(
                    &parents,
                    &tokens,
                    rows(&p, 4),
                    draft,
                    Stream::new(seed, 0),
                    mode != 2,
                )
                .unwrap();
                counts[r.tokens[0] as usize] += 1.0;
            }
            let chi2: f64 = (0..4)
                .map(|i| (counts[i] - n as f64 * p[i]).powi(2) / (n as f64 * p[i]))
                .sum();
            assert!(chi2 < 16.3, "mode {mode} chi2 {chi2} counts {counts:?}"); // 3 dof, P = 0.001
        }
    }

    proptest! {
        #[test]
        fn emitted_tokens_are_in_range_and_path_is_a_chain(
            picks in prop::collection::vec((any::<prop::sample::Index>(), 0usize..4), 0..20),
            seed in any::<u64>(), sampled in any::<bool>(), replacement in any::<bool>(),
        ) {
            let mut parents = vec![-1i64];
            let mut tokens = vec![0i64];
            for (i, (pick, tok)) in picks.iter().enumerate() {
                parents.push(pick.index(i + 1) as i64);
                tokens.push(*tok as i64);
            }
            let t = parents.len();
            let p = [0.1, 0.2, 0.3, 0.4].repeat(t);
            let q = [0.4, 0.3, 0.2, 0.1].repeat(t);
            let draft = if sampled { Some(rows(&q, 4)) } else { None };
            let r = verify_tree(&parents, &tokens, rows(&p, 4), draft, Stream::new(seed, 0), replacement).unwrap();
            prop_assert_eq!(r.tokens.len(), r.path.len());
            for w in r.path.windows(2) {
                prop_assert_eq!(parents[w[1] as usize], w[0]);
            }
            for (k, &node) in r.path.iter().enumerate().skip(1) {
                prop_assert_eq!(tokens[node as usize], r.tokens[k - 1]);
            }
            prop_assert!(r.tokens.iter().all(|&x| (0..4).contains(&x)));
        }
    }
}
