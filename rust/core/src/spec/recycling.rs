//! Token Recycling (arXiv 2408.08696): an adjacency matrix `A[vocab, k]` of candidate next
//! tokens per token, filled from the target model's own top-k at every verified tree position,
//! and drafted from by a BFS over a static [`Template`].
//!
//! * [`TokenRecycler::draft`]: node `i` of the tree (canonical template order, root = 0) gets
//!   `A[token(parent(i)), rank(i)]`. Parents precede children, so one forward pass over the nodes
//!   is the BFS; the nodes of one depth are contiguous (one gather per level).
//! * [`TokenRecycler::update`]: for every position `i` in order, `A[tokens[i]] = topk[i]`.
//!   **Duplicated tokens: the last position wins** (the highest index overwrites), the rule the
//!   reference implementation effectively follows.
//! * Rows start at zero (token 0 as every candidate), as in the reference; the matrix is never
//!   reset between requests ("hot start").
//! * [`TokenRecycler::save`] / [`TokenRecycler::load`]: a small little-endian binary format,
//!   see [`MAGIC`].

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use crate::error::{check_index, CoreError, Result};
use crate::files::{open_with_header, write_atomic};
use crate::limits::{check_size, try_filled, MAX_RECYCLER_CELLS, MAX_VOCAB};
use crate::spec::template::Template;

/// File magic of a saved recycler (8 bytes), followed by `version: u32`, `vocab: u64`, `k: u32`,
/// `reserved: u32` (0), then `vocab * k` little-endian u32 (row-major adjacency).
pub const MAGIC: &[u8; 8] = b"TLRECYCL";
/// Current version of the file format.
pub const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 4 + 4;

/// A drafted token tree (flat, root first, parents before children).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftTree {
    /// Token of every node, `tokens[0]` is the root token.
    pub tokens: Vec<i64>,
    /// Parent of every node (`parents[0] == -1`, `parents[i] < i`).
    pub parents: Vec<i64>,
    /// Depth of every node (root 0): position id offset of the node.
    pub depths: Vec<i64>,
}

/// The adjacency matrix and the operations on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecycler {
    vocab: usize,
    k: usize,
    adj: Vec<u32>,
}

impl TokenRecycler {
    /// A zero matrix of `vocab` rows and `k` candidates per row.
    ///
    /// Sizes are checked before anything is allocated: `1 <= vocab <= `[`MAX_VOCAB`],
    /// `k >= 1` and `vocab * k <= `[`MAX_RECYCLER_CELLS`]; an allocation failure is an error too.
    pub fn new(vocab: usize, k: usize) -> Result<Self> {
        let len = Self::cells(vocab as u64, k as u64)?;
        Ok(TokenRecycler {
            vocab,
            k,
            adj: try_filled("recycler matrix", len, 0u32)?,
        })
    }

    /// Checks `vocab` and `k` (see [`new`](Self::new)) and returns `vocab * k`.
    fn cells(vocab: u64, k: u64) -> Result<usize> {
        check_size("vocab_size", vocab, MAX_VOCAB)?;
        if k == 0 {
            return Err(CoreError::value(
                "k: expected at least 1 candidate per token, got 0",
            ));
        }
        match vocab.checked_mul(k) {
            Some(n) if n <= MAX_RECYCLER_CELLS as u64 => Ok(n as usize),
            _ => Err(CoreError::value(format!(
                "vocab_size * k: expected at most {MAX_RECYCLER_CELLS} cells, got {vocab} * {k}"
            ))),
        }
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// The row-major [vocab, k] matrix.
    pub fn adjacency(&self) -> &[u32] {
        &self.adj
    }

    /// The rows of `tokens`, row-major [tokens.len(), k], best candidate first.
    pub fn rows(&self, tokens: &[i64]) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(tokens.len() * self.k);
        for &t in tokens {
            let r = check_index("tokens", t, self.vocab)? * self.k;
            out.extend_from_slice(&self.adj[r..r + self.k]);
        }
        Ok(out)
    }

    /// Checks that `template` only uses ranks below `k`.
    pub fn check_template(&self, template: &Template) -> Result<()> {
        if template.max_rank() as usize >= self.k {
            return Err(CoreError::value(format!(
                "template uses rank {} but the recycler keeps only k = {} candidates per token",
                template.max_rank(),
                self.k
            )));
        }
        Ok(())
    }

    /// Drafts the tree of `template` below `root`.
    pub fn draft(&self, root: i64, template: &Template) -> Result<DraftTree> {
        let root = check_index("root token", root, self.vocab)?;
        self.check_template(template)?;
        let parents = template.parents();
        let ranks = template.ranks();
        let mut tokens = vec![0i64; parents.len()];
        tokens[0] = root as i64;
        for i in 1..parents.len() {
            let pt = tokens[parents[i] as usize] as usize;
            tokens[i] = self.adj[pt * self.k + ranks[i] as usize] as i64;
        }
        Ok(DraftTree {
            tokens,
            parents: parents.to_vec(),
            depths: template.depths().to_vec(),
        })
    }

    /// Overwrites `A[tokens[i]] = topk[i]` for every position `i` in order (the last position
    /// wins among duplicated tokens). `topk` is row-major [tokens.len(), width], width == k.
    /// All input is validated before any row is written.
    pub fn update(&mut self, tokens: &[i64], topk: &[i64], width: usize) -> Result<()> {
        self.check_rows(tokens, topk, width)?;
        for (i, &t) in tokens.iter().enumerate() {
            let row = t as usize * self.k;
            for (dst, &src) in self.adj[row..row + self.k]
                .iter_mut()
                .zip(&topk[i * width..i * width + self.k])
            {
                *dst = src as u32;
            }
        }
        Ok(())
    }

    /// Seeds rows from the prompt's prefill: `A[prompt[i]] = topk[i]`, the same rule as
    /// [`update`](Self::update) (later prompt positions win).
    pub fn seed_from_prefill(&mut self, prompt: &[i64], topk: &[i64], width: usize) -> Result<()> {
        self.update(prompt, topk, width)
    }

    /// Move-to-front, the update rule when the target's top-k is not known (only the tokens it
    /// committed): for every pair `i` in order, `successors[i]` moves to rank 0 of row
    /// `tokens[i]`, the row's other candidates keep their order below it (copies of the
    /// successor are dropped) and the row is padded with the successor to `k` candidates.
    /// Rows listed in `empty` start with no candidates (rows never written: their zeros are
    /// not candidates), so a new row becomes `[s, s, ..., s]`. A pair sees the rows the pairs
    /// before it wrote. Every id is checked before any row is written: an error writes nothing.
    pub fn move_to_front(
        &mut self,
        tokens: &[i64],
        successors: &[i64],
        empty: &[i64],
    ) -> Result<()> {
        if successors.len() != tokens.len() {
            return Err(CoreError::shape(
                "successors",
                format!("length {}", tokens.len()),
                successors.len(),
            ));
        }
        for &t in tokens {
            check_index("tokens", t, self.vocab)?;
        }
        for &t in successors {
            check_index("successors", t, self.vocab)?;
        }
        for &t in empty {
            check_index("empty", t, self.vocab)?;
        }
        let k = self.k;
        let mut unwritten: HashSet<usize> = empty.iter().map(|&t| t as usize).collect();
        let mut row = Vec::with_capacity(k + 1);
        for (&t, &s) in tokens.iter().zip(successors) {
            let (t, s) = (t as usize, s as u32);
            let r = t * k;
            row.clear();
            row.push(s);
            if !unwritten.remove(&t) {
                row.extend(self.adj[r..r + k].iter().copied().filter(|&x| x != s));
            }
            row.resize(k.max(row.len()), s);
            self.adj[r..r + k].copy_from_slice(&row[..k]);
        }
        Ok(())
    }

    fn check_rows(&self, tokens: &[i64], topk: &[i64], width: usize) -> Result<()> {
        if width != self.k {
            return Err(CoreError::shape(
                "topk_ids",
                format!("[{}, {}] (k = {})", tokens.len(), self.k, self.k),
                format!("[{}, {width}]", topk.len().checked_div(width).unwrap_or(0)),
            ));
        }
        if topk.len() != tokens.len() * width {
            return Err(CoreError::shape(
                "topk_ids",
                format!("[{}, {}]", tokens.len(), self.k),
                format!("{} rows", topk.len() / width.max(1)),
            ));
        }
        for &t in tokens {
            check_index("tokens", t, self.vocab)?;
        }
        for &t in topk {
            check_index("topk_ids", t, self.vocab)?;
        }
        Ok(())
    }

    /// For every `i`, the first rank at which `next[i]` appears in row `tokens[i]`, or -1.
    /// Used for acceptance statistics (call it before [`update`](Self::update)).
    pub fn ranks_of(&self, tokens: &[i64], next: &[i64]) -> Result<Vec<i64>> {
        if tokens.len() != next.len() {
            return Err(CoreError::shape(
                "next_tokens",
                format!("length {}", tokens.len()),
                next.len(),
            ));
        }
        let mut out = Vec::with_capacity(tokens.len());
        for (&t, &n) in tokens.iter().zip(next) {
            let row = check_index("tokens", t, self.vocab)? * self.k;
            let n = check_index("next_tokens", n, self.vocab)? as u32;
            out.push(
                self.adj[row..row + self.k]
                    .iter()
                    .position(|&c| c == n)
                    .map_or(-1, |r| r as i64),
            );
        }
        Ok(out)
    }

    /// Serialises the matrix (header + data, little-endian).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.adj.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.vocab as u64).to_le_bytes());
        out.extend_from_slice(&(self.k as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        for &v in &self.adj {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses [`to_bytes`](Self::to_bytes) output; `expect_vocab` / `expect_k` (when given) must
    /// match the header. The header's sizes are checked against their caps and against the
    /// length of `bytes` before the matrix is allocated.
    pub fn from_bytes(
        bytes: &[u8],
        expect_vocab: Option<usize>,
        expect_k: Option<usize>,
    ) -> Result<Self> {
        let header = bytes.get(..HEADER_LEN).unwrap_or(bytes);
        let (vocab, k, body_len) = Self::parse_header(header, expect_vocab, expect_k)?;
        Self::from_body(&bytes[HEADER_LEN..], vocab, k, body_len)
    }

    /// Checks a file header; returns `(vocab, k, length of the body in bytes)`.
    fn parse_header(
        header: &[u8],
        expect_vocab: Option<usize>,
        expect_k: Option<usize>,
    ) -> Result<(usize, usize, u64)> {
        if header.len() < HEADER_LEN || &header[..8] != MAGIC {
            return Err(CoreError::value(
                "not a tokenloom recycler file (bad magic)",
            ));
        }
        let u32_at =
            |o: usize| u32::from_le_bytes([header[o], header[o + 1], header[o + 2], header[o + 3]]);
        let version = u32_at(8);
        if version != FORMAT_VERSION {
            return Err(CoreError::value(format!(
                "recycler file format version {version} is not supported (expected {FORMAT_VERSION})"
            )));
        }
        let reserved = u32_at(24);
        if reserved != 0 {
            return Err(CoreError::value(format!(
                "recycler file header: expected reserved = 0, got {reserved}"
            )));
        }
        let mut v8 = [0u8; 8];
        v8.copy_from_slice(&header[12..20]);
        let vocab = u64::from_le_bytes(v8);
        let k = u64::from(u32_at(20));
        if let Some(want) = expect_vocab {
            if want as u64 != vocab {
                return Err(CoreError::value(format!(
                    "recycler file vocab mismatch: expected {want}, file has {vocab}"
                )));
            }
        }
        if let Some(want) = expect_k {
            if want as u64 != k {
                return Err(CoreError::value(format!(
                    "recycler file k mismatch: expected {want}, file has {k}"
                )));
            }
        }
        let cells = Self::cells(vocab, k)
            .map_err(|e| CoreError::value(format!("recycler file header: {e}")))?;
        Ok((vocab as usize, k as usize, cells as u64 * 4))
    }

    /// Builds the matrix from the body of a file whose header gave `vocab`, `k` and the body
    /// length `want`.
    fn from_body(body: &[u8], vocab: usize, k: usize, want: u64) -> Result<Self> {
        if body.len() as u64 != want {
            return Err(CoreError::value(format!(
                "recycler file is truncated or padded: expected {} bytes, got {}",
                HEADER_LEN as u64 + want,
                HEADER_LEN + body.len()
            )));
        }
        let mut rec = Self::new(vocab, k)?;
        for (i, chunk) in body.chunks_exact(4).enumerate() {
            let v = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if v as usize >= vocab {
                return Err(CoreError::value(format!(
                    "recycler file is corrupt: entry {i} = {v} >= vocab {vocab}"
                )));
            }
            rec.adj[i] = v;
        }
        Ok(rec)
    }

    /// Writes the matrix to `path` (through a temporary file and a rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    /// Reads a matrix written by [`save`](Self::save). The header is read and checked first,
    /// and the body is read only when the file length matches it.
    pub fn load(path: &Path, expect_vocab: Option<usize>, expect_k: Option<usize>) -> Result<Self> {
        let (mut f, header, file_len) = open_with_header(path, HEADER_LEN)?;
        let (vocab, k, want) = Self::parse_header(&header, expect_vocab, expect_k)?;
        if file_len != HEADER_LEN as u64 + want {
            return Err(CoreError::value(format!(
                "recycler file is truncated or padded: expected {} bytes, got {file_len}",
                HEADER_LEN as u64 + want
            )));
        }
        let mut body = try_filled("recycler file", want as usize, 0u8)?;
        f.read_exact(&mut body).map_err(|e| {
            CoreError::value(format!(
                "recycler file is truncated: {e} ({} bytes expected)",
                HEADER_LEN as u64 + want
            ))
        })?;
        Self::from_body(&body, vocab, k, want)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec_with(vocab: usize, k: usize, seed: u64) -> TokenRecycler {
        let mut r = TokenRecycler::new(vocab, k).unwrap();
        let mut s = seed;
        for v in r.adj.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *v = ((s >> 33) % vocab as u64) as u32;
        }
        r
    }

    #[test]
    fn draft_follows_ranks() {
        let mut r = TokenRecycler::new(10, 2).unwrap();
        r.update(&[3, 5, 7], &[5, 7, 9, 1, 2, 4], 2).unwrap();
        let t = Template::from_paths(&[vec![0], vec![1], vec![0, 0], vec![0, 1], vec![0, 0, 1]])
            .unwrap();
        let d = r.draft(3, &t).unwrap();
        // root 3 -> [5, 7]; 5 -> [9, 1]; 9 -> [0, 0]
        assert_eq!(d.tokens, vec![3, 5, 7, 9, 1, 0]);
        assert_eq!(d.parents, vec![-1, 0, 0, 1, 1, 3]);
        assert_eq!(d.depths, vec![0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn update_last_position_wins() {
        let mut r = TokenRecycler::new(10, 2).unwrap();
        r.update(&[4, 4], &[1, 2, 3, 5], 2).unwrap();
        assert_eq!(&r.adjacency()[8..10], &[3, 5]);
        assert_eq!(r.ranks_of(&[4, 4, 4], &[3, 5, 1]).unwrap(), vec![0, 1, -1]);
    }

    #[test]
    fn move_to_front_rule() {
        let mut r = TokenRecycler::new(10, 3).unwrap();
        // Row 4 never written: it starts empty and is padded with its successor.
        r.move_to_front(&[4], &[7], &[4]).unwrap();
        assert_eq!(r.rows(&[4]).unwrap(), vec![7, 7, 7]);
        // Then 2 and 5 go to the front in turn; copies of the successor are dropped.
        r.move_to_front(&[4, 4, 4], &[2, 5, 7], &[]).unwrap();
        assert_eq!(r.rows(&[4]).unwrap(), vec![7, 5, 2]);
        // A pair sees the rows written by the pairs before it; `empty` applies once.
        r.move_to_front(&[1, 1], &[3, 8], &[1]).unwrap();
        assert_eq!(r.rows(&[1]).unwrap(), vec![8, 3, 3]);
        // Without `empty`, a zero row's zeros are candidates.
        r.move_to_front(&[6], &[2], &[]).unwrap();
        assert_eq!(r.rows(&[6]).unwrap(), vec![2, 0, 0]);
        // An emptied row no pair writes keeps its content.
        r.move_to_front(&[], &[], &[4]).unwrap();
        assert_eq!(r.rows(&[4]).unwrap(), vec![7, 5, 2]);
    }

    #[test]
    fn move_to_front_checks_everything_first() {
        let mut r = rec_with(10, 2, 3);
        let before = r.clone();
        assert!(matches!(
            r.move_to_front(&[1, 2], &[3], &[]),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            r.move_to_front(&[1, 10], &[3, 4], &[]),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            r.move_to_front(&[1, 2], &[3, -1], &[]),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            r.move_to_front(&[1], &[3], &[11]),
            Err(CoreError::Index { .. })
        ));
        assert_eq!(r, before, "a failed call writes nothing");
    }

    #[test]
    fn bad_input() {
        assert!(TokenRecycler::new(0, 8).is_err());
        assert!(TokenRecycler::new(10, 0).is_err());
        let mut r = TokenRecycler::new(10, 2).unwrap();
        let t = Template::named("2.2.2").unwrap();
        assert!(
            matches!(r.draft(0, &t), Err(CoreError::Value(_))),
            "rank 7 with k = 2"
        );
        let t = Template::from_paths(&[vec![0]]).unwrap();
        assert!(matches!(r.draft(10, &t), Err(CoreError::Index { .. })));
        assert!(matches!(r.draft(-1, &t), Err(CoreError::Index { .. })));
        assert!(matches!(
            r.update(&[1], &[1, 2, 3], 3),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            r.update(&[1, 2], &[1, 2], 2),
            Err(CoreError::Shape { .. })
        ));
        assert!(matches!(
            r.update(&[11], &[1, 2], 2),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            r.update(&[1], &[1, 12], 2),
            Err(CoreError::Index { .. })
        ));
        // Nothing was written by the failed calls.
        assert!(r.adjacency().iter().all(|&v| v == 0));
    }

    #[test]
    fn bytes_roundtrip_and_errors() {
        let r = rec_with(50, 3, 7);
        let b = r.to_bytes();
        assert_eq!(TokenRecycler::from_bytes(&b, Some(50), Some(3)).unwrap(), r);
        assert!(TokenRecycler::from_bytes(&b, Some(51), None).is_err());
        assert!(TokenRecycler::from_bytes(&b, None, Some(8)).is_err());
        assert!(TokenRecycler::from_bytes(&b[..b.len() - 1], None, None).is_err());
        assert!(TokenRecycler::from_bytes(b"nonsense", None, None).is_err());
        let mut bad = b.clone();
        bad[8] = 9;
        assert!(TokenRecycler::from_bytes(&bad, None, None).is_err());
        let mut bad = b;
        let last = bad.len() - 4;
        bad[last..].copy_from_slice(&999u32.to_le_bytes());
        assert!(TokenRecycler::from_bytes(&bad, None, None).is_err());
    }

    #[test]
    fn sizes_are_checked_before_allocating() {
        use crate::limits::{MAX_RECYCLER_CELLS, MAX_VOCAB};
        for (v, k) in [
            (1usize << 31, 8usize),
            (3, 1 << 62),
            (MAX_VOCAB + 1, 1),
            (MAX_VOCAB, MAX_RECYCLER_CELLS / MAX_VOCAB + 1),
            (usize::MAX, usize::MAX),
        ] {
            assert!(
                matches!(TokenRecycler::new(v, k), Err(CoreError::Value(_))),
                "{v} x {k}"
            );
        }
    }

    #[test]
    fn a_lying_header_is_refused_before_allocating() {
        let r = rec_with(5, 2, 1);
        let mut b = r.to_bytes();
        // k = 2^32 - 1: vocab * k cells would be allocated before the length check.
        b[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            TokenRecycler::from_bytes(&b, None, None),
            Err(CoreError::Value(_))
        ));
        // The reserved word must be 0 (found by fuzz/recycler_file).
        let mut b = r.to_bytes();
        b[25] = 0x26;
        assert!(matches!(
            TokenRecycler::from_bytes(&b, None, None),
            Err(CoreError::Value(_))
        ));
        // A plausible size that does not match the file length.
        let mut b = r.to_bytes();
        b[12..20].copy_from_slice(&1000u64.to_le_bytes());
        let e = TokenRecycler::from_bytes(&b, None, None).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        // Through a file: the body is not read when the header disagrees with the length.
        let dir = std::env::temp_dir().join(format!("tl-rec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lying.bin");
        std::fs::write(&path, &b).unwrap();
        assert!(matches!(
            TokenRecycler::load(&path, None, None),
            Err(CoreError::Value(_))
        ));
        std::fs::write(&path, &b[..10]).unwrap();
        assert!(matches!(
            TokenRecycler::load(&path, None, None),
            Err(CoreError::Value(_))
        ));
        r.save(&path).unwrap();
        assert_eq!(TokenRecycler::load(&path, Some(5), Some(2)).unwrap(), r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn bfs_visits_each_node_once(seed in any::<u64>(), root in 0i64..40, size_idx in 0usize..9) {
            let r = rec_with(40, 8, seed);
            let n = crate::spec::template::NESTED_SIZES[size_idx];
            let t = Template::named(&format!("2.2.2-{n}")).unwrap();
            let d = r.draft(root, &t).unwrap();
            prop_assert_eq!(d.tokens.len(), n + 1);
            prop_assert!(crate::tree::validate_parents(&d.parents).is_ok());
            let mut kids = vec![0usize; d.tokens.len()];
            for i in 1..d.tokens.len() {
                let p = d.parents[i] as usize;
                prop_assert!(p < i);
                kids[p] += 1;
                let rank = t.ranks()[i] as usize;
                prop_assert_eq!(d.tokens[i], r.adjacency()[d.tokens[p] as usize * 8 + rank] as i64);
            }
            prop_assert_eq!(kids.iter().sum::<usize>(), n);
        }

        #[test]
        fn update_then_draft_sees_rows(tokens in prop::collection::vec(0i64..30, 1..20), seed in any::<u64>()) {
            let mut r = TokenRecycler::new(30, 4).unwrap();
            let src = rec_with(30, 4, seed);
            let topk: Vec<i64> = tokens.iter().enumerate().flat_map(|(i, _)| src.adjacency()[i * 4..i * 4 + 4].iter().map(|&v| v as i64)).collect();
            r.update(&tokens, &topk, 4).unwrap();
            for (i, &t) in tokens.iter().enumerate() {
                let last = tokens.iter().rposition(|&u| u == t).unwrap();
                if last == i {
                    let row: Vec<i64> = r.adjacency()[t as usize * 4..t as usize * 4 + 4].iter().map(|&v| v as i64).collect();
                    prop_assert_eq!(row, topk[i * 4..i * 4 + 4].to_vec());
                }
            }
        }
    }
}
