//! Suffix drafting: a depth-capped suffix trie with occurrence counts over token ids, and a
//! bounded cross-request cache of earlier outputs built on it.
//!
//! [`SuffixTrie`] stores every substring of its documents of at most `max_depth` tokens as a
//! path from the root; a node's `count` is the number of places where its substring occurs.
//! Appending a token to a document costs O(`max_depth`) (the document's *active* nodes, the
//! suffixes still shorter than `max_depth`, each grow by one child), so inserting a document
//! of length L is O(L * max_depth) = O(L) for a fixed depth. Removing a document walks the
//! same paths and decrements the counts (nodes reaching 0 are freed and their slots reused).
//!
//! [`SuffixTrie::speculate`] takes the tail of the current context, finds its longest suffix
//! (at most `max_match` tokens) that occurred before *with a continuation*, and returns the
//! continuation subtree best first by path probability, where the probability of a child is
//! `count(child) / sum of the counts of its siblings` (the empirical next-token distribution
//! after that substring).
//!
//! [`SuffixCache`] keeps whole documents (earlier requests' outputs) in one trie with a memory
//! cap (`max_bytes`, counting nodes, the child index and the stored tokens) and an optional
//! document cap; when a new document would not fit, the oldest documents are evicted first,
//! and a document too large for the cap on its own keeps as many of its last tokens as fit.
//! A cache made for one vocabulary (`vocab_size`) holds only ids below it, whatever it is
//! given or loads. It serialises to bytes (the documents; the trie is rebuilt on load).

use std::collections::{BinaryHeap, HashMap, VecDeque};

use crate::error::{CoreError, Result};
use crate::limits::{check_size, MAX_VOCAB};

/// Deepest substring a trie may store (match + continuation).
pub const MAX_SUFFIX_DEPTH: usize = 256;
const NONE: u32 = u32::MAX;
/// Bytes of one child-index slot: key, value and the hash table's control byte.
const MAP_ENTRY_BYTES: usize = std::mem::size_of::<(u64, u32)>() + 1;
/// Upper bound of the bytes one node costs in a trie reserved for it: its slot, at most four
/// child-index slots (the table is kept at most half full, and its load factor) and a
/// free-list entry.
const NODE_BYTES_RESERVED: usize = 20 + 4 * MAP_ENTRY_BYTES + 4;

#[derive(Debug, Clone, Copy)]
struct Node {
    token: u32,
    parent: u32,
    count: u32,
    depth: u16,
    first_child: u32,
    next_sibling: u32,
}

/// A draft from [`SuffixTrie::speculate`]: nodes best first (parents before children).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SuffixDraft {
    /// Token of each node. [n]
    pub tokens: Vec<i64>,
    /// Parent of each node, -1 for a child of the root (the context's last token). [n]
    pub parents: Vec<i64>,
    /// `P(token | path so far)`: the node's count over the sum of its siblings' counts. [n]
    pub probs: Vec<f64>,
    /// Occurrences of the node's parent context that continued (the denominator). [n]
    pub support: Vec<i64>,
    /// Length of the matched context suffix (0: no match, no nodes).
    pub match_len: usize,
}

/// A depth-capped suffix trie with occurrence counts; see the module documentation.
#[derive(Debug, Clone)]
pub struct SuffixTrie {
    max_depth: usize,
    nodes: Vec<Node>,
    free: Vec<u32>,
    children: HashMap<u64, u32>,
    live: usize,
}

/// The growing end of one document in a trie: the nodes of its suffixes that can still grow.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    active: Vec<u32>,
    len: usize,
}

impl Cursor {
    /// Tokens appended through this cursor.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn key(parent: u32, token: u32) -> u64 {
    (u64::from(parent) << 32) | u64::from(token)
}

/// Checks a token id (`0 <= t < 2^24`).
pub fn check_token(what: &'static str, t: i64) -> Result<u32> {
    check_token_below(what, t, MAX_VOCAB)
}

/// Checks a token id against a vocabulary (`0 <= t < bound`, `bound <= 2^24`).
pub fn check_token_below(what: &'static str, t: i64, bound: usize) -> Result<u32> {
    if t < 0 || t as u64 >= bound as u64 {
        return Err(CoreError::Index {
            what,
            index: t,
            bound,
        });
    }
    Ok(t as u32)
}

/// Most nodes one document of `n` tokens can add to a trie of depth `depth`: token `i` (from 0)
/// adds at most `min(i + 1, depth)` (one per suffix still growing).
pub fn new_nodes_bound(n: usize, depth: usize) -> usize {
    let ramp = n.min(depth);
    ramp * (ramp + 1) / 2 + (n - ramp) * depth
}

impl SuffixTrie {
    /// An empty trie storing substrings of at most `max_depth` tokens (1..=256).
    pub fn new(max_depth: usize) -> Result<Self> {
        if max_depth == 0 || max_depth > MAX_SUFFIX_DEPTH {
            return Err(CoreError::value(format!(
                "max_depth: expected an int in [1, {MAX_SUFFIX_DEPTH}], got {max_depth}"
            )));
        }
        let root = Node {
            token: NONE,
            parent: NONE,
            count: 0,
            depth: 0,
            first_child: NONE,
            next_sibling: NONE,
        };
        Ok(SuffixTrie {
            max_depth,
            nodes: vec![root],
            free: Vec::new(),
            children: HashMap::new(),
            live: 1,
        })
    }

    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    /// Live nodes, the root included.
    pub fn num_nodes(&self) -> usize {
        self.live
    }

    /// Bytes held: node slots (live and free), the child index and the free list.
    pub fn memory_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.children.capacity() * MAP_ENTRY_BYTES
            + self.free.capacity() * 4
    }

    fn child(&self, parent: u32, token: u32) -> Option<u32> {
        self.children.get(&key(parent, token)).copied()
    }

    fn child_or_insert(&mut self, parent: u32, token: u32) -> u32 {
        if let Some(c) = self.child(parent, token) {
            return c;
        }
        let p = &self.nodes[parent as usize];
        let node = Node {
            token,
            parent,
            count: 0,
            depth: p.depth + 1,
            first_child: NONE,
            next_sibling: p.first_child,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = node;
                id
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        self.nodes[parent as usize].first_child = id;
        self.children.insert(key(parent, token), id);
        self.live += 1;
        id
    }

    /// Appends `tokens` to the document whose end `cursor` tracks (a fresh cursor starts a
    /// new document). O(len(tokens) * max_depth).
    pub fn extend(&mut self, cursor: &mut Cursor, tokens: &[u32]) {
        let mut next = Vec::with_capacity(self.max_depth);
        for &t in tokens {
            next.clear();
            self.nodes[0].count += 1;
            // The new one-token suffix, then every active suffix grown by t.
            for a in std::iter::once(0u32).chain(cursor.active.iter().copied()) {
                let c = self.child_or_insert(a, t);
                self.nodes[c as usize].count += 1;
                if (self.nodes[c as usize].depth as usize) < self.max_depth {
                    next.push(c);
                }
            }
            std::mem::swap(&mut cursor.active, &mut next);
            cursor.len += 1;
        }
    }

    /// Bytes [`memory_bytes`](Self::memory_bytes) can reach after `add` more nodes, once
    /// [`reserve`](Self::reserve) made room for them: node slots grow exactly, the child index
    /// (a hash table) to less than twice the larger of its need and its old capacity once the
    /// need passes half of it.
    pub fn bytes_after(&self, add: usize) -> usize {
        let slots = self.nodes.len() + add.saturating_sub(self.free.len());
        let entries = self.live - 1 + add;
        let cap = self.children.capacity();
        // A reserve may double the table whenever the need passes half its capacity
        // (deleted entries can use up the rest).
        let map = if 2 * entries <= cap { cap } else { 2 * entries.max(cap + 1) + 8 };
        self.nodes.capacity().max(slots) * std::mem::size_of::<Node>()
            + map * MAP_ENTRY_BYTES
            + self.free.capacity() * 4
    }

    /// Makes room for `add` more nodes up front (exact for the node slots).
    pub fn reserve(&mut self, add: usize) {
        let slots = add.saturating_sub(self.free.len());
        self.nodes.reserve_exact(slots);
        self.children.reserve(add);
    }

    /// Room for `total` nodes in all: node slots, child index and free list (a fresh trie).
    fn reserve_total(&mut self, total: usize) {
        self.nodes.reserve_exact(total.saturating_sub(self.nodes.len()));
        self.children.reserve((2 * total).saturating_sub(self.children.len()));
        self.free.reserve_exact(total.saturating_sub(self.free.len()));
    }

    fn unlink(&mut self, id: u32) {
        let n = self.nodes[id as usize];
        let p = n.parent as usize;
        if self.nodes[p].first_child == id {
            self.nodes[p].first_child = n.next_sibling;
        } else {
            let mut c = self.nodes[p].first_child;
            while c != NONE {
                let nx = self.nodes[c as usize].next_sibling;
                if nx == id {
                    self.nodes[c as usize].next_sibling = n.next_sibling;
                    break;
                }
                c = nx;
            }
        }
        self.children.remove(&key(n.parent, n.token));
        self.free.push(id);
        self.live -= 1;
    }

    /// Removes one document (exactly the tokens once given to [`extend`](Self::extend) with
    /// one cursor): every count it added is taken back; nodes reaching 0 are freed.
    pub fn remove(&mut self, tokens: &[u32]) -> Result<()> {
        let mut path = Vec::with_capacity(self.max_depth);
        for s in 0..tokens.len() {
            path.clear();
            let mut node = 0u32;
            for &t in &tokens[s..tokens.len().min(s + self.max_depth)] {
                node = self.child(node, t).ok_or_else(|| {
                    CoreError::value("remove: the document is not in the trie")
                })?;
                path.push(node);
            }
            self.nodes[0].count = self.nodes[0].count.saturating_sub(1);
            // Deepest first, so a node is freed only after its children.
            for &id in path.iter().rev() {
                let c = &mut self.nodes[id as usize].count;
                *c = c.saturating_sub(1);
                if *c == 0 {
                    self.unlink(id);
                }
            }
        }
        Ok(())
    }

    /// The node of `path` (from the root), if stored.
    fn walk(&self, path: &[u32]) -> Option<u32> {
        let mut node = 0u32;
        for &t in path {
            node = self.child(node, t)?;
        }
        Some(node)
    }

    /// The longest suffix of `context` (at most `max_match` tokens, shorter than
    /// `max_depth`) that is stored with at least one continuation: `(node, length)`.
    pub fn longest_match(&self, context: &[u32], max_match: usize) -> Option<(u32, usize)> {
        let top = max_match.min(context.len()).min(self.max_depth - 1);
        (1..=top).rev().find_map(|m| {
            let node = self.walk(&context[context.len() - m..])?;
            (self.nodes[node as usize].first_child != NONE).then_some((node, m))
        })
    }

    fn child_total(&self, node: u32) -> u64 {
        let mut total = 0u64;
        let mut c = self.nodes[node as usize].first_child;
        while c != NONE {
            total += u64::from(self.nodes[c as usize].count);
            c = self.nodes[c as usize].next_sibling;
        }
        total
    }

    /// The continuation tree of the longest match of `context` (see the module docs): at
    /// most `max_nodes` nodes, best first by path probability (ties: older node first), each
    /// with path probability >= `min_prob`. No match: an empty draft.
    pub fn speculate(
        &self,
        context: &[u32],
        max_match: usize,
        max_nodes: usize,
        min_prob: f64,
    ) -> SuffixDraft {
        let mut out = SuffixDraft::default();
        let Some((start, m)) = self.longest_match(context, max_match) else {
            return out;
        };
        out.match_len = m;
        // (path prob, tie-break seq, trie node, out parent, cond prob, support)
        #[derive(PartialEq)]
        struct Item(f64, u64, u32, i64, f64, u64);
        impl Eq for Item {}
        impl Ord for Item {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&o.0).then_with(|| o.1.cmp(&self.1))
            }
        }
        impl PartialOrd for Item {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        let mut heap = BinaryHeap::new();
        let mut seq = 0u64;
        let push_children = |heap: &mut BinaryHeap<Item>, seq: &mut u64, node: u32, prob: f64, parent: i64| {
            let total = self.child_total(node);
            if total == 0 {
                return;
            }
            let mut c = self.nodes[node as usize].first_child;
            while c != NONE {
                let q = f64::from(self.nodes[c as usize].count) / total as f64;
                heap.push(Item(prob * q, *seq, c, parent, q, total));
                *seq += 1;
                c = self.nodes[c as usize].next_sibling;
            }
        };
        push_children(&mut heap, &mut seq, start, 1.0, -1);
        while let Some(Item(p, _, node, parent, q, support)) = heap.pop() {
            if out.tokens.len() >= max_nodes || p < min_prob {
                break;
            }
            let idx = out.tokens.len() as i64;
            out.tokens.push(i64::from(self.nodes[node as usize].token));
            out.parents.push(parent);
            out.probs.push(q);
            out.support.push(support as i64);
            push_children(&mut heap, &mut seq, node, p, idx);
        }
        out
    }
}

/// Settings of a [`SuffixCache`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    /// Longest substring stored (match + continuation).
    pub max_depth: usize,
    /// Memory cap in bytes (trie, child index, stored documents).
    pub max_bytes: usize,
    /// Most documents kept (None: only the memory cap).
    pub max_docs: Option<usize>,
    /// The vocabulary the ids must lie in (None: any id below 2^24).
    pub vocab_size: Option<usize>,
}

impl CacheConfig {
    /// The bound of the ids the cache accepts.
    pub fn id_bound(&self) -> usize {
        self.vocab_size.unwrap_or(MAX_VOCAB)
    }
}

/// Earlier requests' outputs in one suffix trie, bounded; oldest evicted first.
#[derive(Debug, Clone)]
pub struct SuffixCache {
    cfg: CacheConfig,
    trie: SuffixTrie,
    docs: VecDeque<Vec<u32>>,
    doc_tokens: usize,
    evicted: u64,
}

const MAGIC: &[u8; 8] = b"TLSUFFX\0";
const VERSION: u32 = 1;
/// Smallest `max_bytes` a cache accepts (room for an empty trie).
pub const MIN_CACHE_BYTES: usize = 1 << 12;

impl SuffixCache {
    pub fn new(cfg: CacheConfig) -> Result<Self> {
        if cfg.max_bytes < MIN_CACHE_BYTES {
            return Err(CoreError::value(format!(
                "max_bytes: expected at least {MIN_CACHE_BYTES}, got {}",
                cfg.max_bytes
            )));
        }
        if cfg.max_docs == Some(0) {
            return Err(CoreError::value("max_requests: expected an int >= 1 or None, got 0"));
        }
        if let Some(v) = cfg.vocab_size {
            check_size("vocab_size", v as u64, MAX_VOCAB)?;
        }
        Ok(SuffixCache {
            trie: SuffixTrie::new(cfg.max_depth)?,
            cfg,
            docs: VecDeque::new(),
            doc_tokens: 0,
            evicted: 0,
        })
    }

    pub fn config(&self) -> CacheConfig {
        self.cfg
    }

    pub fn trie(&self) -> &SuffixTrie {
        &self.trie
    }

    pub fn num_docs(&self) -> usize {
        self.docs.len()
    }

    pub fn num_tokens(&self) -> usize {
        self.doc_tokens
    }

    /// Documents evicted since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The largest id held (None: empty), e.g. to check the cache against a model's vocabulary.
    pub fn max_token(&self) -> Option<u32> {
        self.docs.iter().filter_map(|d| d.iter().copied().max()).max()
    }

    /// Bytes held: the trie's and the stored documents'.
    pub fn memory_bytes(&self) -> usize {
        self.trie.memory_bytes()
            + self.docs.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.docs.iter().map(|d| d.capacity() * 4).sum::<usize>()
    }

    fn docs_bytes_after(&self, n: usize) -> usize {
        let slots = self.docs.capacity().max(2 * (self.docs.len() + 1));
        slots * std::mem::size_of::<Vec<u32>>()
            + self.docs.iter().map(|d| d.capacity() * 4).sum::<usize>()
            + n * 4
    }

    /// Bytes the cache can hold once a document of `n` tokens is inserted (at most
    /// [`new_nodes_bound`] new nodes).
    fn bytes_after(&self, n: usize) -> usize {
        self.trie.bytes_after(new_nodes_bound(n, self.cfg.max_depth)) + self.docs_bytes_after(n)
    }

    fn evict_oldest(&mut self) -> Result<()> {
        if let Some(d) = self.docs.pop_front() {
            self.trie.remove(&d)?;
            self.doc_tokens -= d.len();
            self.evicted += 1;
        }
        Ok(())
    }

    /// Most nodes a compacted trie may reserve next to the documents and one more of `n`
    /// tokens.
    fn target_nodes(&self, n: usize) -> usize {
        let avail = self.cfg.max_bytes.saturating_sub(self.docs_bytes_after(n) + 16 * MAP_ENTRY_BYTES);
        avail / NODE_BYTES_RESERVED
    }

    /// Rebuilds the trie from the kept documents in one reserved for `total` nodes (drops the
    /// slack that evicted nodes leave in the node slots and the child index; later inserts
    /// then grow nothing until `total` nodes are live).
    fn compact(&mut self, total: usize) {
        let mut trie = SuffixTrie::new(self.cfg.max_depth).expect("depth checked at creation");
        trie.reserve_total(total.max(self.trie.num_nodes()));
        for d in &self.docs {
            trie.extend(&mut Cursor::default(), d);
        }
        self.trie = trie;
        let mut docs = VecDeque::with_capacity(self.docs.len() + 1);
        docs.extend(self.docs.drain(..));
        self.docs = docs;
    }

    fn fits(&self, n: usize) -> bool {
        self.bytes_after(n) <= self.cfg.max_bytes && self.cfg.max_docs.is_none_or(|m| self.docs.len() < m)
    }

    /// Inserts one document (as many of its last tokens as fit when it alone could exceed the
    /// cap), evicting the oldest documents first so that [`memory_bytes`](Self::memory_bytes)
    /// stays within `max_bytes`. O(len * max_depth) plus the evictions; when the cache first
    /// fills up the trie is rebuilt once, reserved for as many nodes as the cap allows. Every
    /// id is checked (against `vocab_size` when set) before anything changes.
    pub fn insert(&mut self, tokens: &[i64]) -> Result<()> {
        let bound = self.cfg.id_bound();
        let mut doc = Vec::with_capacity(tokens.len());
        for &t in tokens {
            doc.push(check_token_below("tokens", t, bound)?);
        }
        let depth = self.cfg.max_depth;
        let mut compacted = false;
        while !self.fits(doc.len()) {
            let target = self.target_nodes(doc.len());
            let needed = self.trie.num_nodes() + new_nodes_bound(doc.len(), depth);
            let count_ok = self.cfg.max_docs.is_none_or(|m| self.docs.len() < m);
            if !compacted && (self.docs.is_empty() || (count_ok && needed <= target)) {
                self.compact(target);
                compacted = true;
                continue;
            }
            if self.docs.is_empty() {
                break;
            }
            self.evict_oldest()?;
        }
        // A document too large for the cap on its own keeps its last tokens: as many as fit
        // (`fits` is monotone in the length).
        let keep = if self.fits(doc.len()) {
            doc.len()
        } else {
            let (mut lo, mut hi) = (0, doc.len()); // fits(lo), !fits(hi)
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if self.fits(mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        if keep == 0 {
            return Ok(());
        }
        let doc = doc[doc.len() - keep..].to_vec();
        self.trie.reserve(new_nodes_bound(keep, depth));
        self.doc_tokens += doc.len();
        self.trie.extend(&mut Cursor::default(), &doc);
        self.docs.push_back(doc);
        Ok(())
    }

    pub fn clear(&mut self) {
        self.trie = SuffixTrie::new(self.cfg.max_depth).expect("depth checked at creation");
        self.docs = VecDeque::new();
        self.doc_tokens = 0;
    }

    /// The documents, oldest first.
    pub fn docs(&self) -> impl Iterator<Item = &[u32]> {
        self.docs.iter().map(|d| d.as_slice())
    }

    /// `MAGIC, version u32, max_depth u32, n_docs u64, then per document: len u64, tokens u32`
    /// (little endian). The caps are not stored: the loader's apply.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.doc_tokens * 4 + self.docs.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.cfg.max_depth as u32).to_le_bytes());
        out.extend_from_slice(&(self.docs.len() as u64).to_le_bytes());
        for d in &self.docs {
            out.extend_from_slice(&(d.len() as u64).to_le_bytes());
            for &t in d {
                out.extend_from_slice(&t.to_le_bytes());
            }
        }
        out
    }

    /// A cache with `cfg` holding the documents of `data` (inserted oldest first, so the caps
    /// of `cfg` apply). Bad data, an id outside `cfg`'s vocabulary included, is a `Value` error.
    pub fn from_bytes(data: &[u8], cfg: CacheConfig) -> Result<Self> {
        let bad = |why: &str| CoreError::value(format!("suffix cache bytes: {why}"));
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = data.get(pos..pos + n).ok_or_else(|| bad("truncated"))?;
            pos += n;
            Ok(s)
        };
        if take(8)? != MAGIC {
            return Err(bad("not a suffix cache (bad magic)"));
        }
        let u32_at = |s: &[u8]| u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        let u64_at = |s: &[u8]| u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        let version = u32_at(take(4)?);
        if version != VERSION {
            return Err(bad(&format!("version {version}, expected {VERSION}")));
        }
        let depth = u32_at(take(4)?) as usize;
        if depth == 0 || depth > MAX_SUFFIX_DEPTH {
            return Err(bad(&format!("max_depth {depth} out of range")));
        }
        let n = u64_at(take(8)?);
        let bound = cfg.id_bound();
        let mut docs = Vec::new();
        for _ in 0..n {
            let len = u64_at(take(8)?);
            if len > (data.len() as u64) / 4 {
                return Err(bad("a document longer than the data"));
            }
            let body = take(len as usize * 4)?;
            let mut d = Vec::with_capacity(len as usize);
            for c in body.chunks_exact(4) {
                let t = u32_at(c);
                if t as usize >= bound {
                    return Err(bad(&format!("token {t} is outside the vocabulary [0, {bound})")));
                }
                d.push(i64::from(t));
            }
            docs.push(d);
        }
        if pos != data.len() {
            return Err(bad("trailing bytes"));
        }
        let mut cache = SuffixCache::new(cfg)?;
        for d in docs {
            cache.insert(&d)?;
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests;
