//! Cover encodings of a byte prefix.
//!
//! For a byte string x, a *cover* is a token sequence t_1..t_k with decode(t_1..t_{k-1}) a strict
//! prefix of x and x a prefix of decode(t_1..t_k). Covers factor into an *exact path* (tokens
//! decoding to exactly x[..j], j < |x|) and a last token whose bytes start with x[j..]; the
//! tokens starting with x[j..] are one range of the token trie. [`CoverTree`] keeps the tree of
//! exact paths of a growing prefix and updates it per appended byte; [`enumerate_covers`] lists
//! every cover explicitly (the reference-sized kernel used by tests and benchmarks).
//!
//! Modes: *all covers*, or *canonical*: every adjacent token pair is valid for the tokenizer
//! ([`crate::bytes::canon::Canon::valid_pair`]) and the first token can start an encoding.
//! Special tokens are never byte content; they are end-of-text candidates only.

use std::collections::HashSet;

use crate::bytes::canon::Canon;
use crate::bytes::index::{ByteIndex, ROOT};
use crate::bytes::trie::DEAD;
use crate::error::{check_index, CoreError, Result};

/// One exact path: `token` covers bytes `[start, end)` of the prefix (the root has no token:
/// see [`PathNode::token_id`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathNode {
    pub(crate) token: u32,
    pub(crate) parent: u32,
    pub start: u32,
    pub end: u32,
    /// Its children (the tokens that follow it along the prefix) have been created.
    pub expanded: bool,
    /// Trie node of `prefix[end..]`, or DEAD when no token starts with it.
    pub state: u32,
    /// Unexpanded only: a token ending inside `prefix[end..]` was seen (it will have children).
    pub has_child: bool,
}

impl PathNode {
    /// The node's token; `None` at the root.
    pub fn token_id(&self) -> Option<u32> {
        (self.token != ROOT).then_some(self.token)
    }

    /// The node's parent; `None` at the root.
    pub fn parent_id(&self) -> Option<u32> {
        (self.parent != ROOT).then_some(self.parent)
    }

    /// Some token starts with `prefix[end..]` (the node can still be extended).
    pub fn live(&self) -> bool {
        self.state != DEAD
    }
}

/// The tree of exact paths of a growing byte prefix. Node 0 is the root (empty path).
#[derive(Debug, Clone)]
pub struct CoverTree {
    canonical: bool,
    prefix: Vec<u8>,
    nodes: Vec<PathNode>,
    active: Vec<u32>,
}

impl CoverTree {
    pub fn new(index: &ByteIndex, canonical: bool) -> Result<Self> {
        index.canon_for(canonical)?;
        let root = PathNode {
            token: ROOT,
            parent: ROOT,
            start: 0,
            end: 0,
            expanded: false,
            state: 0,
            has_child: false,
        };
        Ok(CoverTree {
            canonical,
            prefix: Vec::new(),
            nodes: vec![root],
            active: vec![0],
        })
    }

    pub fn canonical(&self) -> bool {
        self.canonical
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    pub fn nodes(&self) -> &[PathNode] {
        &self.nodes
    }

    pub fn node(&self, n: u32) -> Result<&PathNode> {
        let i = check_index("node", n as i64, self.nodes.len())?;
        Ok(&self.nodes[i])
    }

    /// Nodes that can still contribute: live state, or unexpanded with children to come.
    pub fn active(&self) -> &[u32] {
        &self.active
    }

    fn keep(n: &PathNode) -> bool {
        n.state != DEAD || (!n.expanded && n.has_child)
    }

    /// Token of the node's parent (ROOT for the root and its children).
    fn parent_token(&self, node: &PathNode) -> u32 {
        if node.parent == ROOT {
            ROOT
        } else {
            self.nodes[node.parent as usize].token
        }
    }

    fn add_child(&mut self, parent: u32, token: u32, end: usize, state: u32) -> u32 {
        let p = &self.nodes[parent as usize];
        let node = PathNode {
            token,
            parent,
            start: p.end,
            end: end as u32,
            expanded: false,
            state,
            has_child: false,
        };
        self.nodes.push(node);
        (self.nodes.len() - 1) as u32
    }

    /// Appends one byte; returns the new exact-path nodes (ending at the new prefix end).
    pub fn push(&mut self, index: &ByteIndex, b: u8) -> Result<Vec<u32>> {
        let canon = index.canon_for(self.canonical)?;
        self.prefix.push(b);
        let pos = self.prefix.len();
        let mut created = Vec::new();
        let mut still = Vec::with_capacity(self.active.len());
        for &n in &self.active {
            let node = &mut self.nodes[n as usize];
            node.state = index.trie.child(node.state, b);
            if node.state != DEAD && !index.trie.ending_at(node.state).is_empty() && !node.expanded
            {
                node.has_child = true;
            }
            let node = *node;
            if Self::keep(&node) {
                still.push(n);
            }
            if node.expanded && node.state != DEAD {
                let pprev = self.parent_token(&node);
                for &t in index.trie.ending_at(node.state) {
                    if index.allowed_after(canon, pprev, node.token, t) {
                        created.push((n, t));
                    }
                }
            }
        }
        let mut new_ids = Vec::with_capacity(created.len());
        for (p, t) in created {
            new_ids.push(self.add_child(p, t, pos, 0));
        }
        still.extend_from_slice(&new_ids);
        self.active = still;
        Ok(new_ids)
    }

    /// Creates the children of an unexpanded node: every allowed token that is a prefix of
    /// `prefix[end..]`. Returns them (ends between `end + 1` and the prefix end).
    pub fn expand(&mut self, index: &ByteIndex, n: u32) -> Result<Vec<u32>> {
        let canon = index.canon_for(self.canonical)?;
        let i = check_index("node", n as i64, self.nodes.len())?;
        if self.nodes[i].expanded {
            return Err(CoreError::value(format!("node {n} is already expanded")));
        }
        self.nodes[i].expanded = true;
        let node = self.nodes[i];
        let start = node.end as usize;
        let pprev = self.parent_token(&node);
        let mut new_ids = Vec::new();
        for (t, len) in index.trie.prefix_tokens(&self.prefix[start..]) {
            if !index.allowed_after(canon, pprev, node.token, t) {
                continue;
            }
            let end = start + len;
            let mut state = 0u32;
            let mut has_child = false;
            for &b in &self.prefix[end..] {
                state = index.trie.child(state, b);
                if state == DEAD {
                    break;
                }
                has_child |= !index.trie.ending_at(state).is_empty();
            }
            let c = self.add_child(n, t, end, state);
            self.nodes[c as usize].has_child = has_child;
            new_ids.push(c);
        }
        let keep_self = Self::keep(&self.nodes[i]);
        self.active.retain(|&a| a != n || keep_self);
        for &c in &new_ids {
            if Self::keep(&self.nodes[c as usize]) {
                self.active.push(c);
            }
        }
        Ok(new_ids)
    }

    /// The `k` straddling extensions most likely to be needed: pairs `(node, token)` of an
    /// expanded node and an allowed token (`qs[i][token] > 0`) whose bytes start with
    /// `prefix[end..]` and run past the prefix end. Once the prefix grows through all of
    /// `token`'s bytes, `node + token` is an exact path that needs its own next-token
    /// distribution; that happens with probability (under the node's distribution) equal to
    /// the mass of every token whose bytes start with `token`'s bytes, so the score is
    /// `scales[i] * sum(qs[i][u] for u whose bytes start with bytes(token))`. Computing the
    /// best ones ahead of time, in the forward that is made anyway, is exact look-ahead: it
    /// changes which forward computes a distribution, never the distribution.
    ///
    /// Best-first over the token trie below each node (subtree masses only shrink with
    /// depth), so the work is proportional to what is visited, not to the vocabulary.
    ///
    /// Returns `(node, token, score)` by decreasing score (ties: lower node, then lower token).
    pub fn top_straddling(
        &self,
        index: &ByteIndex,
        nodes: &[u32],
        qs: &[&[f32]],
        scales: &[f64],
        k: usize,
    ) -> Result<Vec<(u32, u32, f64)>> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        if qs.len() != nodes.len() || scales.len() != nodes.len() {
            return Err(CoreError::shape(
                "qs, scales",
                format!("{} entries (= nodes)", nodes.len()),
                qs.len().min(scales.len()),
            ));
        }
        let width = index.width();
        let trie = &index.trie;
        let range_mass = |q: &[f32], d: u32| -> f64 {
            trie.range_of(d).iter().map(|&t| q[t as usize] as f64).sum()
        };
        // Heap entries: (score, Reverse(i = position in `nodes`), Reverse(trie node)).
        let mut heap: BinaryHeap<(Score, Reverse<usize>, Reverse<u32>)> = BinaryHeap::new();
        for (i, ((&n, q), &sc)) in nodes.iter().zip(qs).zip(scales).enumerate() {
            let node = self.node(n)?;
            if q.len() != width {
                return Err(CoreError::shape("qs", format!("length {width}"), q.len()));
            }
            if node.state == DEAD || sc.is_nan() || sc <= 0.0 {
                continue;
            }
            for c in trie.child_ids(node.state) {
                let m = sc * range_mass(q, c);
                if m > 0.0 {
                    heap.push((Score(m), Reverse(i), Reverse(c)));
                }
            }
        }
        let mut out: Vec<(u32, u32, f64)> = Vec::new();
        if k == 0 {
            return Ok(out);
        }
        while let Some((Score(m), Reverse(i), Reverse(d))) = heap.pop() {
            if out.len() >= k && out.last().is_some_and(|l| m < l.2) {
                break;
            }
            let (n, q, sc) = (nodes[i], qs[i], scales[i]);
            for &t in trie.ending_at(d) {
                if q[t as usize] > 0.0 {
                    out.push((n, t, m));
                }
            }
            for c in trie.child_ids(d) {
                let mc = sc * range_mass(q, c);
                if mc > 0.0 {
                    heap.push((Score(mc), Reverse(i), Reverse(c)));
                }
            }
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        out.truncate(k);
        Ok(out)
    }

    /// Which unexpanded nodes can still matter, and the exact paths below them that will need a
    /// distribution, so one forward can compute all of them at once (a prefix given in one
    /// call -- `logprob` of a text, a new prompt -- then costs one batched forward instead of
    /// one forward per token level).
    ///
    /// An exact path ending at byte `j` of the prefix `x` *matters* when `j == |x|` (its
    /// distribution gives the end-of-text mass and the next byte), or a token starts with
    /// `x[j..]` (its trie state is live: it carries covers), or an allowed token ending inside
    /// `x[j..]` leads to an exact path that matters. A path that does not matter never will:
    /// appending bytes only shortens what can follow it (a DEAD state stays DEAD, and its
    /// children are the tokens that are prefixes of `x[j..]`, all known now), so its
    /// distribution is never read and the path can be dropped without one.
    ///
    /// For every node in `nodes` (unexpanded) this walks the exact paths below it inside the
    /// prefix (allowed tokens only, with the same canonical rule as [`Self::expand`]),
    /// remembering positions (with the last two tokens in canonical mode) that lead to nothing.
    ///
    /// Returns `None` when more than `limit` rows would be listed (all-covers mode grows
    /// exponentially), else `(matters, rows)`: `matters[i]` for `nodes[i]`, and the exact paths
    /// that matter strictly below them as `(i, parent, token)` -- `parent` is -1 for a child of
    /// `nodes[i]`, else the index of an earlier row -- in depth-first order (a row after its
    /// parent).
    pub fn extension_plan(
        &self,
        index: &ByteIndex,
        nodes: &[u32],
        limit: usize,
    ) -> Result<Option<(Vec<bool>, Vec<(u32, i64, u32)>)>> {
        let canon = index.canon_for(self.canonical)?;
        let trie = &index.trie;
        let x = &self.prefix;
        let len = x.len();
        // Frame: (position, pprev, prev, row index of the path (-1: nodes[i]), steps, next,
        // rows before the path's own row).
        struct F {
            j: usize,
            pprev: u32,
            prev: u32,
            row: i64,
            steps: Vec<(u32, usize)>,
            next: usize,
            live: bool,
        }
        let frame = |j: usize, pprev: u32, prev: u32, row: i64| -> F {
            let mut steps = Vec::new();
            let mut s = 0u32;
            let mut live = true;
            for (k, &b) in x[j..].iter().enumerate() {
                s = trie.child(s, b);
                if s == DEAD {
                    live = false;
                    break;
                }
                for &t in trie.ending_at(s) {
                    if index.allowed_after(canon, pprev, prev, t) {
                        steps.push((t, j + k + 1));
                    }
                }
            }
            F {
                j,
                pprev,
                prev,
                row,
                steps,
                next: 0,
                live,
            }
        };
        let key = |j: usize, pprev: u32, prev: u32| match canon {
            Some(_) => (j, pprev, prev),
            None => (j, ROOT, ROOT),
        };
        let mut dead: HashSet<(usize, u32, u32)> = HashSet::new();
        let mut matters = Vec::with_capacity(nodes.len());
        let mut rows: Vec<(u32, i64, u32)> = Vec::new();
        for (i, &n) in nodes.iter().enumerate() {
            let node = *self.node(n)?;
            if node.expanded {
                return Err(CoreError::value(format!("node {n} is already expanded")));
            }
            let pprev = self.parent_token(&node);
            let start_rows = rows.len();
            // A frame "matters" once it is live, ends at the prefix end, or a child row stayed.
            let mut stack = vec![frame(node.end as usize, pprev, node.token, -1)];
            let mut kept: Vec<bool> = vec![false];
            while let Some(top) = stack.last_mut() {
                if let Some(&(t, end)) = top.steps.get(top.next) {
                    top.next += 1;
                    if dead.contains(&key(end, top.prev, t)) {
                        continue;
                    }
                    let (prev, parent) = (top.prev, top.row);
                    rows.push((i as u32, parent, t));
                    if rows.len() > limit {
                        return Ok(None);
                    }
                    stack.push(frame(end, prev, t, (rows.len() - 1) as i64));
                    kept.push(false);
                    continue;
                }
                let f = stack.pop().expect("non-empty stack");
                let child_kept = kept.pop().expect("one flag per frame");
                let m = f.j == len || f.live || child_kept;
                if !m {
                    dead.insert(key(f.j, f.pprev, f.prev));
                    if f.row >= 0 {
                        rows.truncate(f.row as usize);
                    }
                } else if let Some(k) = kept.last_mut() {
                    *k = true;
                }
                if stack.is_empty() {
                    matters.push(m);
                    if !m {
                        rows.truncate(start_rows);
                    }
                }
            }
        }
        Ok(Some((matters, rows)))
    }

    /// Token path of node `n` from the root (root excluded).
    pub fn path(&self, n: u32) -> Result<Vec<u32>> {
        let mut i = check_index("node", n as i64, self.nodes.len())? as u32;
        let mut out = Vec::new();
        while i != 0 {
            let node = &self.nodes[i as usize];
            out.push(node.token);
            i = node.parent;
        }
        out.reverse();
        Ok(out)
    }
}

/// A finite non-negative f64 with a total order (heap key).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Score(f64);

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Score {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// Covers stored flat: cover `i` is `tokens[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Covers {
    pub tokens: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl Covers {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, i: usize) -> &[u32] {
        &self.tokens[self.offsets[i]..self.offsets[i + 1]]
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// One `Vec` per cover.
    pub fn to_vecs(&self) -> Vec<Vec<u32>> {
        self.iter().map(|c| c.to_vec()).collect()
    }

    fn push(&mut self, path: &[u32], last: u32) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.tokens.extend_from_slice(path);
        self.tokens.push(last);
        self.offsets.push(self.tokens.len());
    }
}

/// One level of the depth-first walk of [`enumerate_covers`]: an exact path that reached byte
/// `key.0` of the data.
struct Frame {
    /// `(position, pprev, prev)`; `(position, ROOT, ROOT)` outside canonical mode.
    key: (usize, u32, u32),
    /// Tokens that end inside the rest of the data and may follow, with the byte where each
    /// ends; `steps[next..]` are not tried yet.
    steps: Vec<(u32, usize)>,
    next: usize,
    /// Trie node of the whole rest of the data (its tokens end a cover), or DEAD.
    last: u32,
    /// Covers found before the frame was entered (none since: a dead end).
    found_before: usize,
}

/// Every cover of `data` in the given mode, flat, in depth-first order (shorter first token
/// first; one empty cover for empty `data`). Errors when there are more than `limit`.
///
/// The walk keeps an explicit stack (no recursion, whatever the length of `data`) and
/// remembers dead ends: a position with its last two tokens (just the position outside
/// canonical mode, where the context does not matter) that yielded no cover is never walked
/// again, so the work stays polynomial in `len(data)` and the size of the output even when
/// the exact paths are exponentially many.
pub fn enumerate_covers(
    index: &ByteIndex,
    data: &[u8],
    canonical: bool,
    limit: usize,
) -> Result<Covers> {
    let canon = index.canon_for(canonical)?;
    let mut out = Covers {
        tokens: Vec::new(),
        offsets: vec![0],
    };
    if data.is_empty() {
        out.offsets.push(0);
        return Ok(out);
    }
    let mut dead: HashSet<(usize, u32, u32)> = HashSet::new();
    let mut path: Vec<u32> = Vec::new();
    let mut stack = vec![enter(index, canon, data, 0, &path, out.len())];
    while let Some(top) = stack.last_mut() {
        if let Some(&(t, end)) = top.steps.get(top.next) {
            top.next += 1;
            path.push(t);
            if dead.contains(&frame_key(canon, end, &path)) {
                path.pop();
            } else {
                stack.push(enter(index, canon, data, end, &path, out.len()));
            }
            continue;
        }
        let Some(frame) = stack.pop() else { break };
        if frame.last != DEAD {
            let (pprev, prev) = last_two(&path);
            for &t in index.trie.range_of(frame.last) {
                if index.allowed_after(canon, pprev, prev, t) {
                    if out.len() >= limit {
                        return Err(CoreError::value(format!("more than {limit} covers")));
                    }
                    out.push(&path, t);
                }
            }
        }
        if out.len() == frame.found_before {
            dead.insert(frame.key);
        }
        path.pop();
    }
    Ok(out)
}

/// The last two tokens of a path (ROOT where it is shorter).
fn last_two(path: &[u32]) -> (u32, u32) {
    let at = |k: usize| {
        if path.len() > k {
            path[path.len() - 1 - k]
        } else {
            ROOT
        }
    };
    (at(1), at(0))
}

/// The dead-end key of the exact path `path` at byte `j`: the walk below it depends on `j`
/// and, in canonical mode, on the path's last two tokens.
fn frame_key(canon: Option<&Canon>, j: usize, path: &[u32]) -> (usize, u32, u32) {
    match canon {
        Some(_) => {
            let (pprev, prev) = last_two(path);
            (j, pprev, prev)
        }
        None => (j, ROOT, ROOT),
    }
}

/// The frame of the exact path `path`, which reached byte `j` of `data`.
fn enter(
    index: &ByteIndex,
    canon: Option<&Canon>,
    data: &[u8],
    j: usize,
    path: &[u32],
    found_before: usize,
) -> Frame {
    let (pprev, prev) = last_two(path);
    let key = frame_key(canon, j, path);
    let trie = &index.trie;
    let mut steps = Vec::new();
    let mut last = DEAD;
    let mut n = 0u32;
    for (k, &b) in data[j..].iter().enumerate() {
        n = trie.child(n, b);
        if n == DEAD {
            break;
        }
        let end = j + k + 1;
        if end == data.len() {
            last = n;
            break;
        }
        for &t in trie.ending_at(n) {
            if index.allowed_after(canon, pprev, prev, t) {
                steps.push((t, end));
            }
        }
    }
    Frame {
        key,
        steps,
        next: 0,
        last,
        found_before,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ByteIndex {
        let toks: Vec<Vec<u8>> = ["a", "b", "ab", "ba", "abb", "", "<eos>"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let mut toks = toks;
        toks[6] = Vec::new();
        let special = vec![false, false, false, false, false, false, true];
        ByteIndex::new(toks, special, 9, None).unwrap()
    }

    fn decode(idx: &ByteIndex, c: &[u32]) -> Vec<u8> {
        c.iter()
            .flat_map(|&t| idx.trie.token_bytes(t).to_vec())
            .collect()
    }

    #[test]
    fn covers_of_ab() {
        let idx = index();
        let mut cs = enumerate_covers(&idx, b"ab", false, 1000)
            .unwrap()
            .to_vecs();
        cs.sort();
        // a|b, a|ba, ab, abb
        assert_eq!(cs, vec![vec![0, 1], vec![0, 3], vec![2], vec![4]]);
        assert_eq!(
            enumerate_covers(&idx, b"", false, 10).unwrap().to_vecs(),
            vec![Vec::<u32>::new()]
        );
        assert!(enumerate_covers(&idx, b"ab", false, 2).is_err());
        assert!(enumerate_covers(&idx, b"ab", true, 10).is_err());
    }

    #[test]
    fn long_data_walks_without_recursion() {
        // One-byte tokens and 30,000 bytes: a recursive walk overflowed the stack here.
        let idx =
            ByteIndex::new(vec![b"a".to_vec(), b"b".to_vec()], vec![false; 2], 2, None).unwrap();
        let data = vec![b'a'; 30_000];
        let cs = enumerate_covers(&idx, &data, false, 10).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(cs.get(0).len(), 30_000);
        // "a" and "aa": Fibonacci-many covers, refused past the limit.
        let idx =
            ByteIndex::new(vec![b"a".to_vec(), b"aa".to_vec()], vec![false; 2], 2, None).unwrap();
        assert!(enumerate_covers(&idx, &data, false, 10).is_err());
        // Exponentially many exact paths, none of which reaches the end: dead ends are
        // remembered, so this returns at once with no cover.
        let mut dead_end = vec![b'a'; 30_000];
        dead_end.push(b'b');
        let idx = ByteIndex::new(
            vec![b"a".to_vec(), b"aa".to_vec(), b"c".to_vec()],
            vec![false; 3],
            3,
            None,
        )
        .unwrap();
        assert!(enumerate_covers(&idx, &dead_end, false, 10)
            .unwrap()
            .is_empty());
    }

    /// Covers from the incremental tree (every node expanded) equal the explicit enumeration.
    fn tree_covers(idx: &ByteIndex, data: &[u8]) -> Vec<Vec<u32>> {
        let mut tree = CoverTree::new(idx, false).unwrap();
        tree.expand(idx, 0).unwrap();
        for &b in data {
            let new = tree.push(idx, b).unwrap();
            for n in new {
                tree.expand(idx, n).unwrap();
            }
        }
        let mut out = Vec::new();
        for (i, node) in tree.nodes().iter().enumerate() {
            if node.end as usize >= data.len() || node.state == DEAD {
                continue;
            }
            let base = tree.path(i as u32).unwrap();
            for &t in idx.trie.range_of(node.state) {
                let mut c = base.clone();
                c.push(t);
                out.push(c);
            }
        }
        out.sort();
        out
    }

    /// Look-ahead candidates: brute force over (node, token) pairs of the expanded live nodes.
    fn straddling_brute(
        tree: &CoverTree,
        idx: &ByteIndex,
        nodes: &[u32],
        qs: &[Vec<f32>],
        scales: &[f64],
        k: usize,
    ) -> Vec<(u32, u32, f64)> {
        let p = tree.prefix();
        let mut all = Vec::new();
        for ((&n, q), &sc) in nodes.iter().zip(qs).zip(scales) {
            let rest = &p[tree.node(n).unwrap().end as usize..];
            for t in 0..idx.n_tokens() as u32 {
                let tb = idx.trie.token_bytes(t);
                if idx.is_special(t)
                    || tb.len() <= rest.len()
                    || !tb.starts_with(rest)
                    || q[t as usize].is_nan()
                    || q[t as usize] <= 0.0
                {
                    continue;
                }
                let mass: f64 = (0..idx.n_tokens() as u32)
                    .filter(|&u| !idx.is_special(u) && idx.trie.token_bytes(u).starts_with(tb))
                    .map(|u| q[u as usize] as f64)
                    .sum();
                all.push((n, t, sc * mass));
            }
        }
        all.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        all.truncate(k);
        all
    }

    /// Brute force of [`CoverTree::extension_plan`] from the root: every exact path of `data`
    /// (tokens decoding to a prefix of it) that has an exact extension (itself included)
    /// ending at the end of `data` or followed by a token starting with the rest.
    fn mattering_paths(idx: &ByteIndex, data: &[u8]) -> Vec<Vec<u32>> {
        fn walk(
            idx: &ByteIndex,
            data: &[u8],
            j: usize,
            path: &mut Vec<u32>,
            out: &mut Vec<Vec<u32>>,
        ) -> bool {
            let rest = &data[j..];
            let mut m = j == data.len()
                || (0..idx.n_tokens() as u32).any(|t| {
                    let tb = idx.trie.token_bytes(t);
                    !tb.is_empty() && tb.starts_with(rest)
                });
            let at = out.len();
            for t in 0..idx.n_tokens() as u32 {
                let tb = idx.trie.token_bytes(t);
                if tb.is_empty() || !rest.starts_with(tb) {
                    continue;
                }
                path.push(t);
                m |= walk(idx, data, j + tb.len(), path, out);
                path.pop();
            }
            if m {
                out.insert(at, path.clone());
            } else {
                out.truncate(at);
            }
            m
        }
        let mut out = Vec::new();
        walk(idx, data, 0, &mut Vec::new(), &mut out);
        out.sort();
        out
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn extension_plan_is_the_mattering_paths(data in prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..9)) {
            let idx = index();
            let mut tree = CoverTree::new(&idx, false).unwrap();
            for &b in &data {
                tree.push(&idx, b).unwrap();
            }
            let (matters, rows) = tree.extension_plan(&idx, &[0], 100_000).unwrap().unwrap();
            let mut paths: Vec<Vec<u32>> = Vec::new();
            for (k, &(i, parent, t)) in rows.iter().enumerate() {
                prop_assert_eq!(i, 0);
                prop_assert!(parent < k as i64);
                let mut p = if parent < 0 { Vec::new() } else { paths[parent as usize].clone() };
                p.push(t);
                paths.push(p);
            }
            let mut want = mattering_paths(&idx, &data);
            prop_assert_eq!(matters[0], !want.is_empty());
            if !want.is_empty() {
                want.remove(0); // the empty path: the node itself
            }
            let mut got = paths.clone();
            got.sort();
            prop_assert_eq!(got, want);
            // Too many rows: refused, never truncated.
            if !rows.is_empty() {
                prop_assert!(tree.extension_plan(&idx, &[0], rows.len() - 1).unwrap().is_none());
            }
        }
    }

    proptest! {
        #[test]
        fn covers_reproduce_bytes(data in prop::collection::vec(prop::sample::select(vec![b'a', b'b']), 0..7)) {
            let idx = index();
            let cs = enumerate_covers(&idx, &data, false, 100_000).unwrap().to_vecs();
            for c in &cs {
                let d = decode(&idx, c);
                prop_assert!(d.starts_with(&data));
                if !c.is_empty() {
                    let head = decode(&idx, &c[..c.len() - 1]);
                    prop_assert!(head.len() < data.len() && data.starts_with(&head));
                }
            }
            // Look-ahead candidates equal the brute force for random distributions and k.
            let mut tree = CoverTree::new(&idx, false).unwrap();
            tree.expand(&idx, 0).unwrap();
            for &b in &data {
                for n in tree.push(&idx, b).unwrap() {
                    tree.expand(&idx, n).unwrap();
                }
            }
            let nodes: Vec<u32> = tree.active().iter().copied().filter(|&n| tree.node(n).unwrap().expanded).collect();
            // Pseudo-random distributions with zeros (zeros exercise the "allowed" filter).
            let q_of = |n: u32, t: u32| if (n * 7 + t * 3).is_multiple_of(5) { 0.0 } else { 1.0 / (1.0 + (n * 31 + t * 17) as f32).sqrt() };
            let qs: Vec<Vec<f32>> = nodes.iter().map(|&n| (0..9u32).map(|t| q_of(n, t)).collect()).collect();
            let scales: Vec<f64> = nodes.iter().map(|&n| 1.0 / (1.0 + n as f64)).collect();
            let views: Vec<&[f32]> = qs.iter().map(|q| q.as_slice()).collect();
            for k in [0usize, 1, 3, 50] {
                let got = tree.top_straddling(&idx, &nodes, &views, &scales, k).unwrap();
                let want = straddling_brute(&tree, &idx, &nodes, &qs, &scales, k);
                prop_assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    prop_assert_eq!((g.0, g.1), (w.0, w.1));
                    prop_assert!((g.2 - w.2).abs() <= 1e-12 * w.2.max(1.0));
                }
            }
            if !data.is_empty() {
                let mut sorted = cs.clone();
                sorted.sort();
                prop_assert_eq!(tree_covers(&idx, &data), sorted);
            }
        }
    }
}
