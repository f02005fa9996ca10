//! A token trie over the byte strings of a vocabulary, stored as one compact node array
//! (the layout of llguidance's toktrie: breadth-first, the children of a node contiguous).
//!
//! Token ids are also kept sorted by their bytes (lexicographically), so the tokens that start
//! with a given byte string form one contiguous range `sorted[lo..hi]`, and the tokens whose
//! bytes are exactly the node's path are the first `n_end` entries of that range.

use crate::error::{CoreError, Result};

/// Marks "no node" in walk states.
pub const DEAD: u32 = u32::MAX;

/// One trie node: the byte on the edge from its parent, its children
/// `nodes[first_child..first_child + n_children]` (sorted by byte), and its token range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub byte: u8,
    pub n_children: u16,
    pub first_child: u32,
    /// Tokens starting with this node's path: `sorted[lo..hi]`.
    pub lo: u32,
    pub hi: u32,
    /// The first `n_end` tokens of the range have exactly this node's path as bytes.
    pub n_end: u32,
}

/// Token trie; node 0 is the root (the empty string).
#[derive(Debug, Clone)]
pub struct TokenTrie {
    nodes: Vec<Node>,
    sorted: Vec<u32>,
    token_bytes: Vec<Vec<u8>>,
    max_len: usize,
}

impl TokenTrie {
    /// Builds the trie of every token with non-empty bytes and `include[id] == true`
    /// (`include` empty = all). Tokens with equal bytes are all kept (several ids, one string).
    pub fn new(token_bytes: Vec<Vec<u8>>, include: &[bool]) -> Result<Self> {
        if token_bytes.is_empty() {
            return Err(CoreError::value(
                "empty vocabulary: at least one token is needed",
            ));
        }
        if !include.is_empty() && include.len() != token_bytes.len() {
            return Err(CoreError::shape(
                "include",
                format!("length {} (= number of tokens)", token_bytes.len()),
                include.len(),
            ));
        }
        if token_bytes.len() >= u32::MAX as usize {
            return Err(CoreError::value("vocabulary too large"));
        }
        let mut sorted: Vec<u32> = (0..token_bytes.len() as u32)
            .filter(|&i| {
                !token_bytes[i as usize].is_empty() && (include.is_empty() || include[i as usize])
            })
            .collect();
        sorted.sort_by(|&a, &b| {
            token_bytes[a as usize]
                .cmp(&token_bytes[b as usize])
                .then(a.cmp(&b))
        });
        let max_len = sorted
            .iter()
            .map(|&t| token_bytes[t as usize].len())
            .max()
            .unwrap_or(0);
        let mut trie = TokenTrie {
            nodes: Vec::new(),
            sorted,
            token_bytes,
            max_len,
        };
        trie.build();
        Ok(trie)
    }

    fn build(&mut self) {
        let n = self.sorted.len() as u32;
        self.nodes.push(Node {
            byte: 0,
            n_children: 0,
            first_child: 0,
            lo: 0,
            hi: n,
            n_end: 0,
        });
        // Breadth-first: node index `i` at depth `d`; its children are appended contiguously.
        let mut depth_of = vec![0usize];
        let mut i = 0;
        while i < self.nodes.len() {
            let node = self.nodes[i];
            let d = depth_of[i];
            let (lo, hi) = (node.lo as usize, node.hi as usize);
            let mut pos = lo;
            while pos < hi && self.len_of(pos) == d {
                pos += 1;
            }
            let n_end = (pos - lo) as u32;
            let first_child = self.nodes.len() as u32;
            let mut n_children = 0u16;
            while pos < hi {
                let b = self.byte_at(pos, d);
                let start = pos;
                while pos < hi && self.byte_at(pos, d) == b {
                    pos += 1;
                }
                self.nodes.push(Node {
                    byte: b,
                    n_children: 0,
                    first_child: 0,
                    lo: start as u32,
                    hi: pos as u32,
                    n_end: 0,
                });
                depth_of.push(d + 1);
                n_children += 1;
            }
            let nd = &mut self.nodes[i];
            nd.n_end = n_end;
            nd.first_child = first_child;
            nd.n_children = n_children;
            i += 1;
        }
    }

    fn len_of(&self, sorted_pos: usize) -> usize {
        self.token_bytes[self.sorted[sorted_pos] as usize].len()
    }

    fn byte_at(&self, sorted_pos: usize, d: usize) -> u8 {
        self.token_bytes[self.sorted[sorted_pos] as usize][d]
    }

    pub fn n_nodes(&self) -> usize {
        self.nodes.len()
    }

    pub fn n_tokens(&self) -> usize {
        self.token_bytes.len()
    }

    /// Number of tokens in the trie (non-empty, included).
    pub fn n_trie_tokens(&self) -> usize {
        self.sorted.len()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn node(&self, n: u32) -> &Node {
        &self.nodes[n as usize]
    }

    pub fn token_bytes(&self, id: u32) -> &[u8] {
        &self.token_bytes[id as usize]
    }

    pub fn all_token_bytes(&self) -> &[Vec<u8>] {
        &self.token_bytes
    }

    /// Token ids sorted by bytes.
    pub fn sorted(&self) -> &[u32] {
        &self.sorted
    }

    /// Children of node `n`.
    pub fn children(&self, n: u32) -> &[Node] {
        let nd = &self.nodes[n as usize];
        &self.nodes[nd.first_child as usize..nd.first_child as usize + nd.n_children as usize]
    }

    /// The child of `n` along byte `b`, or [`DEAD`]. `n == DEAD` stays dead.
    pub fn child(&self, n: u32, b: u8) -> u32 {
        if n == DEAD {
            return DEAD;
        }
        let nd = &self.nodes[n as usize];
        let kids = self.children(n);
        match kids.binary_search_by(|k| k.byte.cmp(&b)) {
            Ok(i) => nd.first_child + i as u32,
            Err(_) => DEAD,
        }
    }

    /// The node whose path is `data`, or [`DEAD`].
    pub fn lookup(&self, data: &[u8]) -> u32 {
        data.iter().fold(0u32, |n, &b| self.child(n, b))
    }

    /// Tokens whose bytes are exactly the path of node `n`.
    pub fn ending_at(&self, n: u32) -> &[u32] {
        let nd = &self.nodes[n as usize];
        &self.sorted[nd.lo as usize..(nd.lo + nd.n_end) as usize]
    }

    /// Tokens whose bytes start with the path of node `n` (itself included).
    pub fn range_of(&self, n: u32) -> &[u32] {
        let nd = &self.nodes[n as usize];
        &self.sorted[nd.lo as usize..nd.hi as usize]
    }

    /// Tokens that are prefixes of `data` (non-empty), as `(token, length)` by increasing length.
    pub fn prefix_tokens(&self, data: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let mut n = 0u32;
        for (i, &b) in data.iter().enumerate() {
            n = self.child(n, b);
            if n == DEAD {
                break;
            }
            out.extend(self.ending_at(n).iter().map(|&t| (t, i + 1)));
        }
        out
    }

    /// Tokens whose bytes start with `data` (empty when none).
    pub fn tokens_with_prefix(&self, data: &[u8]) -> &[u32] {
        match self.lookup(data) {
            DEAD => &[],
            n => self.range_of(n),
        }
    }

    /// Node ids of the children of node `n`.
    pub fn child_ids(&self, n: u32) -> std::ops::Range<u32> {
        let nd = &self.nodes[n as usize];
        nd.first_child..nd.first_child + nd.n_children as u32
    }

    /// For node `n` with path p: `out[b] += scale * sum(q[t])` over tokens t whose bytes start
    /// with `p + [b]`. `q` is indexed by token id. Sums are accumulated in f64.
    pub fn child_masses(&self, n: u32, q: &[f32], scale: f64, out: &mut [f64; 256]) {
        for k in self.children(n) {
            let mut s = 0.0f64;
            for &t in &self.sorted[k.lo as usize..k.hi as usize] {
                s += q[t as usize] as f64;
            }
            out[k.byte as usize] += scale * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> TokenTrie {
        let toks: Vec<Vec<u8>> = ["a", "ab", "abc", "b", "", "ab", "ba", "c"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        TokenTrie::new(toks, &[]).unwrap()
    }

    #[test]
    fn structure() {
        let t = toy();
        // nodes: root, a, b, c, ab, ba, abc
        assert_eq!(t.n_nodes(), 7);
        assert_eq!(t.n_trie_tokens(), 7);
        assert_eq!(t.max_len(), 3);
        let ab = t.lookup(b"ab");
        let mut e = t.ending_at(ab).to_vec();
        e.sort();
        assert_eq!(e, vec![1, 5]);
        assert_eq!(t.tokens_with_prefix(b"ab").len(), 3);
        assert_eq!(t.tokens_with_prefix(b"x").len(), 0);
        assert_eq!(t.lookup(b"abd"), DEAD);
        let p: Vec<u32> = t.prefix_tokens(b"abcd").iter().map(|x| x.0).collect();
        assert_eq!(p, vec![0, 1, 5, 2]);
    }

    #[test]
    fn masses() {
        let t = toy();
        let q = [0.1f32, 0.2, 0.3, 0.05, 0.0, 0.1, 0.15, 0.1];
        let mut out = [0.0f64; 256];
        t.child_masses(0, &q, 1.0, &mut out);
        assert!((out[b'a' as usize] - 0.7).abs() < 1e-6);
        assert!((out[b'b' as usize] - 0.2).abs() < 1e-6);
        let mut out = [0.0f64; 256];
        t.child_masses(t.lookup(b"ab"), &q, 2.0, &mut out);
        assert!((out[b'c' as usize] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn bad_input() {
        assert!(TokenTrie::new(vec![], &[]).is_err());
        assert!(TokenTrie::new(vec![b"a".to_vec()], &[true, false]).is_err());
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranges_match_prefix_scan(toks in prop::collection::vec(prop::collection::vec(0u8..4, 0..5), 1..30),
                                    probe in prop::collection::vec(0u8..4, 0..4)) {
            let t = TokenTrie::new(toks.clone(), &[]).unwrap();
            let mut got: Vec<u32> = t.tokens_with_prefix(&probe).to_vec();
            got.sort();
            let want: Vec<u32> = (0..toks.len() as u32)
                .filter(|&i| !toks[i as usize].is_empty() && toks[i as usize].starts_with(&probe))
                .collect();
            if probe.is_empty() { prop_assert_eq!(got, want); } else { prop_assert_eq!(got, want); }
            let mut pre: Vec<u32> = t.prefix_tokens(&probe).iter().map(|x| x.0).collect();
            pre.sort();
            let want2: Vec<u32> = (0..toks.len() as u32)
                .filter(|&i| !toks[i as usize].is_empty() && probe.starts_with(&toks[i as usize]))
                .collect();
            prop_assert_eq!(pre, want2);
        }
    }
}
