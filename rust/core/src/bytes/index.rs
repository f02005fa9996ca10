//! The vocabulary-wide data every byte-level computation shares: the token trie, the special
//! tokens, the logits width and (optionally) the canonicality checks of [`Canon`].
//!
//! Positions are named by the token before them: `None` is the start of the text (or the
//! point after a special token), `Some(id)` a byte token. Ids coming from outside are checked
//! against the vocabulary, so no id can stand for the start of the text by accident.

use crate::bytes::canon::Canon;
use crate::bytes::trie::TokenTrie;
use crate::error::{check_index, CoreError, Result};
use crate::limits::{check_size, MAX_VOCAB};

/// Token of the root of a cover walk (the start of the text), inside this crate only: every
/// id checked by [`ByteIndex`] is below [`MAX_VOCAB`], far from this value.
pub(crate) const ROOT: u32 = u32::MAX;

const NO_GROUP: u32 = u32::MAX;

/// Vocabulary-wide data shared by every cover computation.
#[derive(Debug, Clone)]
pub struct ByteIndex {
    pub trie: TokenTrie,
    pub canon: Option<Canon>,
    special: Vec<bool>,
    width: usize,
    /// Per token: index into `follow_keys` of its first [`Canon::FOLLOW_BYTES`] bytes
    /// (`NO_GROUP` for special tokens and tokens without bytes).
    follow_group: Vec<u32>,
    follow_keys: Vec<Vec<u8>>,
}

impl ByteIndex {
    /// Args: `token_bytes[id]` (empty for tokens without bytes), `special[id]` (end-of-text
    /// candidates, never byte content), `width` the logits width (`>=` the number of tokens and
    /// at most [`MAX_VOCAB`]; the extra rows are padding and never used), `canon` for canonical
    /// mode.
    pub fn new(
        token_bytes: Vec<Vec<u8>>,
        special: Vec<bool>,
        width: usize,
        canon: Option<Canon>,
    ) -> Result<Self> {
        let v = token_bytes.len();
        check_size("number of tokens", v as u64, MAX_VOCAB)?;
        if special.len() != v {
            return Err(CoreError::shape(
                "special",
                format!("length {v} (= number of tokens)"),
                special.len(),
            ));
        }
        if width < v {
            return Err(CoreError::value(format!(
                "logits width {width} is smaller than the number of tokens {v}: tokenizer and model do not match"
            )));
        }
        check_size("width", width as u64, MAX_VOCAB)?;
        if let Some(c) = &canon {
            if c.n_tokens() != v {
                return Err(CoreError::shape(
                    "canon",
                    format!("{v} tokens"),
                    c.n_tokens(),
                ));
            }
        }
        let include: Vec<bool> = special.iter().map(|&s| !s).collect();
        let mut keys: std::collections::HashMap<Vec<u8>, u32> = std::collections::HashMap::new();
        let mut follow_keys = Vec::new();
        let follow_group = token_bytes
            .iter()
            .zip(&special)
            .map(|(b, &sp)| {
                if b.is_empty() || sp {
                    return NO_GROUP;
                }
                let k = b[..b.len().min(Canon::FOLLOW_BYTES)].to_vec();
                *keys.entry(k.clone()).or_insert_with(|| {
                    follow_keys.push(k);
                    (follow_keys.len() - 1) as u32
                })
            })
            .collect();
        let trie = TokenTrie::new(token_bytes, &include)?;
        if trie.n_trie_tokens() == 0 {
            return Err(CoreError::value("empty vocabulary: no token has bytes"));
        }
        Ok(ByteIndex {
            trie,
            canon,
            special,
            width,
            follow_group,
            follow_keys,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.special.len()
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn is_special(&self, t: u32) -> bool {
        self.special.get(t as usize).copied().unwrap_or(false)
    }

    /// Checks a token id: `Index` error unless `t < n_tokens`.
    pub fn check_token(&self, what: &'static str, t: u32) -> Result<u32> {
        check_index(what, i64::from(t), self.n_tokens())?;
        Ok(t)
    }

    /// Checks the token before a position (`None`: the start of the text) and returns it in
    /// the walk representation ([`ROOT`] for `None`).
    fn position(&self, what: &'static str, prev: Option<u32>) -> Result<u32> {
        match prev {
            None => Ok(ROOT),
            Some(t) => self.check_token(what, t),
        }
    }

    /// The merge table, or a `Value` error naming what needed it.
    pub fn canon(&self) -> Result<&Canon> {
        self.canon.as_ref().ok_or_else(|| {
            CoreError::value(
                "canonical checks need the BPE merge table: build the index with base and merges",
            )
        })
    }

    pub(crate) fn canon_for(&self, canonical: bool) -> Result<Option<&Canon>> {
        match (canonical, &self.canon) {
            (false, _) => Ok(None),
            (true, Some(c)) => Ok(Some(c)),
            (true, None) => Err(CoreError::value(
                "canonical mode needs the BPE merge table; build the index with merges or use canonical=False",
            )),
        }
    }

    /// Whether the tokenizer encodes `bytes(a) ++ bytes(b)` as exactly `[a, b]`.
    pub fn valid_pair(&self, a: u32, b: u32) -> Result<bool> {
        let c = self.canon()?;
        let (a, b) = (self.check_token("a", a)?, self.check_token("b", b)?);
        Ok(c.valid_pair(a, b))
    }

    /// [`Self::valid_pair`] when the token after `b` is known to start with `follow`.
    pub fn valid_pair_before(&self, a: u32, b: u32, follow: &[u8]) -> Result<bool> {
        let c = self.canon()?;
        let (a, b) = (self.check_token("a", a)?, self.check_token("b", b)?);
        Ok(c.valid_pair_before(a, b, follow))
    }

    /// Whether token `t` can start a canonical encoding.
    pub fn first_ok(&self, t: u32) -> Result<bool> {
        let c = self.canon()?;
        Ok(c.first_ok(self.check_token("t", t)?))
    }

    /// [`Self::first_ok`] when the next token is known to start with `follow`.
    pub fn first_ok_before(&self, t: u32, follow: &[u8]) -> Result<bool> {
        let c = self.canon()?;
        Ok(c.first_ok_before(self.check_token("t", t)?, follow))
    }

    /// May byte token `t` follow `prev` (ROOT: start of text / after a special token)?
    pub(crate) fn allowed(canon: Option<&Canon>, prev: u32, t: u32) -> bool {
        match canon {
            None => true,
            Some(c) if prev == ROOT => c.first_ok(t),
            Some(c) => c.valid_pair(prev, t),
        }
    }

    /// Now that `t` is known to follow `prev`, is the pair `(pprev, prev)` still valid? (The
    /// pre-tokenizer looks ahead: `' ', ' '` is a valid pair before a letter, not before
    /// another space.) `prev == ROOT`: nothing to check.
    fn context_ok(&self, canon: Option<&Canon>, pprev: u32, prev: u32, t: u32) -> bool {
        match canon {
            None => true,
            Some(_) if prev == ROOT => true,
            Some(c) if pprev == ROOT => c.first_ok_before(prev, self.trie.token_bytes(t)),
            Some(c) => c.valid_pair_before(pprev, prev, self.trie.token_bytes(t)),
        }
    }

    /// May `t` follow the path `[.., pprev, prev]`: [`Self::allowed`] and [`Self::context_ok`].
    pub(crate) fn allowed_after(
        &self,
        canon: Option<&Canon>,
        pprev: u32,
        prev: u32,
        t: u32,
    ) -> bool {
        Self::allowed(canon, prev, t) && self.context_ok(canon, pprev, prev, t)
    }

    /// Which logits rows the look-ahead of the pre-tokenizer still allows after the path
    /// `[.., pprev, prev]`: `None` when it allows every row (most pairs), else a mask of length
    /// `width` (special tokens always allowed) to AND with [`Self::next_mask`]`(prev)`.
    /// Canonical mode only; the check runs once per distinct first-4-bytes of the next token.
    pub fn context_mask(&self, pprev: Option<u32>, prev: Option<u32>) -> Result<Option<Vec<bool>>> {
        let Some(c) = self.canon_for(true)? else {
            return Ok(None);
        };
        let pprev = self.position("pprev", pprev)?;
        let prev = self.position("prev", prev)?;
        if prev == ROOT || !c.context_sensitive() {
            return Ok(None);
        }
        let sensitive = if pprev == ROOT {
            c.follow_sensitive(prev)
        } else {
            c.pair_follow_sensitive(pprev, prev)
        };
        if !sensitive {
            return Ok(None);
        }
        let ok: Vec<bool> = self
            .follow_keys
            .iter()
            .map(|f| {
                if pprev == ROOT {
                    c.first_ok_before(prev, f)
                } else {
                    c.valid_pair_before(pprev, prev, f)
                }
            })
            .collect();
        if ok.iter().all(|&x| x) {
            return Ok(None);
        }
        let mut m = vec![false; self.width];
        for (t, slot) in m.iter_mut().enumerate().take(self.n_tokens()) {
            let g = self.follow_group[t];
            *slot = self.special[t] || (g != NO_GROUP && ok[g as usize]);
        }
        Ok(Some(m))
    }

    /// [`Self::next_mask`] after the path `[.., pprev, prev]` (with the context check).
    pub fn next_mask_after(
        &self,
        pprev: Option<u32>,
        prev: Option<u32>,
        canonical: bool,
    ) -> Result<Vec<bool>> {
        self.position("pprev", pprev)?;
        let mut m = self.next_mask(prev, canonical)?;
        if canonical {
            if let Some(ctx) = self.context_mask(pprev, prev)? {
                for (a, b) in m.iter_mut().zip(ctx) {
                    *a &= b;
                }
            }
        }
        Ok(m)
    }

    /// Which logits rows may follow `prev` (`None`: the start of the text): byte tokens allowed
    /// after it, every special token; never padding rows or byte-less non-special tokens.
    /// Length `width`.
    pub fn next_mask(&self, prev: Option<u32>, canonical: bool) -> Result<Vec<bool>> {
        let canon = self.canon_for(canonical)?;
        let prev = self.position("prev", prev)?;
        let mut m = vec![false; self.width];
        for (t, slot) in m.iter_mut().enumerate().take(self.n_tokens()) {
            *slot = if self.special[t] {
                true
            } else {
                !self.trie.token_bytes(t as u32).is_empty() && Self::allowed(canon, prev, t as u32)
            };
        }
        Ok(m)
    }

    /// Whether a whole token sequence is allowed in the given mode (specials refused).
    pub fn sequence_ok(&self, tokens: &[u32], canonical: bool) -> Result<bool> {
        let canon = self.canon_for(canonical)?;
        for &t in tokens {
            self.check_token("tokens", t)?;
        }
        let (mut pprev, mut prev) = (ROOT, ROOT);
        for &t in tokens {
            if self.special[t as usize]
                || self.trie.token_bytes(t).is_empty()
                || !self.allowed_after(canon, pprev, prev, t)
            {
                return Ok(false);
            }
            pprev = prev;
            prev = t;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> ByteIndex {
        let toks: Vec<Vec<u8>> = ["a", "b", "ab", "ba", "abb", "", ""]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let special = vec![false, false, false, false, false, false, true];
        ByteIndex::new(toks, special, 9, None).unwrap()
    }

    #[test]
    fn masks() {
        let idx = index();
        let m = idx.next_mask(None, false).unwrap();
        assert_eq!(
            m,
            vec![true, true, true, true, true, false, true, false, false]
        );
        assert!(matches!(
            idx.next_mask(Some(17), false),
            Err(CoreError::Index { .. })
        ));
        // The largest u32 is an id like any other (out of range), never the start of the text.
        assert!(matches!(
            idx.next_mask(Some(u32::MAX), false),
            Err(CoreError::Index { .. })
        ));
        assert!(ByteIndex::new(vec![b"a".to_vec()], vec![false], 0, None).is_err());
        assert!(ByteIndex::new(vec![Vec::new()], vec![false], 1, None).is_err());
    }

    #[test]
    fn sizes_are_capped() {
        let e = ByteIndex::new(vec![b"a".to_vec()], vec![false], MAX_VOCAB + 1, None);
        assert!(matches!(e, Err(CoreError::Value(_))));
        assert!(ByteIndex::new(vec![b"a".to_vec()], vec![false], MAX_VOCAB, None).is_ok());
    }

    #[test]
    fn canonical_checks_need_merges_and_valid_ids() {
        let idx = index();
        assert!(matches!(idx.valid_pair(0, 1), Err(CoreError::Value(_))));
        assert!(matches!(idx.first_ok(0), Err(CoreError::Value(_))));
        assert!(matches!(
            idx.sequence_ok(&[0, 99], false),
            Err(CoreError::Index { .. })
        ));
        assert!(matches!(
            idx.sequence_ok(&[u32::MAX], false),
            Err(CoreError::Index { .. })
        ));
        assert!(idx.sequence_ok(&[0, 1], false).unwrap());
        assert!(!idx.sequence_ok(&[0, 6], false).unwrap());
    }
}
