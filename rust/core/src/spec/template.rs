//! Static draft-tree templates for Token Recycling.
//!
//! A template is a set of *rank paths*: the path `[0, 1, 2]` is the node reached from the root
//! by taking the root token's rank-0 candidate, then that token's rank-1 candidate, then that
//! token's rank-2 candidate. A valid template is non-empty, has no duplicate path, no empty path,
//! and is *subtree-closed*: every proper prefix of a path is itself a path of the template.
//!
//! [`Template::from_paths`] puts the nodes in canonical order — by depth, then lexicographically
//! by path — so that node `i + 1` of the draft tree is path `i` (node 0 is the root), every parent
//! precedes its children, and the nodes of one depth are contiguous (one gather per level).
//! The paper's "2.2.2" template is already in canonical order.
//!
//! The nested family `"2.2.2-N"` (N in [`NESTED_SIZES`]) holds the first N nodes of "2.2.2" in
//! order of decreasing prior acceptance probability (product of per-rank prior rates along the
//! path). Because a child's prior is strictly below its parent's, every prefix of that order is
//! subtree-closed, and each smaller template is a subset of every larger one.

use std::cmp::Ordering;
use std::collections::HashSet;

use crate::error::{CoreError, Result};

/// Sizes (draft nodes, root excluded) of the nested templates `"2.2.2-N"`.
pub const NESTED_SIZES: [usize; 9] = [1, 4, 8, 16, 24, 32, 48, 64, 80];

/// Prior probability that the rank-r candidate of an accepted node is accepted, used only to
/// order the nested family. Decreasing in r, all below 1.
pub const RANK_PRIOR: [f64; 8] = [0.45, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01];

/// The paper's 80-node "2.2.2" template (81 tokens with the root), depth 6, nodes per level
/// 8/21/25/15/8/3, as given in the Token Recycling reference code.
pub fn paths_2_2_2() -> Vec<Vec<u32>> {
    const L: &[&[u32]] = &[
        &[0],
        &[1],
        &[2],
        &[3],
        &[4],
        &[5],
        &[6],
        &[7],
        &[0, 0],
        &[0, 1],
        &[0, 2],
        &[0, 3],
        &[0, 4],
        &[0, 5],
        &[0, 6],
        &[0, 7],
        &[1, 0],
        &[1, 1],
        &[1, 2],
        &[1, 3],
        &[2, 0],
        &[2, 1],
        &[2, 2],
        &[3, 0],
        &[3, 1],
        &[4, 0],
        &[5, 0],
        &[6, 0],
        &[7, 0],
        &[0, 0, 0],
        &[0, 0, 1],
        &[0, 0, 2],
        &[0, 0, 3],
        &[0, 0, 4],
        &[0, 0, 5],
        &[0, 0, 6],
        &[0, 0, 7],
        &[0, 1, 0],
        &[0, 1, 1],
        &[0, 1, 2],
        &[0, 2, 0],
        &[0, 2, 1],
        &[0, 3, 0],
        &[0, 4, 0],
        &[0, 5, 0],
        &[0, 6, 0],
        &[0, 7, 0],
        &[1, 0, 0],
        &[1, 0, 1],
        &[1, 1, 0],
        &[2, 0, 0],
        &[3, 0, 0],
        &[4, 0, 0],
        &[5, 0, 0],
        &[0, 0, 0, 0],
        &[0, 0, 0, 1],
        &[0, 0, 0, 2],
        &[0, 0, 0, 3],
        &[0, 0, 0, 4],
        &[0, 0, 1, 0],
        &[0, 0, 1, 1],
        &[0, 0, 2, 0],
        &[0, 0, 3, 0],
        &[0, 0, 4, 0],
        &[0, 1, 0, 0],
        &[0, 2, 0, 0],
        &[1, 0, 0, 0],
        &[2, 0, 0, 0],
        &[3, 0, 0, 0],
        &[0, 0, 0, 0, 0],
        &[0, 0, 0, 0, 1],
        &[0, 0, 0, 0, 2],
        &[0, 0, 0, 1, 0],
        &[0, 0, 0, 2, 0],
        &[0, 0, 1, 0, 0],
        &[0, 1, 0, 0, 0],
        &[1, 0, 0, 0, 0],
        &[0, 0, 0, 0, 0, 0],
        &[0, 0, 0, 0, 0, 1],
        &[0, 0, 0, 1, 0, 0],
    ];
    L.iter().map(|p| p.to_vec()).collect()
}

/// Prior acceptance probability of a path: the product of [`RANK_PRIOR`] along it.
pub fn prior_probability(path: &[u32]) -> f64 {
    path.iter()
        .map(|&r| RANK_PRIOR.get(r as usize).copied().unwrap_or(0.005))
        .product()
}

/// The 80 paths of "2.2.2" in nested order (decreasing prior, ties by canonical order).
pub fn nested_order_2_2_2() -> Vec<Vec<u32>> {
    let mut paths = paths_2_2_2();
    paths.sort_by(|a, b| {
        prior_probability(b)
            .partial_cmp(&prior_probability(a))
            .unwrap_or(Ordering::Equal)
            .then_with(|| canonical_cmp(a, b))
    });
    paths
}

/// Names accepted by [`Template::named`].
pub fn template_names() -> Vec<String> {
    let mut names = vec!["2.2.2".to_string()];
    names.extend(NESTED_SIZES.iter().map(|n| format!("2.2.2-{n}")));
    names
}

fn canonical_cmp(a: &[u32], b: &[u32]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// A validated template in canonical order, with the flat tree it induces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    paths: Vec<Vec<u32>>,
    /// Parent of every tree node (root included, `parents[0] == -1`).
    parents: Vec<i64>,
    /// Rank of every tree node among its parent's candidates (root: 0).
    ranks: Vec<u32>,
    /// Depth of every tree node (root: 0).
    depths: Vec<i64>,
    max_rank: u32,
}

impl Template {
    /// Builds a template from rank paths (any order; duplicates and gaps are errors).
    pub fn from_paths(paths: &[Vec<i64>]) -> Result<Self> {
        if paths.is_empty() {
            return Err(CoreError::value(
                "empty template: give at least one rank path, e.g. [[0]]",
            ));
        }
        let mut out: Vec<Vec<u32>> = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            if p.is_empty() {
                return Err(CoreError::value(format!(
                    "template path {i} is empty; paths name nodes below the root"
                )));
            }
            let mut q = Vec::with_capacity(p.len());
            for &r in p {
                if !(0..=u32::MAX as i64).contains(&r) {
                    return Err(CoreError::value(format!(
                        "template path {i} = {p:?}: ranks must be >= 0, got {r}"
                    )));
                }
                q.push(r as u32);
            }
            out.push(q);
        }
        Self::from_u32_paths(out)
    }

    fn from_u32_paths(mut paths: Vec<Vec<u32>>) -> Result<Self> {
        paths.sort_by(|a, b| canonical_cmp(a, b));
        let mut seen: HashSet<&[u32]> = HashSet::with_capacity(paths.len());
        for p in &paths {
            if !seen.insert(p.as_slice()) {
                return Err(CoreError::value(format!(
                    "template path {p:?} appears twice"
                )));
            }
        }
        for p in &paths {
            if p.len() > 1 && !seen.contains(&p[..p.len() - 1]) {
                return Err(CoreError::value(format!(
                    "template is not subtree-closed: path {p:?} needs its parent {:?}",
                    &p[..p.len() - 1]
                )));
            }
        }
        let n = paths.len() + 1;
        let mut parents = vec![-1i64; n];
        let mut ranks = vec![0u32; n];
        let mut depths = vec![0i64; n];
        // Index of every path in canonical order, to look parents up.
        let index: std::collections::HashMap<&[u32], usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i + 1))
            .collect();
        let mut max_rank = 0;
        for (i, p) in paths.iter().enumerate() {
            let node = i + 1;
            let parent = if p.len() == 1 {
                0
            } else {
                index.get(&p[..p.len() - 1]).copied().unwrap_or(0)
            };
            parents[node] = parent as i64;
            ranks[node] = p[p.len() - 1];
            depths[node] = p.len() as i64;
            max_rank = max_rank.max(ranks[node]);
        }
        Ok(Template {
            paths,
            parents,
            ranks,
            depths,
            max_rank,
        })
    }

    /// A named template: `"2.2.2"` or a nested `"2.2.2-N"` (see [`template_names`]).
    pub fn named(name: &str) -> Result<Self> {
        if name == "2.2.2" {
            return Self::from_u32_paths(paths_2_2_2());
        }
        if let Some(n) = name
            .strip_prefix("2.2.2-")
            .and_then(|s| s.parse::<usize>().ok())
        {
            if NESTED_SIZES.contains(&n) {
                let mut order = nested_order_2_2_2();
                order.truncate(n);
                return Self::from_u32_paths(order);
            }
        }
        Err(CoreError::value(format!(
            "unknown template {name:?}; expected one of {:?}",
            template_names()
        )))
    }

    /// Rank paths in canonical order (node `i + 1` of the tree is `paths()[i]`).
    pub fn paths(&self) -> &[Vec<u32>] {
        &self.paths
    }

    /// Tree nodes, the root included.
    pub fn num_nodes(&self) -> usize {
        self.parents.len()
    }

    pub fn parents(&self) -> &[i64] {
        &self.parents
    }

    pub fn ranks(&self) -> &[u32] {
        &self.ranks
    }

    pub fn depths(&self) -> &[i64] {
        &self.depths
    }

    /// Largest rank used (must be below the recycler's k).
    pub fn max_rank(&self) -> u32 {
        self.max_rank
    }

    pub fn max_depth(&self) -> usize {
        self.depths.iter().copied().max().unwrap_or(0) as usize
    }

    /// Ancestor bitsets: row `i` (of `words` u64) has bit `j` set when node `j` is node `i`
    /// or one of its ancestors. Row-major [T, words], words = ceil(T / 64).
    pub fn ancestor_bits(&self) -> (Vec<u64>, usize) {
        let t = self.num_nodes();
        let words = t.div_ceil(64);
        let mut bits = vec![0u64; t * words];
        for i in 0..t {
            if i > 0 {
                let p = self.parents[i] as usize;
                let (head, tail) = bits.split_at_mut(i * words);
                tail[..words].copy_from_slice(&head[p * words..p * words + words]);
            }
            bits[i * words + i / 64] |= 1u64 << (i % 64);
        }
        (bits, words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_i64(p: &[Vec<u32>]) -> Vec<Vec<i64>> {
        p.iter()
            .map(|q| q.iter().map(|&r| r as i64).collect())
            .collect()
    }

    #[test]
    fn the_2_2_2_template() {
        let t = Template::named("2.2.2").unwrap();
        assert_eq!(t.num_nodes(), 81);
        assert_eq!(
            t.paths(),
            paths_2_2_2().as_slice(),
            "the reference list is in canonical order"
        );
        let mut per_level = [0usize; 7];
        for &d in t.depths() {
            per_level[d as usize] += 1;
        }
        assert_eq!(per_level, [1, 8, 21, 25, 15, 8, 3]);
        assert_eq!(t.max_rank(), 7);
        assert_eq!(t.max_depth(), 6);
        // Root: 8 children; among its children rank 0 has 8, rank 1 has 4, rank 2 has 3, rank 3 has 2.
        let kids = |n: i64| t.parents().iter().filter(|&&p| p == n).count();
        assert_eq!(kids(0), 8);
        assert_eq!(
            (kids(1), kids(2), kids(3), kids(4), kids(5)),
            (8, 4, 3, 2, 1)
        );
    }

    #[test]
    fn nested_family_is_nested_and_closed() {
        let mut prev: Option<Vec<Vec<u32>>> = None;
        for &n in NESTED_SIZES.iter() {
            let t = Template::named(&format!("2.2.2-{n}")).unwrap();
            assert_eq!(t.num_nodes(), n + 1);
            if let Some(p) = &prev {
                assert!(p.iter().all(|q| t.paths().contains(q)));
            }
            prev = Some(t.paths().to_vec());
        }
        assert_eq!(
            Template::named("2.2.2-80").unwrap(),
            Template::named("2.2.2").unwrap()
        );
        assert_eq!(Template::named("2.2.2-1").unwrap().paths(), &[vec![0]]);
    }

    #[test]
    fn canonical_order_and_parents() {
        let t = Template::from_paths(&[vec![1, 0], vec![0], vec![1], vec![0, 0, 0], vec![0, 0]])
            .unwrap();
        assert_eq!(
            t.paths(),
            &[vec![0], vec![1], vec![0, 0], vec![1, 0], vec![0, 0, 0]]
        );
        assert_eq!(t.parents(), &[-1, 0, 0, 1, 2, 3]);
        assert_eq!(t.ranks(), &[0, 0, 1, 0, 0, 0]);
        assert_eq!(t.depths(), &[0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn bad_templates() {
        assert!(Template::from_paths(&[]).is_err());
        assert!(Template::from_paths(&[vec![]]).is_err());
        assert!(Template::from_paths(&[vec![0], vec![0]]).is_err());
        assert!(Template::from_paths(&[vec![0, 1]]).is_err());
        assert!(Template::from_paths(&[vec![-1]]).is_err());
        assert!(Template::named("2.2.3").is_err());
        assert!(Template::named("2.2.2-7").is_err());
    }

    #[test]
    fn ancestor_bits_match_parent_walk() {
        let t = Template::named("2.2.2").unwrap();
        let (bits, w) = t.ancestor_bits();
        for i in 0..t.num_nodes() {
            let mut anc = vec![false; t.num_nodes()];
            let mut j = i as i64;
            while j >= 0 {
                anc[j as usize] = true;
                j = t.parents()[j as usize];
            }
            for (j, &a) in anc.iter().enumerate() {
                assert_eq!(
                    bits[i * w + j / 64] >> (j % 64) & 1 == 1,
                    a,
                    "node {i}, ancestor {j}"
                );
            }
        }
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_closed_subset_roundtrips(mask in prop::collection::vec(any::<bool>(), 80)) {
            // Keep a path only if all its prefixes are kept: a closed subset of 2.2.2.
            let all = paths_2_2_2();
            let chosen: Vec<Vec<u32>> = all.iter().zip(&mask).filter(|(_, &m)| m).map(|(p, _)| p.clone()).collect();
            let closed: Vec<Vec<u32>> = chosen.iter().filter(|p| (1..p.len()).all(|l| chosen.contains(&p[..l].to_vec()))).cloned().collect();
            prop_assume!(!closed.is_empty());
            let t = Template::from_paths(&to_i64(&closed)).unwrap();
            prop_assert_eq!(t.num_nodes(), closed.len() + 1);
            for i in 1..t.num_nodes() {
                prop_assert!((t.parents()[i] as usize) < i);
                prop_assert_eq!(t.depths()[i], t.depths()[t.parents()[i] as usize] + 1);
            }
        }
    }
}
