//! Greedy (temperature 0) tree verification: follow the target argmax.

use super::VerifyResult;
use crate::error::{check_index, CoreError, Result};
use crate::tree::validate_parents;

/// Greedy (temperature 0) tree verification.
///
/// From the root, repeatedly move to the child whose token equals the target argmax at the
/// current node; stop when no child matches and emit the argmax there as the bonus token.
/// Among duplicate siblings carrying the same token the lowest node index wins.
///
/// Shapes: `parents`, `tokens`, `target_argmax` all of length T (the root included).
pub fn verify_greedy(
    parents: &[i64],
    tokens: &[i64],
    target_argmax: &[i64],
) -> Result<VerifyResult> {
    let t = parents.len();
    if tokens.len() != t {
        return Err(CoreError::shape(
            "tokens",
            format!("length {t} (= len(parents))"),
            tokens.len(),
        ));
    }
    if target_argmax.len() != t {
        return Err(CoreError::shape(
            "target_argmax",
            format!("length {t} (= len(parents))"),
            target_argmax.len(),
        ));
    }
    validate_parents(parents)?;
    for &a in target_argmax {
        if a < 0 {
            return Err(CoreError::Index {
                what: "target_argmax",
                index: a,
                bound: usize::MAX,
            });
        }
    }
    Ok(walk_greedy(parents, tokens, target_argmax))
}

/// The greedy walk itself, on validated input.
pub(crate) fn walk_greedy(parents: &[i64], tokens: &[i64], target_argmax: &[i64]) -> VerifyResult {
    let t = parents.len();
    let mut out = VerifyResult {
        path: vec![0],
        tokens: Vec::new(),
    };
    let mut cur = 0usize;
    'walk: loop {
        let want = target_argmax[cur];
        for i in cur + 1..t {
            if parents[i] == cur as i64 && tokens[i] == want {
                out.path.push(i as i64);
                out.tokens.push(want);
                cur = i;
                continue 'walk;
            }
        }
        out.tokens.push(want);
        return out;
    }
}

/// Greedy verification of B padded trees: `parents`, `tokens`, `target_argmax` are row-major
/// [B, T_max]; tree b uses the first `lengths[b]` entries of its row.
pub fn verify_greedy_batch(
    parents: &[i64],
    tokens: &[i64],
    target_argmax: &[i64],
    lengths: &[i64],
    t_max: usize,
) -> Result<Vec<VerifyResult>> {
    let b = lengths.len();
    for (what, arr) in [
        ("parents", parents),
        ("tokens", tokens),
        ("target_argmax", target_argmax),
    ] {
        if arr.len() != b * t_max {
            return Err(CoreError::shape(
                what,
                format!("[{b}, {t_max}]"),
                format!("{} elements", arr.len()),
            ));
        }
    }
    let mut results = Vec::with_capacity(b);
    for (row, &len) in lengths.iter().enumerate() {
        let n = check_index("lengths", len, t_max + 1)?;
        let span = row * t_max..row * t_max + n;
        results.push(verify_greedy(
            &parents[span.clone()],
            &tokens[span.clone()],
            &target_argmax[span],
        )?);
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_follows_argmax() {
        // root -> {1: tok 5, 2: tok 7}, 1 -> {3: tok 9}, 2 -> {4: tok 9}
        let parents = [-1, 0, 0, 1, 2];
        let tokens = [0, 5, 7, 9, 9];
        let r = verify_greedy(&parents, &tokens, &[7, 9, 9, 1, 4]).unwrap();
        assert_eq!(r.path, vec![0, 2, 4]);
        assert_eq!(r.tokens, vec![7, 9, 4]);
        let r = verify_greedy(&parents, &tokens, &[3, 0, 0, 0, 0]).unwrap();
        assert_eq!(r.path, vec![0]);
        assert_eq!(r.tokens, vec![3]);
    }

    #[test]
    fn duplicate_siblings_take_lowest_index() {
        let parents = [-1, 0, 0];
        let r = verify_greedy(&parents, &[0, 4, 4], &[4, 8, 9]).unwrap();
        assert_eq!(r.path, vec![0, 1]);
        assert_eq!(r.tokens, vec![4, 8]);
    }

    #[test]
    fn bad_input() {
        assert!(matches!(
            verify_greedy(&[-1, 0], &[1], &[1, 1]),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            verify_greedy(&[-1, 0], &[1, 2], &[1]),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            verify_greedy(&[-1, 1], &[1, 2], &[1, 2]),
            Err(CoreError::Value(_))
        ));
        assert!(matches!(
            verify_greedy(&[], &[], &[]),
            Err(CoreError::Value(_))
        ));
        assert!(matches!(
            verify_greedy(&[-1], &[1], &[-3]),
            Err(CoreError::Index { .. })
        ));
    }

    #[test]
    fn batch_matches_single() {
        let parents = [-1, 0, 0, -1, 0, 0];
        let tokens = [0, 5, 6, 0, 5, 6];
        let argmax = [6, 1, 2, 5, 3, 4];
        let rs = verify_greedy_batch(&parents, &tokens, &argmax, &[3, 2], 3).unwrap();
        assert_eq!(rs[0].tokens, vec![6, 2]);
        assert_eq!(rs[1].tokens, vec![5, 3]);
        assert!(verify_greedy_batch(&parents, &tokens, &argmax, &[4, 2], 3).is_err());
    }
}
