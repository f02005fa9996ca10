//! Token trees as flat arrays: node 0 is the root (its token is already in the sequence),
//! `parents[0] == -1` and `0 <= parents[i] < i` for every other node, so a forward scan is a
//! topological order.

use crate::error::{check_index, CoreError, Result};

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

/// Depth of every node (root = 0). `parents` must be valid.
pub fn depths(parents: &[i64]) -> Vec<u32> {
    let mut d = vec![0u32; parents.len()];
    for i in 1..parents.len() {
        d[i] = d[parents[i] as usize] + 1;
    }
    d
}

/// Children of every node in compressed form: the children of `n` are
/// `items[offsets[n]..offsets[n + 1]]`, in increasing index order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Children {
    pub offsets: Vec<u32>,
    pub items: Vec<u32>,
}

impl Children {
    /// Builds the child lists of a valid parent array.
    pub fn new(parents: &[i64]) -> Self {
        let n = parents.len();
        let mut counts = vec![0u32; n + 1];
        for &p in parents.iter().skip(1) {
            counts[p as usize + 1] += 1;
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let offsets = counts.clone();
        let mut fill = counts;
        let mut items = vec![0u32; n.saturating_sub(1)];
        for (i, &p) in parents.iter().enumerate().skip(1) {
            let slot = &mut fill[p as usize];
            items[*slot as usize] = i as u32;
            *slot += 1;
        }
        Children { offsets, items }
    }

    pub fn of(&self, node: usize) -> &[u32] {
        &self.items[self.offsets[node] as usize..self.offsets[node + 1] as usize]
    }
}

/// Checks token ids against a vocabulary size (`vocab == 0` skips the check).
pub fn validate_tokens(what: &'static str, tokens: &[i64], vocab: usize) -> Result<()> {
    for &t in tokens {
        if vocab == 0 {
            if t < 0 {
                return Err(CoreError::Index {
                    what,
                    index: t,
                    bound: usize::MAX,
                });
            }
        } else {
            check_index(what, t, vocab)?;
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

    #[test]
    fn children_and_depths() {
        let parents = [-1, 0, 0, 1, 1, 2, 4];
        let c = Children::new(&parents);
        assert_eq!(c.of(0), &[1, 2]);
        assert_eq!(c.of(1), &[3, 4]);
        assert_eq!(c.of(2), &[5]);
        assert_eq!(c.of(4), &[6]);
        assert!(c.of(6).is_empty());
        assert_eq!(depths(&parents), vec![0, 1, 1, 2, 2, 2, 3]);
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
        fn children_partition_nodes(parents in tree(64)) {
            prop_assert!(validate_parents(&parents).is_ok());
            let c = Children::new(&parents);
            let mut seen = vec![0u32; parents.len()];
            for n in 0..parents.len() {
                for &ch in c.of(n) {
                    prop_assert_eq!(parents[ch as usize], n as i64);
                    prop_assert!(ch as usize > n);
                    seen[ch as usize] += 1;
                }
            }
            prop_assert_eq!(seen[0], 0);
            prop_assert!(seen[1..].iter().all(|&s| s == 1));
        }
    }
}
