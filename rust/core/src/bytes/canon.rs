//! Pairwise canonicality of adjacent tokens, decided from the BPE merge ranks (no tokenizer
//! call per candidate).
//!
//! A pair `(a, b)` is *valid* when the tokenizer encodes `bytes(a) ++ bytes(b)` as exactly
//! `[a, b]`. That happens iff (1) the pre-tokenizer either keeps the pair string in one piece or
//! splits it exactly at the boundary, and (2) in the one-piece case no merge across the boundary
//! fires before the merges that build `a` and `b`. (2) is checked by replaying the merge events
//! of `a` and `b` in rank order and watching the pair formed by the rightmost symbol of `a` and
//! the leftmost symbol of `b` (ties fire left to right, as HF's BPE does).
//!
//! Base symbols are the tokens BPE starts from (single bytes for byte-level BPE, characters or
//! `<0xNN>` byte-fallback tokens for SentencePiece-style BPE); they are given by the caller.

use std::collections::HashMap;

use crate::error::{check_index, CoreError, Result};

const NONE: u32 = u32::MAX;
const INF: u32 = u32::MAX;

/// What may follow a token pair, for the pre-tokenizer's look-ahead: the end of the text or a
/// non-space character. A pair is valid when it is valid for one of them (`\s+(?!\S)` splits a
/// trailing whitespace run only when text follows it).
const FOLLOWS: [Option<u8>; 2] = [None, Some(b'a')];

/// What may precede a token pair: the start of the text or a punctuation character (which
/// glues to a following apostrophe, so `'ll` is no longer a contraction).
const PRECEDES: [Option<u8>; 2] = [None, Some(b'!')];

/// Character classes of the GPT-2 pre-tokenizer regex.
pub const CL_LETTER: u8 = 0;
pub const CL_NUMBER: u8 = 1;
pub const CL_SPACE: u8 = 2;
pub const CL_OTHER: u8 = 3;

/// The pre-tokenizer in front of BPE.
#[derive(Debug, Clone)]
pub enum Pretok {
    /// No splitting (SentencePiece-style BPE).
    None,
    /// The GPT-2 ByteLevel regex
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`, with the
    /// classes of non-ASCII characters given by the caller (code point -> class). Bytes that do
    /// not decode (a character cut by a token edge) count as letters.
    Gpt2 { classes: HashMap<u32, u8> },
}

/// How the pre-tokenizer cuts the string of a token pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairSplit {
    Whole,
    AtBoundary,
    Inside,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    rank: u32,
    left_new: u32,
    right_new: u32,
}

/// Merge table and per-token merge histories.
#[derive(Debug, Clone)]
pub struct Canon {
    merges: HashMap<(u32, u32), (u32, u32)>,
    first: Vec<u32>,
    last: Vec<u32>,
    ev_off: Vec<u32>,
    events: Vec<Event>,
    bpe_ok: Vec<bool>,
    first_ok: Vec<bool>,
    /// The pre-tokenizer's cut of a pair ending with this token can depend on the bytes after
    /// it (see [`Self::follow_sensitive`]).
    follow_sensitive: Vec<bool>,
    token_bytes: Vec<Vec<u8>>,
    pretok: Pretok,
}

impl Canon {
    /// Args: `token_bytes[id]`; `base[id]` the base-symbol ids BPE starts from for that token
    /// (empty: the token cannot be produced); `merges[r] = (left, right, result)` in rank order.
    pub fn new(
        token_bytes: Vec<Vec<u8>>,
        base: &[Vec<u32>],
        merges: &[(u32, u32, u32)],
        pretok: Pretok,
    ) -> Result<Self> {
        let v = token_bytes.len();
        if base.len() != v {
            return Err(CoreError::shape(
                "base",
                format!("length {v} (= number of tokens)"),
                base.len(),
            ));
        }
        let mut table = HashMap::with_capacity(merges.len());
        for (r, &(l, rt, res)) in merges.iter().enumerate() {
            for (what, id) in [
                ("merges.left", l),
                ("merges.right", rt),
                ("merges.result", res),
            ] {
                check_index(what, id as i64, v)?;
            }
            table.entry((l, rt)).or_insert((r as u32, res));
        }
        for syms in base {
            for &s in syms {
                check_index("base", s as i64, v)?;
            }
        }
        if let Pretok::Gpt2 { classes } = &pretok {
            check_classes(classes)?;
        }
        let mut c = Canon {
            merges: table,
            first: vec![NONE; v],
            last: vec![NONE; v],
            ev_off: vec![0; v + 1],
            events: Vec::new(),
            bpe_ok: vec![false; v],
            first_ok: vec![false; v],
            follow_sensitive: vec![false; v],
            token_bytes,
            pretok,
        };
        for (t, syms) in base.iter().enumerate() {
            c.replay(t, syms);
            c.ev_off[t + 1] = c.events.len() as u32;
        }
        for t in 0..v {
            c.first_ok[t] = c.bpe_ok[t] && c.pieces_ok_alone(t);
            c.follow_sensitive[t] = c.compute_follow_sensitive(t);
        }
        Ok(c)
    }

    fn rank(&self, l: u32, r: u32) -> Option<(u32, u32)> {
        self.merges.get(&(l, r)).copied()
    }

    /// Runs BPE on the base symbols of token `t`, records its merge events.
    fn replay(&mut self, t: usize, base: &[u32]) {
        if base.is_empty() {
            return;
        }
        self.first[t] = base[0];
        self.last[t] = base[base.len() - 1];
        let mut syms = base.to_vec();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some((r, res)) = self.rank(syms[i], syms[i + 1]) {
                    if !matches!(best, Some((br, _, _)) if br <= r) {
                        best = Some((r, i, res));
                    }
                }
            }
            let Some((r, i, res)) = best else { break };
            let n = syms.len();
            self.events.push(Event {
                rank: r,
                left_new: if i == 0 { res } else { NONE },
                right_new: if i + 2 == n { res } else { NONE },
            });
            syms[i] = res;
            syms.remove(i + 1);
        }
        self.bpe_ok[t] = syms.len() == 1 && syms[0] as usize == t;
    }

    pub fn n_tokens(&self) -> usize {
        self.token_bytes.len()
    }

    /// BPE on the token's own base symbols gives back the token.
    pub fn bpe_ok(&self, t: u32) -> bool {
        self.bpe_ok[t as usize]
    }

    /// The token can start a canonical encoding (BPE gives it back and the pre-tokenizer keeps
    /// its string whole).
    pub fn first_ok(&self, t: u32) -> bool {
        self.first_ok[t as usize]
    }

    fn events_of(&self, t: u32) -> &[Event] {
        &self.events[self.ev_off[t as usize] as usize..self.ev_off[t as usize + 1] as usize]
    }

    /// No merge across the boundary fires before the merges that build `a` and `b`.
    pub fn merge_ok(&self, a: u32, b: u32) -> bool {
        let (ea, eb) = (self.events_of(a), self.events_of(b));
        let (mut x, mut y) = (self.last[a as usize], self.first[b as usize]);
        let (mut ia, mut ib) = (0usize, 0usize);
        loop {
            let ra = ea.get(ia).map_or(INF, |e| e.rank);
            let rb = eb.get(ib).map_or(INF, |e| e.rank);
            if let Some((rxy, _)) = self.rank(x, y) {
                // Events inside `a` sit left of the cross pair (they win ties), those inside
                // `b` sit right of it (the cross pair wins ties).
                if rxy < ra && rxy <= rb {
                    return false;
                }
            }
            if ra == INF && rb == INF {
                return true;
            }
            if ra <= rb {
                if ea[ia].right_new != NONE {
                    x = ea[ia].right_new;
                }
                ia += 1;
            } else {
                if eb[ib].left_new != NONE {
                    y = eb[ib].left_new;
                }
                ib += 1;
            }
        }
    }

    /// How the pre-tokenizer cuts `bytes(a) ++ bytes(b)` followed by `follow` (more text the
    /// pre-tokenizer looks ahead at; `None` = end of text).
    pub fn pair_split(&self, a: u32, b: u32, precede: Option<u8>, follow: Option<u8>) -> PairSplit {
        self.pair_split_with(a, b, precede, follow.as_slice(), None)
    }

    /// [`Self::pair_split`] with known following bytes `follow` (then `tail`, or the end).
    pub fn pair_split_with(
        &self,
        a: u32,
        b: u32,
        precede: Option<u8>,
        follow: &[u8],
        tail: Option<u8>,
    ) -> PairSplit {
        match &self.pretok {
            Pretok::None => PairSplit::Whole,
            Pretok::Gpt2 { classes } => {
                let (sa, sb) = (&self.token_bytes[a as usize], &self.token_bytes[b as usize]);
                // Reused buffers: `next_mask` runs this for every token of the vocabulary, and
                // three allocations per call were most of its time.
                SCRATCH.with(|cell| {
                    let mut scratch = cell.borrow_mut();
                    let (s, chars) = &mut *scratch;
                    s.clear();
                    s.extend(precede);
                    let begin = s.len();
                    s.extend_from_slice(sa);
                    let boundary = s.len();
                    s.extend_from_slice(sb);
                    let end = s.len();
                    s.extend_from_slice(follow);
                    s.extend(tail);
                    classify_into(s, classes, chars);
                    let mut split = PairSplit::Whole;
                    let mut i = 0;
                    while i < chars.len() {
                        let p = chars[i].2;
                        if p == boundary {
                            split = PairSplit::AtBoundary;
                        } else if p > begin && p < end {
                            return PairSplit::Inside;
                        }
                        i = gpt2_match(chars, i);
                    }
                    split
                })
            }
        }
    }

    fn pieces_ok_alone(&self, t: usize) -> bool {
        self.no_cut_inside(t, &[])
    }

    /// For some preceding context and some text after `follow`, the pre-tokenizer starts no
    /// piece strictly inside token `t` when `follow` comes right after it.
    fn no_cut_inside(&self, t: usize, follow: &[u8]) -> bool {
        match &self.pretok {
            Pretok::None => true,
            Pretok::Gpt2 { classes } => PRECEDES.iter().any(|pre| {
                FOLLOWS.iter().any(|tail| {
                    let mut s: Vec<u8> = pre.iter().copied().collect();
                    let begin = s.len();
                    s.extend_from_slice(&self.token_bytes[t]);
                    let end = s.len();
                    s.extend_from_slice(follow);
                    s.extend(*tail);
                    gpt2_piece_starts(&s, classes)
                        .iter()
                        .all(|&p| p <= begin || p >= end)
                })
            }),
        }
    }

    /// Whether the GPT-2 regex can cut a string ending with token `t` differently depending on
    /// what follows. A match that ends inside the string ends where it does whatever follows,
    /// except: `\s+(?!\S)` backs off one character when a whitespace run reaches the end and a
    /// non-space follows; the contractions `'s 't 're 've 'm 'll 'd` can start in the last two
    /// characters and finish in what follows; and a UTF-8 character cut at the end changes class
    /// once completed. So: the last character is whitespace, an apostrophe is among the last two
    /// bytes, or the bytes end mid-character.
    fn compute_follow_sensitive(&self, t: usize) -> bool {
        let Pretok::Gpt2 { classes } = &self.pretok else {
            return false;
        };
        let b = &self.token_bytes[t];
        if b.is_empty() {
            return false;
        }
        if b[b.len().saturating_sub(2)..].contains(&b'\'') {
            return true;
        }
        let c = classify(b, classes);
        match c.last() {
            None => false,
            Some(&(cls, ch, _)) => cls == CL_SPACE || ch == '\u{fffd}',
        }
    }

    /// See [`Self::compute_follow_sensitive`].
    pub fn follow_sensitive(&self, t: u32) -> bool {
        self.follow_sensitive
            .get(t as usize)
            .copied()
            .unwrap_or(false)
    }

    /// Whether the cut of the pair `(a, b)` can depend on what follows: `b` is
    /// [`Self::follow_sensitive`], or `b` is one byte after an apostrophe (`'` + `l` + `l`).
    pub fn pair_follow_sensitive(&self, a: u32, b: u32) -> bool {
        let (ai, bi) = (a as usize, b as usize);
        if bi >= self.follow_sensitive.len() || ai >= self.token_bytes.len() {
            return false;
        }
        self.follow_sensitive[bi]
            || (self.token_bytes[bi].len() == 1 && self.token_bytes[ai].last() == Some(&b'\''))
    }

    /// Whether the pre-tokenizer looks past a token pair at all (GPT-2 regex: yes; none: no).
    pub fn context_sensitive(&self) -> bool {
        matches!(self.pretok, Pretok::Gpt2 { .. })
    }

    /// How many leading bytes of the next token can change how the pre-tokenizer cuts the
    /// pair before it: the GPT-2 regex looks at most two characters ahead (`'ll`, `\s+(?!\S)`),
    /// and two characters fit in 4 bytes whenever the first is ASCII; a longer first character
    /// fills the 4 bytes itself.
    pub const FOLLOW_BYTES: usize = 4;

    /// [`Self::valid_pair`] when the token after `b` is known to start with `follow` (at most
    /// [`Self::FOLLOW_BYTES`] are used): valid for some preceding context and some text after
    /// `follow`. Tighter than `valid_pair` (which allows any following text) and still never
    /// rejects a pair of a canonical encoding: a whitespace token followed by more whitespace,
    /// for instance, only splits where the whole run does.
    pub fn valid_pair_before(&self, a: u32, b: u32, follow: &[u8]) -> bool {
        if !self.context_sensitive() || !self.pair_follow_sensitive(a, b) {
            return self.valid_pair(a, b);
        }
        self.pair_ok(a, b, known_follow(follow))
    }

    /// [`Self::first_ok`] when the next token is known to start with `follow`.
    pub fn first_ok_before(&self, t: u32, follow: &[u8]) -> bool {
        let ti = t as usize;
        if ti >= self.first_ok.len() || !self.first_ok[ti] {
            return false;
        }
        !self.follow_sensitive[ti] || self.no_cut_inside(ti, known_follow(follow))
    }

    /// The tokenizer would encode `bytes(a) ++ bytes(b)` as exactly `[a, b]`.
    pub fn valid_pair(&self, a: u32, b: u32) -> bool {
        self.pair_ok(a, b, &[])
    }

    /// [`Self::valid_pair`] with `follow` known to come right after `b` (then some text).
    fn pair_ok(&self, a: u32, b: u32, follow: &[u8]) -> bool {
        let (ai, bi) = (a as usize, b as usize);
        if ai >= self.bpe_ok.len()
            || bi >= self.bpe_ok.len()
            || !self.bpe_ok[ai]
            || !self.bpe_ok[bi]
        {
            return false;
        }
        let (precedes, follows): (&[Option<u8>], &[Option<u8>]) = match self.pretok {
            Pretok::None => (&[None], &[None]),
            Pretok::Gpt2 { .. } => (&PRECEDES, &FOLLOWS),
        };
        let mut merged = None;
        precedes.iter().any(|&pre| {
            follows.iter().any(
                |&tail| match self.pair_split_with(a, b, pre, follow, tail) {
                    PairSplit::AtBoundary => true,
                    PairSplit::Inside => false,
                    PairSplit::Whole => *merged.get_or_insert_with(|| self.merge_ok(a, b)),
                },
            )
        })
    }
}

/// The part of the next token's bytes the pair check uses: at most [`Canon::FOLLOW_BYTES`],
/// without a character cut at the end.
fn known_follow(follow: &[u8]) -> &[u8] {
    complete_chars(&follow[..follow.len().min(Canon::FOLLOW_BYTES)])
}

/// `s` without a UTF-8 character cut at its end: the known following bytes stop before it,
/// since the cut character's class is unknown (U+3000 is whitespace, most are letters).
fn complete_chars(s: &[u8]) -> &[u8] {
    match std::str::from_utf8(s) {
        Err(e) if e.error_len().is_none() => &s[..e.valid_up_to()],
        _ => s,
    }
}

/// Checks a code point -> class table: code points in `[0, 0x10FFFF]`, classes in
/// `[CL_LETTER, CL_OTHER]`.
pub fn check_classes(classes: &HashMap<u32, u8>) -> Result<()> {
    for (&cp, &cl) in classes {
        if cp > 0x10FFFF {
            return Err(CoreError::value(format!(
                "char_classes: expected code points in [0, 0x10FFFF], got {cp:#x}"
            )));
        }
        if cl > CL_OTHER {
            return Err(CoreError::value(format!(
                "char_classes[{cp:#x}]: expected a class in [0, {CL_OTHER}], got {cl}"
            )));
        }
    }
    Ok(())
}

fn class_of(c: char, classes: &HashMap<u32, u8>) -> u8 {
    if c.is_ascii() {
        return match c {
            'a'..='z' | 'A'..='Z' => CL_LETTER,
            '0'..='9' => CL_NUMBER,
            '\t' | '\n' | '\x0b' | '\x0c' | '\r' | ' ' => CL_SPACE,
            _ => CL_OTHER,
        };
    }
    if let Some(&k) = classes.get(&(c as u32)) {
        return k;
    }
    if c.is_whitespace() {
        CL_SPACE
    } else if c.is_alphabetic() {
        CL_LETTER
    } else if c.is_numeric() {
        CL_NUMBER
    } else {
        CL_OTHER
    }
}

thread_local! {
    /// Scratch buffers of [`Canon::pair_split_with`]: the text and its classified characters.
    static SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<(u8, char, usize)>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Decodes UTF-8 into (class, char, byte offset); undecodable bytes become single letters.
fn classify(s: &[u8], classes: &HashMap<u32, u8>) -> Vec<(u8, char, usize)> {
    let mut out = Vec::with_capacity(s.len());
    classify_into(s, classes, &mut out);
    out
}

/// [`classify`] into `out` (cleared first).
fn classify_into(s: &[u8], classes: &HashMap<u32, u8>, out: &mut Vec<(u8, char, usize)>) {
    out.clear();
    let mut i = 0;
    while i < s.len() {
        match std::str::from_utf8(&s[i..]) {
            Ok(rest) => {
                for (k, c) in rest.char_indices() {
                    out.push((class_of(c, classes), c, i + k));
                }
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                if good > 0 {
                    // Safe: the first `good` bytes are valid UTF-8.
                    if let Ok(ok) = std::str::from_utf8(&s[i..i + good]) {
                        for (k, c) in ok.char_indices() {
                            out.push((class_of(c, classes), c, i + k));
                        }
                    }
                }
                let bad = e.error_len().unwrap_or(s.len() - i - good).max(1);
                for k in 0..bad {
                    out.push((CL_LETTER, '\u{fffd}', i + good + k));
                }
                i += good + bad;
            }
        }
    }
}

/// Byte offsets where the GPT-2 pre-tokenizer regex starts a piece (always starts with 0 for a
/// non-empty string).
pub fn gpt2_piece_starts(s: &[u8], classes: &HashMap<u32, u8>) -> Vec<usize> {
    let c = classify(s, classes);
    let n = c.len();
    let mut starts = Vec::new();
    let mut i = 0;
    while i < n {
        starts.push(c[i].2);
        i = gpt2_match(&c, i);
    }
    starts
}

fn run_end(c: &[(u8, char, usize)], mut i: usize, cls: u8) -> usize {
    while i < c.len() && c[i].0 == cls {
        i += 1;
    }
    i
}

/// End (char index) of the regex match starting at char `i`.
fn gpt2_match(c: &[(u8, char, usize)], i: usize) -> usize {
    let n = c.len();
    let at = |k: usize| if k < n { c[k].1 } else { '\0' };
    if c[i].1 == '\'' {
        match at(i + 1) {
            's' | 't' | 'm' | 'd' => return i + 2,
            'r' | 'v' if at(i + 2) == 'e' => return i + 3,
            'l' if at(i + 2) == 'l' => return i + 3,
            _ => {}
        }
    }
    if c[i].0 != CL_SPACE {
        return run_end(c, i, c[i].0);
    }
    if c[i].1 == ' ' && i + 1 < n && c[i + 1].0 != CL_SPACE {
        return run_end(c, i + 1, c[i + 1].0);
    }
    let k = run_end(c, i, CL_SPACE);
    if k == n || k - i < 2 {
        k
    } else {
        k - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<String> {
        let st = gpt2_piece_starts(s.as_bytes(), &HashMap::new());
        let mut out = Vec::new();
        for (k, &p) in st.iter().enumerate() {
            let e = st.get(k + 1).copied().unwrap_or(s.len());
            out.push(s[p..e].to_string());
        }
        out
    }

    #[test]
    fn gpt2_regex() {
        assert_eq!(
            pieces("x   return  \n\n  y's 123"),
            vec!["x", "  ", " return", "  \n\n ", " y", "'s", " 123"]
        );
        assert_eq!(pieces("\n\nx"), vec!["\n", "\n", "x"]);
        assert_eq!(pieces("a, b!! 'x"), vec!["a", ",", " b", "!!", " '", "x"]);
        assert_eq!(pieces("we'll they've"), vec!["we", "'ll", " they", "'ve"]);
        assert_eq!(pieces("é1"), vec!["é", "1"]);
        assert_eq!(pieces("  "), vec!["  "]);
    }

    /// Toy byte-level BPE: tokens 0..3 = a, b, c; 3 = ab, 4 = bc, 5 = abc (= ab + c).
    fn toy() -> Canon {
        let toks: Vec<Vec<u8>> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let base = vec![
            vec![0],
            vec![1],
            vec![2],
            vec![0, 1],
            vec![1, 2],
            vec![0, 1, 2],
        ];
        // ranks: ab (0), bc (1), ab+c (2)
        Canon::new(
            toks,
            &base,
            &[(0, 1, 3), (1, 2, 4), (3, 2, 5)],
            Pretok::None,
        )
        .unwrap()
    }

    #[test]
    fn pairs_from_ranks() {
        let c = toy();
        assert!(c.bpe_ok(5) && c.bpe_ok(3));
        assert!(!c.valid_pair(0, 1)); // a|b merges to ab
        assert!(!c.valid_pair(0, 4)); // "abc": a+b (rank 0) fires before b+c
        assert!(!c.valid_pair(3, 2)); // ab|c merges to abc
        assert!(c.valid_pair(2, 0)); // c|a: no merge
    }

    /// Byte-level toy with the GPT-2 regex: 0 " ", 1 "a", 2 "  ", 3 " a", 4 "'", 5 "l", 6 "ll".
    fn toy_gpt2() -> Canon {
        let toks: Vec<Vec<u8>> = [" ", "a", "  ", " a", "'", "l", "ll"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let base = vec![
            vec![0],
            vec![1],
            vec![0, 0],
            vec![0, 1],
            vec![4],
            vec![5],
            vec![5, 5],
        ];
        let merges = [(0, 0, 2), (0, 1, 3), (5, 5, 6)];
        Canon::new(
            toks,
            &base,
            &merges,
            Pretok::Gpt2 {
                classes: HashMap::new(),
            },
        )
        .unwrap()
    }

    #[test]
    fn pairs_before_known_text() {
        let c = toy_gpt2();
        // " " | " " is a valid pair (before a letter "  a" splits " " | " a") ...
        assert!(c.valid_pair(0, 0));
        assert!(c.valid_pair_before(0, 0, b"a"));
        assert!(c.valid_pair_before(0, 0, b"ab"));
        // ... but not before more whitespace: "   " is one piece and " "+" " merges.
        assert!(!c.valid_pair_before(0, 0, b" "));
        assert!(!c.valid_pair_before(0, 0, b"  a"));
        // Insensitive pairs are unchanged: "a" then " " (the space's piece is decided by what
        // follows it, not by anything before).
        assert!(!c.pair_follow_sensitive(0, 1));
        assert_eq!(c.valid_pair_before(0, 1, b" "), c.valid_pair(0, 1));
        // An apostrophe right before a one-byte token: "'" + "l" then "l..." is the
        // contraction "'ll", so the pair's cut depends on what follows.
        assert!(c.pair_follow_sensitive(4, 5));
        // A following character cut by the token edge is not known to be a letter:
        // "  " + "\u{3000}" (ideographic space, e3 80 80) stays one whitespace run.
        assert_eq!(complete_chars(b"a\xe3\x80"), b"a");
        assert_eq!(complete_chars(b"\xe3\x80\x80"), b"\xe3\x80\x80");
        assert_eq!(
            c.valid_pair_before(0, 0, b"\xe3\x80"),
            c.valid_pair_before(0, 0, b"")
        );
        assert!(c.follow_sensitive(0) && !c.follow_sensitive(1) && c.follow_sensitive(4));
        // The first token: no piece may start strictly inside it, given what follows ("  "
        // before "a" is cut as " " | " a"); checked against the regex directly.
        assert!(!c.first_ok_before(2, b"a") && c.first_ok_before(2, b" "));
        for (t, f) in [(2u32, &b"a"[..]), (2, b" "), (1, b" "), (1, b"a")] {
            let mut ok = false;
            for pre in PRECEDES {
                for tail in FOLLOWS {
                    let mut s: Vec<u8> = pre.iter().copied().collect();
                    let begin = s.len();
                    s.extend_from_slice(&c.token_bytes[t as usize]);
                    let end = s.len();
                    s.extend_from_slice(f);
                    s.extend(tail);
                    ok |= gpt2_piece_starts(&s, &HashMap::new())
                        .iter()
                        .all(|&p| p <= begin || p >= end);
                }
            }
            assert_eq!(
                c.first_ok_before(t, f),
                ok && c.first_ok(t),
                "t={t} f={f:?}"
            );
        }
    }

    #[test]
    fn covers_use_the_context_check() {
        use crate::bytes::cover::enumerate_covers;
        use crate::bytes::index::ByteIndex;
        let c = toy_gpt2();
        let toks: Vec<Vec<u8>> = c.token_bytes.clone();
        let idx = ByteIndex::new(toks, vec![false; 7], 7, Some(c)).unwrap();
        let c2 = idx.canon.as_ref().unwrap();
        assert!(!c2.valid_pair_before(0, 0, b" "), "vpb");
        assert!(c2.first_ok_before(0, b" "), "fob");
        let cs = enumerate_covers(&idx, b"   ", true, 1000)
            .unwrap()
            .to_vecs();
        assert!(!cs.contains(&vec![0, 0, 0]), "{cs:?}");
        assert!(!idx.sequence_ok(&[0, 0, 0], true).unwrap());
    }

    fn bpe(c: &Canon, base: &[u32]) -> Vec<u32> {
        let mut syms = base.to_vec();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..syms.len().saturating_sub(1) {
                if let Some((r, res)) = c.rank(syms[i], syms[i + 1]) {
                    if best.is_none_or(|(br, _, _)| r < br) {
                        best = Some((r, i, res));
                    }
                }
            }
            let Some((_, i, res)) = best else { return syms };
            syms[i] = res;
            syms.remove(i + 1);
        }
    }

    use proptest::prelude::*;

    proptest! {
        /// merge_ok(a, b) agrees with running BPE on the concatenated base symbols.
        #[test]
        fn merge_ok_matches_bpe(merges in prop::collection::vec((0u32..3, 0u32..3), 1..6)) {
            // alphabet a, b, c; each merge rule joins two existing tokens into a new one.
            let mut toks: Vec<Vec<u8>> = vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()];
            let mut base: Vec<Vec<u32>> = vec![vec![0], vec![1], vec![2]];
            let mut rules = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (l, r) in merges {
                let (l, r) = (l % toks.len() as u32, r % toks.len() as u32);
                let mut bytes = toks[l as usize].clone();
                bytes.extend_from_slice(&toks[r as usize]);
                if !seen.insert((l, r)) || toks.contains(&bytes) { continue; }
                let mut b = base[l as usize].clone();
                b.extend_from_slice(&base[r as usize]);
                toks.push(bytes);
                base.push(b);
                rules.push((l, r, toks.len() as u32 - 1));
            }
            let c = Canon::new(toks.clone(), &base, &rules, Pretok::None).unwrap();
            for a in 0..toks.len() as u32 {
                for b in 0..toks.len() as u32 {
                    if !c.bpe_ok(a) || !c.bpe_ok(b) { continue; }
                    let mut syms = base[a as usize].clone();
                    syms.extend_from_slice(&base[b as usize]);
                    let want = bpe(&c, &syms) == vec![a, b];
                    prop_assert_eq!(c.merge_ok(a, b), want, "a={} b={}", a, b);
                }
            }
        }
    }
}
