//! Bindings of `tokenloom_core::bytes::{trie, canon, index, cover}`: the byte index of a
//! vocabulary and the incremental cover tree used by `tokenloom.ByteLM`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use tokenloom_core::bytes::canon::{gpt2_piece_starts, Canon, Pretok};
use tokenloom_core::bytes::cover::{self, CoverTree as CoreTree};
use tokenloom_core::bytes::index::ByteIndex as CoreIndex;
use tokenloom_core::bytes::trie::DEAD;
use tokenloom_core::limits::MAX_VOCAB;

use crate::args;
use crate::ints::{Ids2};
use crate::error::{slice1, slice2, to_py};

/// A merge id in [0, n_tokens) (the core checks it again against the table it builds).
fn merge_id(v: i64, n_tokens: usize) -> PyResult<u32> {
    match u32::try_from(v) {
        Ok(x) if (x as usize) < n_tokens => Ok(x),
        _ => Err(pyo3::exceptions::PyIndexError::new_err(format!("merges: {v} is out of range [0, {n_tokens})"))),
    }
}

/// A code point -> class table (code points in [0, 0x10FFFF], classes 0..=3).
fn char_classes(obj: Option<&Bound<'_, PyAny>>) -> PyResult<HashMap<u32, u8>> {
    let mut out = HashMap::new();
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(out) };
    let d = obj.cast::<PyDict>().map_err(|_| {
        PyTypeError::new_err(format!(
            "char_classes: expected a dict[int, int], got {}",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    })?;
    for (k, v) in d.iter() {
        let cp = args::uint("char_classes code point", &k, 0, 0x10FFFF)? as u32;
        let cl = args::uint("char_classes class", &v, 0, 3)? as u8;
        out.insert(cp, cl);
    }
    Ok(out)
}

/// Base symbols per token: a sequence of sequences of ids in [0, n_tokens).
fn base_lists(obj: &Bound<'_, PyAny>, n_tokens: usize) -> PyResult<Vec<Vec<u32>>> {
    args::items("base", obj)?.iter().map(|syms| args::ids("base", syms, n_tokens)).collect()
}

fn width_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("width", args::size("width", obj, 1, MAX_VOCAB))
}

fn k_straddling(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("k", args::size("k", obj, 0, usize::MAX))
}

/// The byte index of a vocabulary: token trie, special tokens and (optionally) the BPE merge
/// table that decides canonicality.
///
/// Args:
///     token_bytes (list[bytes], length V): bytes of every token id (b"" for tokens without bytes).
///     special (np.ndarray[bool], shape [V]): end-of-text candidates (never byte content).
///     width (int): logits width, V <= width <= 2**24; rows V..width are padding and never used.
///     base (list[list[int]] | None): base symbols BPE starts from, per token (canonical mode).
///     merges (np.ndarray[int64], shape [M, 3] | None): (left, right, result) ids in rank order.
///     pretok (str): "none" or "gpt2" (the GPT-2 ByteLevel regex).
///     char_classes (dict[int, int] | None): class of non-ASCII code points for "gpt2"
///         (0 letter, 1 number, 2 whitespace, 3 other).
///
/// Raises:
///     ValueError: lengths differ, width < V or above 2**24, no token has bytes, unknown pretok,
///         bad merges shape, a code point or class out of range.
///     IndexError: a merge or base id out of range.
///     TypeError: a non-int id, width, code point or class.
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
        #[pyo3(from_py_with = width_arg)] width: usize,
        base: Option<&Bound<'_, PyAny>>,
        merges: Option<Ids2<'_>>,
        pretok: &str,
        char_classes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let toks: Vec<Vec<u8>> = token_bytes.iter().map(|b| b.as_bytes().to_vec()).collect();
        let special = slice1("special", &special)?.to_vec();
        let pretok = match pretok {
            "none" => Pretok::None,
            "gpt2" => Pretok::Gpt2 { classes: self::char_classes(char_classes)? },
            other => {
                return Err(PyValueError::new_err(format!("pretok: expected 'none' or 'gpt2', got {other:?}")))
            }
        };
        let base = base.filter(|b| !b.is_none()).map(|b| base_lists(b, toks.len())).transpose()?;
        let merges = match merges {
            None => None,
            Some(m) => {
                let (s, _rows, cols) = slice2("merges", &m)?;
                if cols != 3 {
                    return Err(PyValueError::new_err(format!("merges: expected shape [M, 3], got [{_rows}, {cols}]")));
                }
                let mut out = Vec::with_capacity(s.len() / 3);
                for r in s.chunks_exact(3) {
                    let n = toks.len();
                    out.push((merge_id(r[0], n)?, merge_id(r[1], n)?, merge_id(r[2], n)?));
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
    ///     prev (int): previous token id in [0, V), or -1.
    ///     canonical (bool): canonical mode (pairwise-valid tokens only) or all covers.
    ///
    /// Returns:
    ///     np.ndarray[bool], shape [width]: specials True, padding rows False.
    ///
    /// Raises:
    ///     IndexError: prev out of range. ValueError: canonical without a merge table.
    ///     TypeError: prev is not an int.
    #[pyo3(signature = (prev, canonical))]
    fn next_mask<'py>(&self, py: Python<'py>, prev: &Bound<'py, PyAny>, canonical: bool) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let prev = self.prev("prev", prev)?;
        let inner = &self.inner;
        let m = py.detach(|| inner.next_mask(prev, canonical)).map_err(to_py)?;
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
    ///     TypeError: an id that is not an int.
    #[pyo3(signature = (pprev, prev))]
    fn context_mask<'py>(&self, py: Python<'py>, pprev: &Bound<'py, PyAny>, prev: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyArray1<bool>>>> {
        let (pprev, prev) = (self.prev("pprev", pprev)?, self.prev("prev", prev)?);
        let inner = &self.inner;
        let m = py.detach(|| inner.context_mask(pprev, prev)).map_err(to_py)?;
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
    ///     TypeError: an id that is not an int.
    #[pyo3(signature = (pprev, prev, canonical))]
    fn next_mask_after<'py>(
        &self,
        py: Python<'py>,
        pprev: &Bound<'py, PyAny>,
        prev: &Bound<'py, PyAny>,
        canonical: bool,
    ) -> PyResult<Bound<'py, PyArray1<bool>>> {
        let (pprev, prev) = (self.prev("pprev", pprev)?, self.prev("prev", prev)?);
        let inner = &self.inner;
        let m = py.detach(|| inner.next_mask_after(pprev, prev, canonical)).map_err(to_py)?;
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
    ///     ValueError: no merge table. IndexError: an id out of range. TypeError: a non-int id.
    #[pyo3(signature = (a, b, follow))]
    fn valid_pair_before(&self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>, follow: &[u8]) -> PyResult<bool> {
        let (a, b) = (self.token("a", a)?, self.token("b", b)?);
        self.inner.valid_pair_before(a, b, follow).map_err(to_py)
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
    ///     ValueError: no merge table. IndexError: t out of range. TypeError: a non-int id.
    #[pyo3(signature = (t, follow))]
    fn first_ok_before(&self, t: &Bound<'_, PyAny>, follow: &[u8]) -> PyResult<bool> {
        let t = self.token("t", t)?;
        self.inner.first_ok_before(t, follow).map_err(to_py)
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
    ///     ValueError: no merge table. IndexError: an id out of range. TypeError: a non-int id.
    #[pyo3(signature = (a, b))]
    fn valid_pair(&self, a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
        let (a, b) = (self.token("a", a)?, self.token("b", b)?);
        self.inner.valid_pair(a, b).map_err(to_py)
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
    ///     ValueError: no merge table. IndexError: t out of range. TypeError: a non-int id.
    #[pyo3(signature = (t))]
    fn first_ok(&self, t: &Bound<'_, PyAny>) -> PyResult<bool> {
        let t = self.token("t", t)?;
        self.inner.first_ok(t).map_err(to_py)
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
    ///     TypeError: a non-int id.
    #[pyo3(signature = (tokens, canonical))]
    fn sequence_ok(&self, tokens: &Bound<'_, PyAny>, canonical: bool) -> PyResult<bool> {
        let ts = args::ids("tokens", tokens, self.inner.n_tokens())?;
        self.inner.sequence_ok(&ts, canonical).map_err(to_py)
    }

    /// Every cover of `data` (token sequences; [[]] for empty data).
    ///
    /// The walk runs without the GIL, iteratively (any length of `data`), and skips the dead
    /// ends it has seen; the lists are built once it is done.
    ///
    /// Args:
    ///     data (bytes): the byte prefix.
    ///     canonical (bool): canonical covers only, or all covers.
    ///     limit (int): refuse (ValueError) when there are more covers than this (>= 0).
    ///
    /// Returns:
    ///     list[list[int]].
    ///
    /// Raises:
    ///     ValueError: more than `limit` covers, a negative limit, or canonical without a
    ///         merge table.
    #[pyo3(signature = (data, canonical=false, limit=1_000_000))]
    fn enumerate_covers<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        canonical: bool,
        #[pyo3(from_py_with = args::limit)] limit: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let inner = &self.inner;
        let covers = py.detach(|| cover::enumerate_covers(inner, data, canonical, limit)).map_err(to_py)?;
        PyList::new(py, covers.iter().map(|c| PyList::new(py, c)).collect::<PyResult<Vec<_>>>()?)
    }

    /// Byte offsets where the GPT-2 pre-tokenizer regex starts a piece of `data` ([] if empty).
    ///
    /// Args:
    ///     data (bytes): text bytes.
    ///     char_classes (dict[int, int] | None): classes of non-ASCII code points.
    ///
    /// Returns:
    ///     list[int].
    ///
    /// Raises:
    ///     ValueError: a code point or class out of range. TypeError: not a dict of ints.
    #[staticmethod]
    #[pyo3(signature = (data, char_classes=None))]
    fn gpt2_piece_starts(data: &[u8], char_classes: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<usize>> {
        Ok(gpt2_piece_starts(data, &self::char_classes(char_classes)?))
    }
}

impl ByteIndex {
    /// A token id argument, in [0, V).
    fn token(&self, what: &str, obj: &Bound<'_, PyAny>) -> PyResult<u32> {
        Ok(args::id(what, obj, self.inner.n_tokens())? as u32)
    }

    /// The token before a position: -1 (the start of the text) or an id in [0, V).
    fn prev(&self, what: &str, obj: &Bound<'_, PyAny>) -> PyResult<Option<u32>> {
        args::prev(what, obj, self.inner.n_tokens())
    }
}

/// The tree of exact paths of a growing byte prefix (node 0 is the root: the empty path).
///
/// Thread-safe: the tree sits behind a lock, so threads sharing one tree see the calls in some
/// order (pushes from two threads interleave byte by byte).
///
/// Args:
///     index (ByteIndex): the vocabulary.
///     canonical (bool): canonical mode (needs the merge table) or all covers.
///
/// Raises:
///     ValueError: canonical without a merge table.
#[pyclass(module = "tokenloom._core", frozen)]
pub struct CoverTree {
    index: Arc<CoreIndex>,
    inner: Mutex<CoreTree>,
}

impl CoverTree {
    fn lock(&self) -> PyResult<MutexGuard<'_, CoreTree>> {
        self.inner
            .lock()
            .map_err(|_| PyRuntimeError::new_err("CoverTree: a previous call panicked; the state is unusable"))
    }

    /// Node ids, each in [0, len(tree)).
    fn node_ids(&self, nodes: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let n = self.lock()?.nodes().len();
        args::ids("node", nodes, n)
    }
}

#[pymethods]
impl CoverTree {
    #[new]
    #[pyo3(signature = (index, canonical=true))]
    fn new(index: &ByteIndex, canonical: bool) -> PyResult<Self> {
        let inner = CoreTree::new(&index.inner, canonical).map_err(to_py)?;
        Ok(CoverTree { index: index.inner.clone(), inner: Mutex::new(inner) })
    }

    /// The prefix so far.
    #[getter]
    fn prefix<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let p = self.lock()?.prefix().to_vec();
        Ok(PyBytes::new(py, &p))
    }

    #[getter]
    fn canonical(&self) -> PyResult<bool> {
        Ok(self.lock()?.canonical())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.lock()?.nodes().len())
    }

    /// Appends byte `b`; returns the new exact-path nodes (ending at the new prefix end).
    ///
    /// Args:
    ///     b (int): a byte, 0..255.
    ///
    /// Returns:
    ///     list[int]: node ids.
    ///
    /// Raises:
    ///     ValueError: b outside [0, 255]. TypeError: b is not an int.
    #[pyo3(signature = (b))]
    fn push(&self, py: Python<'_>, b: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let b = args::uint("b", b, 0, 255)? as u8;
        let index = &self.index;
        py.detach(|| self.lock()?.push(index, b).map_err(to_py))
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
    ///     IndexError: unknown node. ValueError: already expanded. TypeError: not an int.
    #[pyo3(signature = (node))]
    fn expand(&self, py: Python<'_>, node: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let node = args::id_i64("node", node)?;
        let index = &self.index;
        py.detach(|| {
            let mut t = self.lock()?;
            let n = tokenloom_core::error::check_index("node", node, t.nodes().len()).map_err(to_py)?;
            t.expand(index, n as u32).map_err(to_py)
        })
    }

    /// Nodes that can still contribute (live trie state, or unexpanded with children to come).
    ///
    /// Returns:
    ///     list[int].
    fn active(&self) -> PyResult<Vec<u32>> {
        Ok(self.lock()?.active().to_vec())
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
    ///     IndexError: unknown node. TypeError: not an int.
    #[pyo3(signature = (node))]
    fn info(&self, node: &Bound<'_, PyAny>) -> PyResult<(i64, i64, u32, u32, bool, bool)> {
        let node = args::id_i64("node", node)?;
        let t = self.lock()?;
        let i = tokenloom_core::error::check_index("node", node, t.nodes().len()).map_err(to_py)?;
        let n = t.node(i as u32).map_err(to_py)?;
        let opt = |v: Option<u32>| v.map_or(-1, i64::from);
        Ok((opt(n.token_id()), opt(n.parent_id()), n.start, n.end, n.expanded, n.live()))
    }

    /// Token path of a node from the root.
    ///
    /// Args:
    ///     node (int): node id.
    ///
    /// Returns:
    ///     list[int].
    ///
    /// Raises:
    ///     IndexError: unknown node. TypeError: not an int.
    #[pyo3(signature = (node))]
    fn path(&self, node: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
        let node = args::id_i64("node", node)?;
        let t = self.lock()?;
        let i = tokenloom_core::error::check_index("node", node, t.nodes().len()).map_err(to_py)?;
        t.path(i as u32).map_err(to_py)
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
    ///     k (int): how many to return at most (>= 0).
    ///
    /// Returns:
    ///     list[tuple[int, int, float]]: (node, token, score) by decreasing score.
    ///
    /// Raises:
    ///     ValueError: lengths differ, a q has the wrong length, a negative k.
    ///     IndexError: unknown node. TypeError: a non-int node or k.
    #[pyo3(signature = (nodes, qs, scales, k))]
    fn top_straddling<'py>(
        &self,
        py: Python<'py>,
        nodes: &Bound<'py, PyAny>,
        qs: Vec<PyReadonlyArray1<'py, f32>>,
        scales: Vec<f64>,
        #[pyo3(from_py_with = k_straddling)] k: usize,
    ) -> PyResult<Vec<(u32, u32, f64)>> {
        let ids = self.node_ids(nodes)?;
        let mut views = Vec::with_capacity(qs.len());
        for q in &qs {
            views.push(slice1("qs", q)?);
        }
        let index = &self.index;
        py.detach(|| self.lock()?.top_straddling(index, &ids, &views, &scales, k).map_err(to_py))
    }

    /// Which unexpanded nodes can still matter and the exact paths below them, inside the
    /// prefix, that will need a distribution (so one forward can compute them all). A path
    /// matters when it ends at the prefix end, a token starts with the rest of the prefix after
    /// it, or an allowed token leads to a path that matters; one that does not never will.
    ///
    /// Args:
    ///     nodes (list[int]): unexpanded node ids.
    ///     limit (int): most rows to list (>= 0).
    ///
    /// Returns:
    ///     tuple[list[bool], list[tuple[int, int, int]]] | None: ``matters`` per node, and rows
    ///     ``(i, parent, token)`` below ``nodes[i]`` (``parent`` -1: a child of ``nodes[i]``,
    ///     else an earlier row index), a row after its parent; None past ``limit`` rows.
    ///
    /// Raises:
    ///     IndexError: unknown node. ValueError: an expanded node or a negative limit.
    ///     TypeError: a non-int node or limit.
    #[pyo3(signature = (nodes, limit))]
    #[allow(clippy::type_complexity)]
    fn extension_plan(
        &self,
        py: Python<'_>,
        nodes: &Bound<'_, PyAny>,
        limit: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(Vec<bool>, Vec<(u32, i64, u32)>)>> {
        let ids = self.node_ids(nodes)?;
        let limit = args::uint("limit", limit, 0, u32::MAX as u64)? as usize;
        let index = &self.index;
        py.detach(|| self.lock()?.extension_plan(index, &ids, limit).map_err(to_py))
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
    ///     TypeError: a non-int node.
    #[pyo3(signature = (nodes, qs, scales))]
    fn byte_masses<'py>(
        &self,
        py: Python<'py>,
        nodes: &Bound<'py, PyAny>,
        qs: Vec<PyReadonlyArray1<'py, f32>>,
        scales: Vec<f64>,
    ) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let nodes = self.node_ids(nodes)?;
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
        for q in &qs {
            let s = slice1("qs", q)?;
            if s.len() != width {
                return Err(PyValueError::new_err(format!("qs: expected length {width}, got {}", s.len())));
            }
            views.push(s);
        }
        let index = &self.index;
        let out = py.detach(|| -> PyResult<Vec<f64>> {
            let t = self.lock()?;
            let mut out = [0.0f64; 256];
            let mut exact = 0.0f64;
            for ((&n, q), &sc) in nodes.iter().zip(&views).zip(&scales) {
                let st = t.node(n).map_err(to_py)?.state;
                if st != DEAD {
                    index.trie.child_masses(st, q, sc, &mut out);
                    let e: f64 = index.trie.ending_at(st).iter().map(|&t| q[t as usize] as f64).sum();
                    exact += sc * e;
                }
            }
            let mut v = out.to_vec();
            v.push(exact);
            Ok(v)
        })?;
        Ok(out.into_pyarray(py))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ByteIndex>()?;
    m.add_class::<CoverTree>()?;
    Ok(())
}
