//! Bindings of `tokenloom_core::spec::suffix`: the per-request suffix index and the bounded
//! cross-request suffix cache.

use std::sync::{Mutex, MutexGuard};

use numpy::{IntoPyArray, PyArray1};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokenloom_core::spec::suffix::{
    check_token, CacheConfig, Cursor, SuffixCache, SuffixDraft, SuffixTrie, MAX_SUFFIX_DEPTH, MIN_CACHE_BYTES,
};
use tokenloom_core::limits::MAX_TREE_NODES;

use crate::args;
use crate::ints::{Ids1};
use crate::error::{slice1, to_py};

type Draft<'py> = (
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<i64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<i64>>,
    usize,
);

fn depth_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("max_depth", args::size("max_depth", obj, 1, MAX_SUFFIX_DEPTH))
}

fn max_bytes_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("max_bytes", args::size("max_bytes", obj, MIN_CACHE_BYTES, usize::MAX >> 1))
}

fn opt_vocab_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    args::opt_vocab_size(obj)
}

fn opt_requests_arg(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if obj.is_none() {
        return Ok(None);
    }
    args::unnamed("max_requests", args::size("max_requests", obj, 1, usize::MAX >> 1)).map(Some)
}

pub(crate) fn to_ids(what: &'static str, xs: &[i64]) -> PyResult<Vec<u32>> {
    xs.iter().map(|&t| check_token(what, t).map_err(to_py)).collect()
}

pub(crate) fn max_match_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("max_match", args::size("max_match", obj, 1, MAX_SUFFIX_DEPTH))
}

pub(crate) fn max_nodes_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("max_nodes", args::size("max_nodes", obj, 1, MAX_TREE_NODES))
}

fn min_prob_arg(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    let p = args::unnamed("min_prob", args::real("min_prob", obj))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "min_prob: expected a float in [0, 1], got {p}"
        )));
    }
    Ok(p)
}

fn draft_to_py(py: Python<'_>, d: SuffixDraft) -> Draft<'_> {
    (
        d.tokens.into_pyarray(py),
        d.parents.into_pyarray(py),
        d.probs.into_pyarray(py),
        d.support.into_pyarray(py),
        d.match_len,
    )
}

fn poisoned(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("{what}: a previous call panicked; the state is unusable"))
}

/// A suffix index over one growing token sequence (a request's prompt and output): every
/// substring of at most `max_depth` tokens with its occurrence count.
///
/// Args:
///     max_depth (int): longest substring stored (match + continuation), in [1, 256].
///
/// Thread-safe (a lock), though one request owns one index.
///
/// Raises:
///     ValueError: max_depth out of range.  TypeError: not an int.
#[pyclass(module = "tokenloom._core", name = "SuffixIndex", frozen)]
pub struct PySuffixIndex {
    inner: Mutex<(SuffixTrie, Cursor)>,
}

impl PySuffixIndex {
    pub(crate) fn lock(&self) -> PyResult<MutexGuard<'_, (SuffixTrie, Cursor)>> {
        self.inner.lock().map_err(|_| poisoned("SuffixIndex"))
    }
}

#[pymethods]
impl PySuffixIndex {
    #[new]
    #[pyo3(signature = (max_depth = 24))]
    fn new(#[pyo3(from_py_with = depth_arg)] max_depth: usize) -> PyResult<Self> {
        Ok(PySuffixIndex { inner: Mutex::new((SuffixTrie::new(max_depth).map_err(to_py)?, Cursor::default())) })
    }

    /// Appends tokens to the sequence. O(len(tokens) * max_depth).
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): token ids in [0, 2**24).
    ///
    /// Raises:
    ///     IndexError: an id out of range (nothing is appended).
    #[pyo3(signature = (tokens))]
    fn extend(&self, py: Python<'_>, tokens: Ids1<'_>) -> PyResult<()> {
        let ids = to_ids("tokens", slice1("tokens", &tokens)?)?;
        py.detach(|| {
            let mut g = self.lock()?;
            let (trie, cur) = &mut *g;
            trie.extend(cur, &ids);
            Ok(())
        })
    }

    /// The continuation tree of the longest earlier match of the context's end.
    ///
    /// Args:
    ///     context (np.ndarray[int64], shape [n]): the context's last tokens (its last token is
    ///         the root of the draft).
    ///     max_match (int): longest suffix of the context matched, in [1, 256].
    ///     max_nodes (int): most nodes returned, in [1, 2**24].
    ///     min_prob (float): smallest path probability of a returned node, in [0, 1].
    ///
    /// Returns:
    ///     tuple: (tokens int64 [m], parents int64 [m] (-1: child of the root, else an earlier
    ///     index), probs float64 [m] (count over the siblings' total), support int64 [m] (that
    ///     total), match_len int (0: no match, m == 0)), best first by path probability.
    ///
    /// Raises:
    ///     ValueError: a size outside its range, min_prob outside [0, 1].  IndexError: a bad token id.
    #[pyo3(signature = (context, max_match = 16, max_nodes = 16, min_prob = 0.0))]
    fn speculate<'py>(
        &self,
        py: Python<'py>,
        context: Ids1<'py>,
        #[pyo3(from_py_with = max_match_arg)] max_match: usize,
        #[pyo3(from_py_with = max_nodes_arg)] max_nodes: usize,
        #[pyo3(from_py_with = min_prob_arg)] min_prob: f64,
    ) -> PyResult<Draft<'py>> {
        let ctx = to_ids("context", slice1("context", &context)?)?;
        let d = py.detach(|| -> PyResult<_> { Ok(self.lock()?.0.speculate(&ctx, max_match, max_nodes, min_prob)) })?;
        Ok(draft_to_py(py, d))
    }

    /// Tokens appended so far.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.lock()?.1.len())
    }

    #[getter]
    fn max_depth(&self) -> PyResult<usize> {
        Ok(self.lock()?.0.max_depth())
    }

    /// Live trie nodes, the root included.
    #[getter]
    fn num_nodes(&self) -> PyResult<usize> {
        Ok(self.lock()?.0.num_nodes())
    }

    /// Bytes held by the trie.
    #[getter]
    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(self.lock()?.0.memory_bytes())
    }

    fn __repr__(&self) -> PyResult<String> {
        let g = self.lock()?;
        Ok(format!("SuffixIndex(max_depth={}, tokens={}, nodes={})", g.0.max_depth(), g.1.len(), g.0.num_nodes()))
    }
}

/// Earlier requests' token sequences in one suffix trie, bounded: `max_bytes` caps the memory
/// (trie nodes, child index, stored sequences) and `max_requests` the number of sequences;
/// when a new one would not fit, the oldest are evicted first (a sequence too large for the
/// cap on its own keeps as many of its last tokens as fit). Inserting a sequence of n tokens is
/// O(n * max_depth).
///
/// Args:
///     max_depth (int): longest substring stored, in [1, 256].
///     max_bytes (int): memory cap in bytes (>= 4096).
///     max_requests (int | None): most sequences kept (None: only the memory cap).
///     vocab_size (int | None): the vocabulary ids must lie in, in [1, 2**24] (None: any id
///         below 2**24).
///
/// Thread-safe: one lock; several requests may share one cache.
///
/// Raises:
///     ValueError: a size out of range.  TypeError: a size that is not an int.
#[pyclass(module = "tokenloom._core", name = "SuffixCache", frozen)]
pub struct PySuffixCache {
    inner: Mutex<SuffixCache>,
}

impl PySuffixCache {
    pub(crate) fn lock(&self) -> PyResult<MutexGuard<'_, SuffixCache>> {
        self.inner.lock().map_err(|_| poisoned("SuffixCache"))
    }
}

#[pymethods]
impl PySuffixCache {
    #[new]
    #[pyo3(signature = (max_depth = 24, max_bytes = 67108864, max_requests = None, *, vocab_size = None))]
    fn new(
        #[pyo3(from_py_with = depth_arg)] max_depth: usize,
        #[pyo3(from_py_with = max_bytes_arg)] max_bytes: usize,
        #[pyo3(from_py_with = opt_requests_arg)] max_requests: Option<usize>,
        #[pyo3(from_py_with = opt_vocab_arg)] vocab_size: Option<usize>,
    ) -> PyResult<Self> {
        let cfg = CacheConfig { max_depth, max_bytes, max_docs: max_requests, vocab_size };
        Ok(PySuffixCache { inner: Mutex::new(SuffixCache::new(cfg).map_err(to_py)?) })
    }

    /// Inserts one sequence (evicting the oldest ones first when it would not fit).
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): token ids in [0, vocab_size) (or [0, 2**24)).
    ///
    /// Raises:
    ///     IndexError: an id out of range (nothing is inserted).
    #[pyo3(signature = (tokens))]
    fn insert(&self, py: Python<'_>, tokens: Ids1<'_>) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        py.detach(|| self.lock()?.insert(t).map_err(to_py))
    }

    /// As `SuffixIndex.speculate`, over the cached sequences.
    #[pyo3(signature = (context, max_match = 16, max_nodes = 16, min_prob = 0.0))]
    fn speculate<'py>(
        &self,
        py: Python<'py>,
        context: Ids1<'py>,
        #[pyo3(from_py_with = max_match_arg)] max_match: usize,
        #[pyo3(from_py_with = max_nodes_arg)] max_nodes: usize,
        #[pyo3(from_py_with = min_prob_arg)] min_prob: f64,
    ) -> PyResult<Draft<'py>> {
        let ctx = to_ids("context", slice1("context", &context)?)?;
        let d = py.detach(|| -> PyResult<_> {
            Ok(self.lock()?.trie().speculate(&ctx, max_match, max_nodes, min_prob))
        })?;
        Ok(draft_to_py(py, d))
    }

    /// Forgets every sequence.
    fn clear(&self) -> PyResult<()> {
        self.lock()?.clear();
        Ok(())
    }

    /// The cached sequences, oldest first (a list of int64 arrays).
    fn sequences<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyArray1<i64>>>> {
        let docs: Vec<Vec<i64>> = self.lock()?.docs().map(|d| d.iter().map(|&t| i64::from(t)).collect()).collect();
        Ok(docs.into_iter().map(|d| d.into_pyarray(py)).collect())
    }

    /// The cached sequences as bytes (magic "TLSUFFX", version, max_depth, then each sequence's
    /// length and u32 ids, little endian); the caps are the loader's.
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let b = self.lock()?.to_bytes();
        Ok(PyBytes::new(py, &b))
    }

    /// A cache holding the sequences of `data` (from `to_bytes`), inserted oldest first under
    /// the caps and the vocabulary given here.
    ///
    /// Raises:
    ///     ValueError: not suffix cache bytes, another version, truncated or corrupt data, or
    ///         an id outside [0, vocab_size) when vocab_size is given.
    #[staticmethod]
    #[pyo3(signature = (data, *, max_bytes = 67108864, max_requests = None, vocab_size = None))]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        #[pyo3(from_py_with = max_bytes_arg)] max_bytes: usize,
        #[pyo3(from_py_with = opt_requests_arg)] max_requests: Option<usize>,
        #[pyo3(from_py_with = opt_vocab_arg)] vocab_size: Option<usize>,
    ) -> PyResult<Self> {
        // The depth is the data's (bytes 12..16); from_bytes validates it again.
        let depth = data.get(12..16).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize).unwrap_or(1);
        let cfg = CacheConfig { max_depth: depth.clamp(1, MAX_SUFFIX_DEPTH), max_bytes, max_docs: max_requests, vocab_size };
        let cache = py.detach(|| SuffixCache::from_bytes(data, cfg)).map_err(to_py)?;
        Ok(PySuffixCache { inner: Mutex::new(cache) })
    }

    #[getter]
    fn max_depth(&self) -> PyResult<usize> {
        Ok(self.lock()?.config().max_depth)
    }

    #[getter]
    fn max_bytes(&self) -> PyResult<usize> {
        Ok(self.lock()?.config().max_bytes)
    }

    #[getter]
    fn max_requests(&self) -> PyResult<Option<usize>> {
        Ok(self.lock()?.config().max_docs)
    }

    /// The vocabulary the ids lie in (None: any id below 2**24).
    #[getter]
    fn vocab_size(&self) -> PyResult<Option<usize>> {
        Ok(self.lock()?.config().vocab_size)
    }

    /// The largest id held (None: empty).
    #[getter]
    fn max_token(&self) -> PyResult<Option<u32>> {
        Ok(self.lock()?.max_token())
    }

    /// Bytes held (trie, child index, sequences); never above max_bytes after an insert.
    #[getter]
    fn memory_bytes(&self) -> PyResult<usize> {
        Ok(self.lock()?.memory_bytes())
    }

    /// Sequences cached.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.lock()?.num_docs())
    }

    /// Tokens cached over all sequences.
    #[getter]
    fn num_tokens(&self) -> PyResult<usize> {
        Ok(self.lock()?.num_tokens())
    }

    /// Sequences evicted since creation.
    #[getter]
    fn evicted(&self) -> PyResult<u64> {
        Ok(self.lock()?.evicted())
    }

    fn __repr__(&self) -> PyResult<String> {
        let c = self.lock()?;
        Ok(format!(
            "SuffixCache(max_depth={}, max_bytes={}, requests={}, tokens={}, memory_bytes={})",
            c.config().max_depth,
            c.config().max_bytes,
            c.num_docs(),
            c.num_tokens(),
            c.memory_bytes()
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySuffixIndex>()?;
    m.add_class::<PySuffixCache>()?;
    Ok(())
}
