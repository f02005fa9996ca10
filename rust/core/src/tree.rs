//! Token trees as flat arrays: node 0 is the root (its token is already in the sequence),
//! `parents[0] == -1` and `0 <= parents[i] < i` for every other node, so a forward scan is a
//! topological order.

use crate::error::{CoreError, Result};

/// Checks the parent array of a tree of `parents.len()` nodes.
pub fn validate_parents(parents: &[i64]) -> Result<()> {
    if parents.is_empty() {
        return Err(CoreError::value(
            "empty tree: parents must hold at least the root",
        ));
    }
    if parents[0] != -1 {
        return Err(CoreError::value(format!(
            "parents[0] must be -1 (node 0 is the root), got {}",
            parents[0]
        )));
    }
    for (i, &p) in parents.iter().enumerate().skip(1) {
        if p < 0 || p as usize >= i {
            return Err(CoreError::value(format!(
                "parents must be topologically ordered (0 <= parents[i] < i): parents[{i}] = {p}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_parents() {
        assert!(validate_parents(&[]).is_err());
        assert!(validate_parents(&[0]).is_err());
        assert!(validate_parents(&[-1, 1]).is_err());
        assert!(validate_parents(&[-1, 0, 3, 0]).is_err());
        assert!(validate_parents(&[-1, 0, -1]).is_err());
        assert!(validate_parents(&[-1, 0, 1, 1, 0]).is_ok());
    }

    use proptest::prelude::*;

    fn tree(max: usize) -> impl Strategy<Value = Vec<i64>> {
        prop::collection::vec(any::<prop::sample::Index>(), 0..max).prop_map(|picks| {
            let mut parents = vec![-1i64];
            for (i, pick) in picks.iter().enumerate() {
                parents.push(pick.index(i + 1) as i64);
            }
            parents
        })
    }

    proptest! {
        #[test]
        fn random_trees_are_valid(parents in tree(64)) {
            prop_assert!(validate_parents(&parents).is_ok());
            // Any parent index at or after its child breaks the order.
            if parents.len() > 1 {
                let mut bad = parents.clone();
                let last = bad.len() - 1;
                bad[last] = last as i64;
                prop_assert!(validate_parents(&bad).is_err());
            }
        }
    }
}
