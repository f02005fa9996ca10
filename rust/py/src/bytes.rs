//! Bindings of `tokenloom_core::{trie, canon, cover}`: the byte index of a vocabulary and the
//! incremental cover tree used by `tokenloom.ByteLM`.

use std::collections::HashMap;
use std::sync::Arc;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokenloom_core::canon::{gpt2_piece_starts, Canon, Pretok};
use tokenloom_core::cover::{self, ByteIndex as CoreIndex, CoverTree as CoreTree, ROOT};
use tokenloom_core::trie::DEAD;

use crate::error::{slice1, slice2, to_py};

fn prev_token(prev: i64) -> u32 {
    if prev < 0 {
        ROOT
    } else {
        u32::try_from(prev).unwrap_or(u32::MAX - 1)
    }
}

fn to_u32(what: &str, v: i64) -> PyResult<u32> {
    u32::try_from(v).map_err(|_| pyo3::exceptions::PyIndexError::new_err(format!("{what}: {v} is out of range")))
}

/// The byte index of a vocabulary: token trie, special tokens and (optionally) the BPE merge
/// table that decides canonicality.
///
/// Args:
///     token_bytes (list[bytes], length V): bytes of every token id (b"" for tokens without bytes).
///     special (np.ndarray[bool], shape [V]): end-of-text candidates (never byte content).
///     width (int): logits width, >= V; rows V..width are padding and never used.
///     base (list[list[int]] | None): base symbols BPE starts from, per token (canonical mode).
///     merges (np.ndarray[int64], shape [M, 3] | None): (left, right, result) ids in rank order.
///     pretok (str): "none" or "gpt2" (the GPT-2 ByteLevel regex).
///     char_classes (dict[int, int] | None): class of non-ASCII code points for "gpt2"
///         (0 letter, 1 number, 2 whitespace, 3 other).
///
/// Raises:
///     ValueError: lengths differ, width < V, no token has bytes, unknown pretok, bad merges shape.
///     IndexError: a merge or base id out of range.
#[pyclass(frozen, module = "tokenloom._core")]
pub struct ByteIndex {
    inner: Arc<CoreIndex>,
}

#[pymethods]
impl ByteIndex {
    #[new]
    #[pyo3(signature = (token_bytes, special, width, base=None, merges=None, pretok="none", char_classes=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        token_bytes: Vec<Bound<'_, PyBytes>>,
        special: PyReadonlyArray1<'_, bool>,
        width: usize,
        base: Option<Vec<Vec<u32>>>,
        merges: Option<PyReadonlyArray2<'_, i64>>,
        pretok: &str,
        char_classes: Option<HashMap<u32, u8>>,
    ) -> PyResult<Self> {
        let toks: Vec<Vec<u8>> = token_bytes.iter().map(|b| b.as_bytes().to_vec()).collect();
        let special = slice1("special", &special)?.to_vec();
        let pretok = match pretok {
            "none" => Pretok::None,
            "gpt2" => Pretok::Gpt2 { classes: char_classes.unwrap_or_default() },
            other => {
                return Err(PyValueError::new_err(format!("pretok: expected 'none' or 'gpt2', got {other:?}")))
            }
        };
        let merges = match merges {
            None => None,
            Some(m) => {
                let (s, _rows, cols) = slice2("merges", &m)?;
                if cols != 3 {
                    return Err(PyValueError::new_err(format!("merges: expected shape [M, 3], got [{_rows}, {cols}]")));
                }
                let mut out = Vec::with_capacity(s.len() / 3);
                for r in s.chunks_exact(3) {
                    out.push((to_u32("merges", r[0])?, to_u32("merges", r[1])?, to_u32("merges", r[2])?));
                }
                Some(out)
            }
        };
        let inner = py
            .detach(|| -> tokenloom_core::Result<CoreIndex> {
                let canon = match (base, merges) {
                    (Some(b), Some(m)) => Some(Canon::new(toks.clone(), &b, &m, pretok)?),
                    (None, None) => None,
                    _ => {
                        return Err(tokenloom_core::CoreError::value("base and merges must be given together"));
                    }
                };
                CoreIndex::new(toks, special, width, canon)
            })
            .map_err(to_py)?;
        Ok(ByteIndex { inner: Arc::new(inner) })
    }

    /// Number of token ids V.
    #[getter]
    fn n_tokens(&self) -> usize {
        self.inner.n_tokens()
    }

    /// Logits width (>= V).
    #[getter]
    fn width(&self) -> usize {
        self.inner.width()
    }

    /// Number of trie nodes (the root included).
    #[getter]
    fn n_nodes(&self) -> usize {
        self.inner.trie.n_nodes()
    }

    /// Longest token, in bytes.
    #[getter]
    fn max_token_len(&self) -> usize {
        self.inner.trie.max_len()
    }

    /// Whether the merge table is present (canonical mode available).
    #[getter]
    fn has_canon(&self) -> bool {
        self.inner.canon.is_some()
    }

    /// Where a token distribution goes after the bytes ``data``: ``out[b]`` = mass of the
    /// tokens whose bytes start with ``data + [b]``, ``out[256]`` = mass of the tokens whose
    /// bytes are exactly ``data`` (sums in float64).
    ///
    /// Args:
    ///     data (bytes): a byte string.
    ///     q (np.ndarray[float32], shape [width]): a token distribution.
    ///
    /// Returns:
    ///     np.ndarray[float64], shape [257] (zeros when no token starts with ``data``).
    ///
    /// Raises:
    ///     ValueError: q has the wrong length.
    #[pyo3(signature = (data, q))]
    fn continuation_masses<'py>(&self, py: Python<'py>, data: &[u8], q: PyReadonlyArray1<'py, f32>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let q = slice1("q", &q)?;
        let width = self.inner.width();
        if q.len() != width {
            return Err(PyValueError::new_err(format!("q: expected length {width}, got {}", q.len())));
        }
        let trie = &self.inner.trie;
        let n = trie.lookup(data);
        let mut out = [0.0f64; 256];
        let mut exact = 0.0f64;
        if n != DEAD {
            trie.child_masses(n, q, 1.0, &mut out);
            exact = trie.ending_at(n).iter().map(|&t| q[t as usize] as f64).sum();
        }
        let mut v = out.to_vec();
        v.push(exact);
        Ok(v.into_pyarray(py))
    }

    /// Token ids whose bytes start with `data`, sorted by bytes.
    ///
    /// Args:
    ///     data (bytes): the prefix.
    ///
    /// Returns:
    ///     np.ndarray[int64], shape [K].
    #[pyo3(signature = (data))]
    fn tokens_with_prefix<'py>(&self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyArray1<i64>> {
        let v: Vec<i64> = self.inner.trie.tokens_with_prefix(data).iter().map(|&t| t as i64).collect();
        v.into_pyarray(py)
    }

    /// Tokens that are prefixes of `data`, as (token, length) pairs by increasing length.
    ///
    /// Args:
    ///     data (bytes): the byte string.
    ///
    /// Returns:
    ///     list[tuple[int, int]].
    #[pyo3(signature = (data))]
    fn prefix_tokens(&self, data: &[u8]) -> Vec<(u32, usize)> {
        self.inner.trie.prefix_tokens(data)
    }

    /// Rows of the logits that may follow token `prev` (-1: the start of the text).
    ///
    /// Args:
    ///     prev (int): previous token id, or -1.
    ///     canonical (bool): canonical mode (pairwise-valid tokens only) or all covers.
    ///
    /// Returns:
    ///     np.ndarray[bool], shape [width]: specials True, padding rows False.
    ///
    /// Raises:
    ///     IndexError: prev out of range. ValueError: canonical without a merge table.
    #[pyo3(signature = (prev, canonical))]
    fn next_mask<'py>(&self, py: Python<'py>, prev: i64, canonical: bool) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let inner = self.inner.clone();
        let m = py.detach(|| inner.next_mask(prev_token(prev), canonical)).map_err(to_py)?;
        Ok(m.into_pyarray(py))
    }

    /// The pre-tokenizer's look-ahead after the path ``[.., pprev, prev]``: which rows may
    /// still follow once the pair ``(pprev, prev)`` is re-checked against the next token's
    /// first bytes (``' ', ' '`` is valid before a letter, not before another space). ``None``
    /// when every row may (most pairs; always for tokenizers without a pre-tokenizer).
    ///
    /// Args:
    ///     pprev (int): token before ``prev``, or -1 (``prev`` is the first token).
    ///     prev (int): previous token id, or -1 (nothing to check: returns None).
    ///
    /// Returns:
    ///     np.ndarray[bool] | None, shape [width]: AND it with ``next_mask(prev, True)``.
    ///
    /// Raises:
    ///     IndexError: an id out of range. ValueError: no merge table.
    #[pyo3(signature = (pprev, prev))]
    fn context_mask<'py>(&self, py: Python<'py>, pprev: i64, prev: i64) -> PyResult<Option<Bound<'py, PyArray1<bool>>>> {
        let inner = self.inner.clone();
        let m = py.detach(|| inner.context_mask(prev_token(pprev), prev_token(prev))).map_err(to_py)?;
        Ok(m.map(|m| m.into_pyarray(py)))
    }

    /// ``next_mask(prev, canonical)`` with, in canonical mode, ``context_mask(pprev, prev)``.
    ///
    /// Args:
    ///     pprev (int): token before ``prev``, or -1.
    ///     prev (int): previous token id, or -1.
    ///     canonical (bool): mode.
    ///
    /// Returns:
    ///     np.ndarray[bool], shape [width].
    ///
    /// Raises:
    ///     IndexError: an id out of range. ValueError: canonical without a merge table.
    #[pyo3(signature = (pprev, prev, canonical))]
    fn next_mask_after<'py>(&self, py: Python<'py>, pprev: i64, prev: i64, canonical: bool) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let inner = self.inner.clone();
        let m = py.detach(|| inner.next_mask_after(prev_token(pprev), prev_token(prev), canonical)).map_err(to_py)?;
        Ok(m.into_pyarray(py))
    }

    /// ``valid_pair(a, b)`` when the token after ``b`` is known to start with ``follow`` (its
    /// first 4 bytes are used): valid for some preceding context and some text after.
    ///
    /// Args:
    ///     a, b (int): token ids.
    ///     follow (bytes): the next token's bytes.
    ///
    /// Returns:
    ///     bool.
    ///
    /// Raises:
    ///     ValueError: no merge table.
    #[pyo3(signature = (a, b, follow))]
    fn valid_pair_before(&self, a: u32, b: u32, follow: &[u8]) -> PyResult<bool> {
        match &self.inner.canon {
            Some(c) => Ok(c.valid_pair_before(a, b, follow)),
            None => Err(PyValueError::new_err("no merge table: canonical checks unavailable")),
        }
    }

    /// ``first_ok(t)`` when the next token is known to start with ``follow``.
    ///
    /// Args:
    ///     t (int): token id.
    ///     follow (bytes): the next token's bytes.
    ///
    /// Returns:
    ///     bool.
    ///
    /// Raises:
    ///     ValueError: no merge table. IndexError: t out of range.
    #[pyo3(signature = (t, follow))]
    fn first_ok_before(&self, t: i64, follow: &[u8]) -> PyResult<bool> {
        let c = self.inner.canon.as_ref().ok_or_else(|| PyValueError::new_err("no merge table"))?;
        let t = tokenloom_core::error::check_index("t", t, self.inner.n_tokens()).map_err(to_py)?;
        Ok(c.first_ok_before(t as u32, follow))
    }

    /// Whether the tokenizer encodes bytes(a) + bytes(b) as exactly [a, b] (from merge ranks).
    ///
    /// Args:
    ///     a, b (int): token ids.
    ///
    /// Returns:
    ///     bool.
    ///
    /// Raises:
    ///     ValueError: no merge table.
    #[pyo3(signature = (a, b))]
    fn valid_pair(&self, a: u32, b: u32) -> PyResult<bool> {
        match &self.inner.canon {
            Some(c) => Ok(c.valid_pair(a, b)),
            None => Err(PyValueError::new_err("no merge table: canonical checks unavailable")),
        }
    }

    /// Whether token `t` can start a canonical encoding.
    ///
    /// Args:
    ///     t (int): token id.
    ///
    /// Returns:
    ///     bool.
    ///
    /// Raises:
    ///     ValueError: no merge table. IndexError: t out of range.
    #[pyo3(signature = (t))]
    fn first_ok(&self, t: i64) -> PyResult<bool> {
        let c = self.inner.canon.as_ref().ok_or_else(|| PyValueError::new_err("no merge table"))?;
        let t = tokenloom_core::error::check_index("t", t, self.inner.n_tokens()).map_err(to_py)?;
        Ok(c.first_ok(t as u32))
    }

    /// Whether a whole token sequence is allowed (canonical: first token and every pair valid).
    ///
    /// Args:
    ///     tokens (list[int]): token ids.
    ///     canonical (bool): mode.
    ///
    /// Returns:
    ///     bool.
    ///
    /// Raises:
    ///     IndexError: an id out of range. ValueError: canonical without a merge table.
    #[pyo3(signature = (tokens, canonical))]
    fn sequence_ok(&self, tokens: Vec<i64>, canonical: bool) -> PyResult<bool> {
        let mut ts = Vec::with_capacity(tokens.len());
        for t in tokens {
            ts.push(tokenloom_core::error::check_index("tokens", t, self.inner.n_tokens()).map_err(to_py)? as u32);
        }
        self.inner.sequence_ok(&ts, canonical).map_err(to_py)
    }

    /// Every cover of `data` (token sequences; [[]] for empty data).
    ///
    /// Args:
    ///     data (bytes): the byte prefix.
    ///     canonical (bool): canonical covers only, or all covers.
    ///     limit (int): refuse (ValueError) when there are more covers than this.
    ///
    /// Returns:
    ///     list[list[int]].
    ///
    /// Raises:
    ///     ValueError: more than `limit` covers, or canonical without a merge table.
    #[pyo3(signature = (data, canonical=false, limit=1_000_000))]
    fn enumerate_covers(&self, py: Python<'_>, data: Vec<u8>, canonical: bool, limit: usize) -> PyResult<Vec<Vec<u32>>> {
        let inner = self.inner.clone();
        py.detach(|| cover::enumerate_covers(&inner, &data, canonical, limit)).map_err(to_py)
    }

    /// Byte offsets where the GPT-2 pre-tokenizer regex starts a piece of `data` ([] if empty).
    ///
    /// Args:
    ///     data (bytes): text bytes.
    ///     char_classes (dict[int, int] | None): classes of non-ASCII code points.
    ///
    /// Returns:
    ///     list[int].
    #[staticmethod]
    #[pyo3(signature = (data, char_classes=None))]
    fn gpt2_piece_starts(data: &[u8], char_classes: Option<HashMap<u32, u8>>) -> Vec<usize> {
        gpt2_piece_starts(data, &char_classes.unwrap_or_default())
    }
}

/// The tree of exact paths of a growing byte prefix (node 0 is the root: the empty path).
///
/// Args:
///     index (ByteIndex): the vocabulary.
///     canonical (bool): canonical mode (needs the merge table) or all covers.
///
/// Raises:
///     ValueError: canonical without a merge table.
#[pyclass(module = "tokenloom._core")]
pub struct CoverTree {
    index: Arc<CoreIndex>,
    inner: CoreTree,
}

#[pymethods]
impl CoverTree {
    #[new]
    #[pyo3(signature = (index, canonical=true))]
    fn new(index: &ByteIndex, canonical: bool) -> PyResult<Self> {
        let inner = CoreTree::new(&index.inner, canonical).map_err(to_py)?;
        Ok(CoverTree { index: index.inner.clone(), inner })
    }

    /// The prefix so far.
    #[getter]
    fn prefix<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.inner.prefix())
    }

    #[getter]
    fn canonical(&self) -> bool {
        self.inner.canonical()
    }

    fn __len__(&self) -> usize {
        self.inner.nodes().len()
    }

    /// Appends byte `b`; returns the new exact-path nodes (ending at the new prefix end).
    ///
    /// Args:
    ///     b (int): a byte, 0..255.
    ///
    /// Returns:
    ///     list[int]: node ids.
    #[pyo3(signature = (b))]
    fn push(&mut self, b: u8) -> PyResult<Vec<u32>> {
        self.inner.push(&self.index, b).map_err(to_py)
    }

    /// Creates the children of an unexpanded node (tokens that are prefixes of prefix[end:]).
    ///
    /// Args:
    ///     node (int): node id.
    ///
    /// Returns:
    ///     list[int]: the new node ids.
    ///
    /// Raises:
    ///     IndexError: unknown node. ValueError: already expanded.
    #[pyo3(signature = (node))]
    fn expand(&mut self, node: i64) -> PyResult<Vec<u32>> {
        let n = tokenloom_core::error::check_index("node", node, self.inner.nodes().len()).map_err(to_py)?;
        self.inner.expand(&self.index, n as u32).map_err(to_py)
    }

    /// Nodes that can still contribute (live trie state, or unexpanded with children to come).
    ///
    /// Returns:
    ///     list[int].
    fn active(&self) -> Vec<u32> {
        self.inner.active().to_vec()
    }

    /// (token, parent, start, end, expanded, live) of a node; token and parent are -1 at the root.
    ///
    /// Args:
    ///     node (int): node id.
    ///
    /// Returns:
    ///     tuple[int, int, int, int, bool, bool].
    ///
    /// Raises:
    ///     IndexError: unknown node.
    #[pyo3(signature = (node))]
    fn info(&self, node: i64) -> PyResult<(i64, i64, u32, u32, bool, bool)> {
        let n = self
            .inner
            .node(u32::try_from(node).map_err(|_| pyo3::exceptions::PyIndexError::new_err(format!("node: {node} is out of range")))?)
            .map_err(to_py)?;
        let opt = |v: u32| if v == ROOT { -1 } else { v as i64 };
        Ok((opt(n.token), opt(n.parent), n.start, n.end, n.expanded, n.state != DEAD))
    }

    /// Token path of a node from the root.
    ///
    /// Args:
    ///     node (int): node id.
    ///
    /// Returns:
    ///     list[int].
    #[pyo3(signature = (node))]
    fn path(&self, node: u32) -> PyResult<Vec<u32>> {
        self.inner.path(node).map_err(to_py)
    }

    /// The ``k`` heaviest straddling extensions ``(node, token)`` of expanded nodes: tokens whose
    /// bytes start with ``prefix[end:]`` and run past the prefix end, scored
    /// ``scales[i] * qs[i][token]`` (zero scores skipped). ByteLM computes the distributions of
    /// the heaviest ones ahead of time (exact look-ahead rows).
    ///
    /// Args:
    ///     nodes (list[int]): expanded node ids.
    ///     qs (list[np.ndarray[float32]], each shape [width]): next-token distribution per node.
    ///     scales (list[float]): weight per node.
    ///     k (int): how many to return at most.
    ///
    /// Returns:
    ///     list[tuple[int, int, float]]: (node, token, score) by decreasing score.
    ///
    /// Raises:
    ///     ValueError: lengths differ or a q has the wrong length. IndexError: unknown node.
    #[pyo3(signature = (nodes, qs, scales, k))]
    fn top_straddling<'py>(
        &self,
        py: Python<'py>,
        nodes: Vec<i64>,
        qs: Vec<PyReadonlyArray1<'py, f32>>,
        scales: Vec<f64>,
        k: usize,
    ) -> PyResult<Vec<(u32, u32, f64)>> {
        let mut ids = Vec::with_capacity(nodes.len());
        for &n in &nodes {
            ids.push(tokenloom_core::error::check_index("node", n, self.inner.nodes().len()).map_err(to_py)? as u32);
        }
        let mut views = Vec::with_capacity(qs.len());
        for q in &qs {
            views.push(slice1("qs", q)?);
        }
        let (inner, index) = (&self.inner, &self.index);
        py.detach(|| inner.top_straddling(index, &ids, &views, &scales, k)).map_err(to_py)
    }

    /// Next-byte masses: out[b] = sum_i scales[i] * (mass of tokens whose bytes start with
    /// prefix[end_i:] + [b]) under the distribution q_i, for every byte b; out[256] = the same
    /// for tokens whose bytes are exactly prefix[end_i:].
    ///
    /// Args:
    ///     nodes (list[int]): live, expanded node ids.
    ///     qs (list[np.ndarray[float32]], each shape [width]): next-token distribution per node.
    ///     scales (list[float]): weight per node.
    ///
    /// Returns:
    ///     np.ndarray[float64], shape [257].
    ///
    /// Raises:
    ///     ValueError: lengths differ or a q has the wrong length. IndexError: unknown node.
    #[pyo3(signature = (nodes, qs, scales))]
    fn byte_masses<'py>(
        &self,
        py: Python<'py>,
        nodes: Vec<i64>,
        qs: Vec<PyReadonlyArray1<'py, f32>>,
        scales: Vec<f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        if qs.len() != nodes.len() || scales.len() != nodes.len() {
            return Err(PyValueError::new_err(format!(
                "nodes, qs, scales: expected equal lengths, got {}, {}, {}",
                nodes.len(),
                qs.len(),
                scales.len()
            )));
        }
        let width = self.index.width();
        let mut views = Vec::with_capacity(qs.len());
        let mut states = Vec::with_capacity(qs.len());
        for (q, &n) in qs.iter().zip(&nodes) {
            let s = slice1("qs", q)?;
            if s.len() != width {
                return Err(PyValueError::new_err(format!("qs: expected length {width}, got {}", s.len())));
            }
            views.push(s);
            let node = self
                .inner
                .node(u32::try_from(n).map_err(|_| pyo3::exceptions::PyIndexError::new_err(format!("node: {n} is out of range")))?)
                .map_err(to_py)?;
            states.push(node.state);
        }
        let index = &self.index;
        let out = py.detach(|| {
            let mut out = [0.0f64; 256];
            let mut exact = 0.0f64;
            for ((&st, q), &sc) in states.iter().zip(&views).zip(&scales) {
                if st != DEAD {
                    index.trie.child_masses(st, q, sc, &mut out);
                    let e: f64 = index.trie.ending_at(st).iter().map(|&t| q[t as usize] as f64).sum();
                    exact += sc * e;
                }
            }
            let mut v = out.to_vec();
            v.push(exact);
            v
        });
        Ok(out.into_pyarray(py))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ByteIndex>()?;
    m.add_class::<CoverTree>()?;
    Ok(())
}
