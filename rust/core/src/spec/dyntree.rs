//! DySpec dynamic draft trees (arXiv 2410.11744), grown from a draft model one depth per
//! draft forward.
//!
//! Every node has a *key* (its rank in a max-heap) and a *value* (the estimated probability
//! that verification reaches and accepts it, the product of draft probabilities on its path).
//!
//! - Deterministic drafts (`sampled = false`): the children of an expanded node are the top-k
//!   tokens of its draft row; key = value = parent value x q(token).
//! - Sampled drafts (`sampled = true`): the children are drawn without replacement from the
//!   draft row (the distribution of Gumbel-top-k); the i-th child x_i has value
//!   `v * q(x_i)` and key `v * (1 - q(x_1) - ... - q(x_{i-1}))`, DySpec's sibling weight: the
//!   mass left to the i-th sibling once the earlier ones are rejected (`v` = parent value).
//!
//! Keys never increase from a node to its children or to its later siblings, and ties go to
//! the older node, so the `budget` best candidates always form a subtree-closed set.
//!
//! Construction (exact greedy, batched by depth): the current selection S is the `budget`
//! best candidates seen so far; the frontier is every node of S (or the root) that is not
//! expanded yet and lies above `max_depth`. One draft forward evaluates the whole frontier,
//! `expand_*` pushes the children into the heap and S is re-selected. S's threshold only
//! rises, so a candidate that falls out never returns, every frontier is one depth, and a
//! tree of depth D costs at most D draft forwards. At the end S is the top-`budget` node set
//! of the whole top-k tree cut at `max_depth`: for deterministic drafts it maximises the sum
//! of path probabilities over all subtree-closed node sets of that size (the sequential
//! DySpec greedy gives the same set). `max_frontier` caps the frontier per forward (the
//! best nodes first; the others stay leaves), trading that optimality for cheaper forwards.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::error::{check_index, CoreError, Result};
use crate::limits::{check_size, MAX_TREE_NODES, MAX_VOCAB};
use crate::rng;
use crate::sampling::check_partial_row;

/// Settings of a [`DynamicTreeBuilder`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuilderConfig {
    /// Most draft nodes in a tree (the root excluded).
    pub budget: usize,
    /// Deepest node depth (the root has depth 0).
    pub max_depth: usize,
    /// Most children per expanded node.
    pub k: usize,
    /// Children drawn without replacement (true) or the top-k (false).
    pub sampled: bool,
    /// Seed of the counter-based RNG (sampled drafts only).
    pub seed: u64,
    /// Vocabulary size for id checks; 0 checks only `id >= 0`.
    pub vocab_size: usize,
    /// Most nodes per draft forward (None: the whole frontier, exact greedy).
    pub max_frontier: Option<usize>,
}

impl BuilderConfig {
    pub fn new(budget: usize, max_depth: usize, k: usize) -> Self {
        BuilderConfig {
            budget,
            max_depth,
            k,
            sampled: false,
            seed: 0,
            vocab_size: 0,
            max_frontier: None,
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    token: i64,
    parent: i64,
    depth: u32,
    key: f64,
    value: f64,
    /// Index of the draft row this node was expanded with, -1 when not expanded.
    row: i64,
    /// Left a leaf by the `max_frontier` cap.
    frozen: bool,
}

/// A heap entry: larger key first, then the older (smaller id) node.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    key: f64,
    id: u32,
}

impl Eq for Cand {}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        // Keys are validated finite, so total_cmp orders them as numbers.
        self.key
            .total_cmp(&other.key)
            .then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A finished (or partial) tree in the flat format of every draft tree in tokenloom.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DynamicTree {
    /// Token of each node; node 0 is the root. [T]
    pub tokens: Vec<i64>,
    /// Parent of each node; `parents[0] == -1`, `parents[i] < i`. [T]
    pub parents: Vec<i64>,
    /// Depth of each node (root 0). Nodes are sorted by depth (BFS order). [T]
    pub depths: Vec<i64>,
    /// Path probability estimate of each node (root 1.0). [T]
    pub scores: Vec<f64>,
    /// Index of the draft row (counted over all expand calls since `reset`, in call order)
    /// from which each node's children were chosen; -1 for nodes never expanded. [T]
    pub draft_rows: Vec<i64>,
    /// The builder's id of each node (the ids `frontier` hands out). [T]
    pub node_ids: Vec<i64>,
}

/// The greedy DySpec tree builder; see the module documentation.
#[derive(Debug, Clone)]
pub struct DynamicTreeBuilder {
    cfg: BuilderConfig,
    nodes: Vec<Node>,
    /// The current selection S in rank order (best first).
    selected: Vec<u32>,
    frontier: Vec<u32>,
    rows: i64,
    /// Counts `reset` calls: the RNG stream of the current tree.
    trees: u64,
    started: bool,
}

impl DynamicTreeBuilder {
    pub fn new(cfg: BuilderConfig) -> Result<Self> {
        check_size("budget", cfg.budget as u64, MAX_TREE_NODES)?;
        check_size("max_depth", cfg.max_depth as u64, MAX_TREE_NODES)?;
        if cfg.k == 0 {
            return Err(CoreError::value(
                "k: expected at least 1 child per node, got 0",
            ));
        }
        if let Some(f) = cfg.max_frontier {
            check_size("max_frontier", f as u64, usize::MAX)?;
        }
        if cfg.vocab_size > MAX_VOCAB {
            return Err(CoreError::value(format!(
                "vocab_size: expected an int in [1, {MAX_VOCAB}], got {}",
                cfg.vocab_size
            )));
        }
        Ok(DynamicTreeBuilder {
            cfg,
            nodes: Vec::new(),
            selected: Vec::new(),
            frontier: Vec::new(),
            rows: 0,
            trees: 0,
            started: false,
        })
    }

    pub fn config(&self) -> &BuilderConfig {
        &self.cfg
    }

    /// Starts a new tree whose root carries `root_token`; the frontier becomes `[0]`.
    pub fn reset(&mut self, root_token: i64) -> Result<()> {
        self.check_token("root_token", root_token)?;
        self.nodes.clear();
        self.nodes.push(Node {
            token: root_token,
            parent: -1,
            depth: 0,
            key: 1.0,
            value: 1.0,
            row: -1,
            frozen: false,
        });
        self.selected.clear();
        self.frontier.clear();
        self.frontier.push(0);
        self.rows = 0;
        self.trees = self.trees.wrapping_add(1);
        self.started = true;
        Ok(())
    }

    fn check_started(&self) -> Result<()> {
        if !self.started {
            return Err(CoreError::value("no tree: call reset(root_token) first"));
        }
        Ok(())
    }

    fn check_token(&self, what: &'static str, t: i64) -> Result<()> {
        if self.cfg.vocab_size > 0 {
            check_index(what, t, self.cfg.vocab_size)?;
        } else if t < 0 {
            return Err(CoreError::Index {
                what,
                index: t,
                bound: usize::MAX,
            });
        }
        Ok(())
    }

    /// Ids of the nodes whose draft rows the next `expand_*` call must bring, best first.
    /// Empty once the tree is complete.
    pub fn frontier(&self) -> Result<&[u32]> {
        self.check_started()?;
        Ok(&self.frontier)
    }

    /// True once the tree is complete (no frontier left).
    pub fn is_done(&self) -> bool {
        self.started && self.frontier.is_empty()
    }

    /// Number of nodes created so far (the root and every candidate).
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Token, parent and depth of a created node.
    pub fn node(&self, id: i64) -> Result<(i64, i64, u32)> {
        let i = check_index("node id", id, self.nodes.len())?;
        let n = &self.nodes[i];
        Ok((n.token, n.parent, n.depth))
    }

    /// Rows handed to `expand_*` since `reset`.
    pub fn rows_seen(&self) -> i64 {
        self.rows
    }

    /// Checks that `node_ids` is a permutation of the frontier; returns them as indices.
    fn check_node_ids(&self, node_ids: &[i64]) -> Result<Vec<usize>> {
        self.check_started()?;
        let mut seen = vec![false; self.nodes.len()];
        let mut out = Vec::with_capacity(node_ids.len());
        for &id in node_ids {
            let i = check_index("node_ids", id, self.nodes.len())?;
            if self.nodes[i].row >= 0 || seen[i] {
                return Err(CoreError::value(format!(
                    "node_ids: node {id} is already expanded"
                )));
            }
            if !self.frontier.contains(&(i as u32)) {
                return Err(CoreError::value(format!(
                    "node_ids: node {id} is not in the frontier {:?}",
                    self.frontier
                )));
            }
            seen[i] = true;
            out.push(i);
        }
        if out.len() != self.frontier.len() {
            return Err(CoreError::shape(
                "node_ids",
                format!("every frontier node once: {:?}", self.frontier),
                format!("{node_ids:?}"),
            ));
        }
        Ok(out)
    }

    /// Expands the frontier with top-k draft rows: row r of `ids` / `probs` (row-major
    /// [n, width]) is the draft distribution at node `node_ids[r]`, restricted to the
    /// tokens `ids[r, :]`. Entries with probability 0 are ignored. For sampled drafts the
    /// children are drawn from the row renormalised over its entries.
    pub fn expand_topk(
        &mut self,
        node_ids: &[i64],
        ids: &[i64],
        probs: &[f64],
        width: usize,
    ) -> Result<()> {
        let n = node_ids.len();
        if ids.len() != n * width {
            return Err(CoreError::shape(
                "topk_ids",
                format!("[{n}, {width}]"),
                format!("{} elements", ids.len()),
            ));
        }
        if probs.len() != n * width {
            return Err(CoreError::shape(
                "topk_probs",
                format!("[{n}, {width}]"),
                format!("{} elements", probs.len()),
            ));
        }
        let order = self.check_node_ids(node_ids)?;
        let mut chunks = Vec::new();
        for r in 0..n {
            let row_ids = &ids[r * width..(r + 1) * width];
            check_partial_row(
                "topk_probs",
                r,
                &probs[r * width..(r + 1) * width],
                &mut chunks,
            )?;
            for (j, &t) in row_ids.iter().enumerate() {
                self.check_token("topk_ids", t)?;
                if probs[r * width + j] > 0.0 && row_ids[..j].contains(&t) {
                    return Err(CoreError::value(format!(
                        "topk_ids: token {t} appears twice in row {r}"
                    )));
                }
            }
        }
        self.apply(&order, |r| {
            let s = r * width..(r + 1) * width;
            (Some(&ids[s.clone()]), &probs[s])
        })
    }

    /// Expands the frontier with full draft rows: `probs` is row-major [n, vocab], row r the
    /// draft distribution at node `node_ids[r]` (the column is the token id).
    pub fn expand_rows(&mut self, node_ids: &[i64], probs: &[f64], vocab: usize) -> Result<()> {
        let n = node_ids.len();
        if vocab == 0 && n > 0 {
            return Err(CoreError::shape(
                "probs",
                "[n, vocab] with vocab >= 1",
                "0 columns",
            ));
        }
        if self.cfg.vocab_size > 0 && vocab != self.cfg.vocab_size {
            return Err(CoreError::shape(
                "probs",
                format!("{} columns (vocab_size)", self.cfg.vocab_size),
                vocab,
            ));
        }
        if probs.len() != n * vocab {
            return Err(CoreError::shape(
                "probs",
                format!("[{n}, {vocab}]"),
                format!("{} elements", probs.len()),
            ));
        }
        let order = self.check_node_ids(node_ids)?;
        let mut chunks = Vec::new();
        for r in 0..n {
            check_partial_row("probs", r, &probs[r * vocab..(r + 1) * vocab], &mut chunks)?;
        }
        self.apply(&order, |r| (None, &probs[r * vocab..(r + 1) * vocab]))
    }

    /// Creates the children of every expanded node (in increasing node id order, so the
    /// result does not depend on the row order), then re-selects and recomputes the frontier.
    fn apply<'a, F>(&mut self, order: &[usize], row: F) -> Result<()>
    where
        F: Fn(usize) -> (Option<&'a [i64]>, &'a [f64]),
    {
        let mut by_id: Vec<(usize, usize)> =
            order.iter().enumerate().map(|(r, &i)| (i, r)).collect();
        by_id.sort_unstable();
        let first_new = self.nodes.len();
        for &(i, r) in &by_id {
            self.nodes[i].row = self.rows + r as i64;
            let (ids, probs) = row(r);
            let picks = if self.cfg.sampled {
                sample_without_replacement(probs, self.cfg.k, self.cfg.seed, self.trees, i)
            } else {
                top_k(probs, self.cfg.k)
            };
            let parent = &self.nodes[i];
            let (v, cap, depth) = (parent.value, parent.key, parent.depth + 1);
            let mut taken = 0.0f64;
            let mut children = Vec::with_capacity(picks.len());
            for j in picks {
                let q = probs[j];
                let token = ids.map_or(j as i64, |ids| ids[j]);
                // Clamped to the parent's key so that rounding (rows may sum to 1 + tol)
                // can never rank a child above its parent.
                let key = if self.cfg.sampled {
                    v * (1.0 - taken).max(0.0)
                } else {
                    v * q
                }
                .min(cap);
                taken += q;
                children.push(Node {
                    token,
                    parent: i as i64,
                    depth,
                    key,
                    value: v * q,
                    row: -1,
                    frozen: false,
                });
            }
            self.nodes.extend(children);
        }
        self.rows += order.len() as i64;
        self.reselect(first_new);
        Ok(())
    }

    /// S := the `budget` best of S and the nodes created from `first_new` on; then the
    /// frontier := the unexpanded, unfrozen nodes of S above `max_depth`, best first, cut to
    /// `max_frontier` (the nodes cut are frozen as leaves).
    fn reselect(&mut self, first_new: usize) {
        let mut heap: BinaryHeap<Cand> = self
            .selected
            .iter()
            .map(|&id| id as usize)
            .chain(first_new..self.nodes.len())
            .map(|id| Cand {
                key: self.nodes[id].key,
                id: id as u32,
            })
            .collect();
        self.selected.clear();
        while self.selected.len() < self.cfg.budget {
            match heap.pop() {
                Some(c) => self.selected.push(c.id),
                None => break,
            }
        }
        self.frontier.clear();
        let cap = self.cfg.max_frontier.unwrap_or(usize::MAX);
        for &id in &self.selected {
            let n = &mut self.nodes[id as usize];
            if n.row >= 0 || n.frozen || n.depth as usize >= self.cfg.max_depth {
                continue;
            }
            if self.frontier.len() < cap {
                self.frontier.push(id);
            } else {
                n.frozen = true;
            }
        }
    }

    /// The current tree: the root and S, sorted by (depth, node id), parents remapped.
    pub fn tree(&self) -> Result<DynamicTree> {
        self.check_started()?;
        let mut ids: Vec<u32> = Vec::with_capacity(self.selected.len() + 1);
        ids.push(0);
        ids.extend_from_slice(&self.selected);
        ids.sort_unstable_by_key(|&id| (self.nodes[id as usize].depth, id));
        let mut pos = vec![-1i64; self.nodes.len()];
        for (p, &id) in ids.iter().enumerate() {
            pos[id as usize] = p as i64;
        }
        let t = ids.len();
        let mut out = DynamicTree {
            tokens: Vec::with_capacity(t),
            parents: Vec::with_capacity(t),
            depths: Vec::with_capacity(t),
            scores: Vec::with_capacity(t),
            draft_rows: Vec::with_capacity(t),
            node_ids: Vec::with_capacity(t),
        };
        for &id in &ids {
            let n = &self.nodes[id as usize];
            let parent = if n.parent < 0 {
                -1
            } else {
                pos[n.parent as usize]
            };
            if n.parent >= 0 && parent < 0 {
                return Err(CoreError::value(format!(
                    "internal error: node {id} selected without its parent"
                )));
            }
            out.tokens.push(n.token);
            out.parents.push(parent);
            out.depths.push(n.depth as i64);
            out.scores.push(n.value);
            out.draft_rows.push(n.row);
            out.node_ids.push(id as i64);
        }
        Ok(out)
    }
}

/// Columns of the `k` largest positive entries, largest first (ties: lower column first).
pub fn top_k(probs: &[f64], k: usize) -> Vec<usize> {
    let mut cols: Vec<usize> = (0..probs.len()).filter(|&j| probs[j] > 0.0).collect();
    let by_prob = |a: &usize, b: &usize| probs[*b].total_cmp(&probs[*a]).then(a.cmp(b));
    if cols.len() > k {
        cols.select_nth_unstable_by(k - 1, by_prob);
        cols.truncate(k);
    }
    cols.sort_unstable_by(by_prob);
    cols
}

/// Up to `k` distinct columns drawn one after another, each from the row renormalised over
/// the columns not drawn yet (sampling without replacement, the distribution of
/// Gumbel-top-k). Draw `i` of node `node` uses the shared generator's uniform
/// [`rng::uniform`]`(seed, stream = tree, counter = `[`rng::counter`]`(node, i))`. One
/// prefix-sum pass, then a binary search per draw: O(V + k^2 log V).
pub fn sample_without_replacement(
    probs: &[f64],
    k: usize,
    seed: u64,
    tree: u64,
    node: usize,
) -> Vec<usize> {
    let positive = probs.iter().filter(|&&p| p > 0.0).count();
    let m = k.min(positive);
    let mut prefix = Vec::with_capacity(probs.len() + 1);
    prefix.push(0.0f64);
    let mut acc = 0.0f64;
    for &p in probs {
        acc += p;
        prefix.push(acc);
    }
    let mut taken: Vec<usize> = Vec::with_capacity(m); // sorted columns
    let mut out = Vec::with_capacity(m);
    let mut taken_mass = 0.0f64;
    for i in 0..m {
        let u = rng::uniform(seed, tree, rng::counter(node, i as u32));
        let target = u * (acc - taken_mass);
        // Residual prefix mass up to and including column j.
        let res = |j: usize| {
            let removed: f64 = taken
                .iter()
                .take_while(|&&c| c <= j)
                .map(|&c| probs[c])
                .sum();
            prefix[j + 1] - removed
        };
        let (mut lo, mut hi) = (0usize, probs.len() - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if res(mid) > target {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let usable = |j: usize| probs[j] > 0.0 && taken.binary_search(&j).is_err();
        // Rounding can land on a drawn or empty column: take the next usable one, else the
        // last usable one before it (one exists: fewer than `positive` columns are drawn).
        let pick = (lo..probs.len())
            .find(|&j| usable(j))
            .or_else(|| (0..lo).rev().find(|&j| usable(j)));
        let Some(j) = pick else { break };
        taken_mass += probs[j];
        let at = taken.binary_search(&j).unwrap_or_else(|e| e);
        taken.insert(at, j);
        out.push(j);
    }
    out
}

#[cfg(test)]
mod tests;
