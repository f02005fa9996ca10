//! Bindings of `tokenloom_core::{template, recycling}`: the `TokenRecycler` class, its
//! `DraftTree`, and the template helpers.

use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use tokenloom_core::limits::{MAX_RECYCLER_CELLS, MAX_VOCAB};
use tokenloom_core::spec::recycling::{DraftTree, TokenRecycler};
use tokenloom_core::spec::template::{self, Template};

use crate::args;
use crate::ints::{Ids1, Ids2};
use crate::error::{slice1, slice2, to_py};

/// A template argument: a name (str) or a list of rank paths (ints only; a rank too large for
/// the kernel is a ValueError).
fn template_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Template> {
    if let Ok(name) = obj.extract::<String>() {
        return Template::named(&name).map_err(to_py);
    }
    let shape_error = || {
        PyTypeError::new_err(format!(
            "template: expected a name (one of {:?}) or a list of rank paths (list[list[int]])",
            template::template_names()
        ))
    };
    let mut paths = Vec::new();
    for (i, path) in args::items("template", obj).map_err(|_| shape_error())?.iter().enumerate() {
        let mut ranks = Vec::new();
        for r in args::items("template path", path).map_err(|_| shape_error())? {
            let big = |v| PyValueError::new_err(format!("template path {i}: ranks must be in [0, 2**32), got {v}"));
            let rank = args::i64_or("template rank", &r, big).map_err(|e| {
                if e.is_instance_of::<PyTypeError>(obj.py()) {
                    shape_error()
                } else {
                    e
                }
            })?;
            ranks.push(rank);
        }
        paths.push(ranks);
    }
    Template::from_paths(&paths).map_err(to_py)
}

fn paths_to_py(t: &Template) -> Vec<Vec<u32>> {
    t.paths().to_vec()
}

/// A drafted token tree: node 0 is the root, parents precede children.
///
/// Attributes:
///     tokens (np.ndarray[int64], shape [T]): token of each node (tokens[0] is the root token).
///     parents (np.ndarray[int64], shape [T]): parent of each node; parents[0] == -1.
///     depths (np.ndarray[int64], shape [T]): depth of each node (root 0); position = past_len + depth.
///
/// The arrays are built once: ``tree.tokens`` is the same array object at every access (it is
/// writable; writing to it changes the tree).
#[pyclass(name = "DraftTree", module = "tokenloom._core", frozen)]
pub struct PyDraftTree {
    tokens: Py<PyArray1<i64>>,
    parents: Py<PyArray1<i64>>,
    depths: Py<PyArray1<i64>>,
    len: usize,
}

impl PyDraftTree {
    fn new(py: Python<'_>, tree: DraftTree) -> Self {
        PyDraftTree {
            len: tree.tokens.len(),
            tokens: tree.tokens.into_pyarray(py).unbind(),
            parents: tree.parents.into_pyarray(py).unbind(),
            depths: tree.depths.into_pyarray(py).unbind(),
        }
    }
}

#[pymethods]
impl PyDraftTree {
    #[getter]
    fn tokens<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.tokens.bind(py).clone()
    }

    #[getter]
    fn parents<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.parents.bind(py).clone()
    }

    #[getter]
    fn depths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.depths.bind(py).clone()
    }

    fn __len__(&self) -> usize {
        self.len
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let tokens = self.tokens.bind(py).to_vec().unwrap_or_default();
        format!("DraftTree(nodes={}, tokens={tokens:?})", self.len)
    }
}

/// A validated, compiled tree template (rank paths in canonical order, node i + 1 = path i).
///
/// Args:
///     template (str | list[list[int]]): a name ("2.2.2", "2.2.2-N") or rank paths.
///
/// Raises:
///     ValueError: empty, duplicate, negative, not subtree-closed paths, or an unknown name.
///     TypeError: neither a str nor a list of int lists.
#[pyclass(name = "Template", module = "tokenloom._core", frozen)]
pub struct PyTemplate {
    inner: Template,
}

#[pymethods]
impl PyTemplate {
    #[new]
    #[pyo3(signature = (template))]
    fn new(template: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(PyTemplate { inner: template_from_py(template)? })
    }

    /// list[list[int]]: the rank paths in canonical order.
    #[getter]
    fn paths(&self) -> Vec<Vec<u32>> {
        paths_to_py(&self.inner)
    }

    /// int: tree nodes, the root included (T).
    #[getter]
    fn tree_size(&self) -> usize {
        self.inner.num_nodes()
    }

    /// int: the largest rank used (a recycler needs k > max_rank).
    #[getter]
    fn max_rank(&self) -> u32 {
        self.inner.max_rank()
    }

    fn __len__(&self) -> usize {
        self.inner.num_nodes()
    }

    fn __repr__(&self) -> String {
        format!("Template(tree_size={})", self.inner.num_nodes())
    }
}

/// Token Recycling state: an adjacency matrix [vocab_size, k] (u32) of candidate next tokens per
/// token, and the static tree template it drafts with.
///
/// Thread-safe: the state sits behind a read-write lock (drafts share it, updates take it
/// alone, without the GIL), so threads sharing one recycler see the calls in some order.
///
/// Args:
///     vocab_size (int): rows of the matrix (the model's vocabulary size), in [1, 2**24].
///     k (int): candidates kept per token, >= 1 (8 in the paper); vocab_size * k <= 2**28.
///     template (str | list[list[int]]): "2.2.2" (the paper's 80 nodes), a nested "2.2.2-N"
///         (N in 1, 4, 8, 16, 24, 32, 48, 64, 80), or rank paths such as [[0], [1], [0, 0]].
///
/// Raises:
///     ValueError: vocab_size or k out of range (checked before allocating), the template is
///         empty / not subtree-closed / has duplicate paths / uses a rank >= k, or an unknown
///         template name.
///     TypeError: vocab_size or k is not an int; template is neither a str nor a list of int
///         lists.
#[pyclass(name = "TokenRecycler", module = "tokenloom._core", frozen)]
pub struct PyTokenRecycler {
    state: RwLock<State>,
}

pub(crate) struct State {
    pub(crate) rec: TokenRecycler,
    template: Template,
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err("TokenRecycler: a previous call panicked; the state is unusable")
}

impl PyTokenRecycler {
    pub(crate) fn read(&self) -> PyResult<RwLockReadGuard<'_, State>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write(&self) -> PyResult<RwLockWriteGuard<'_, State>> {
        self.state.write().map_err(|_| poisoned())
    }

    fn with(rec: TokenRecycler, template: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let template = match template {
            Some(t) => template_from_py(t)?,
            None => Template::named("2.2.2").map_err(to_py)?,
        };
        rec.check_template(&template).map_err(to_py)?;
        Ok(PyTokenRecycler { state: RwLock::new(State { rec, template }) })
    }
}

fn vocab_size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("vocab_size", args::size("vocab_size", obj, 1, MAX_VOCAB))
}

fn k_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("k", args::size("k", obj, 1, MAX_RECYCLER_CELLS))
}

#[pymethods]
impl PyTokenRecycler {
    #[new]
    #[pyo3(signature = (vocab_size, k = 8, template = None))]
    fn new(
        py: Python<'_>,
        #[pyo3(from_py_with = vocab_size_arg)] vocab_size: usize,
        #[pyo3(from_py_with = k_arg)] k: usize,
        template: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rec = py.detach(|| TokenRecycler::new(vocab_size, k)).map_err(to_py)?;
        Self::with(rec, template)
    }

    /// int: rows of the adjacency matrix.
    #[getter]
    fn vocab_size(&self) -> PyResult<usize> {
        Ok(self.read()?.rec.vocab())
    }

    /// int: candidates per token.
    #[getter]
    fn k(&self) -> PyResult<usize> {
        Ok(self.read()?.rec.k())
    }

    /// list[list[int]]: the template's rank paths in canonical order (node i + 1 = path i).
    #[getter]
    fn template(&self) -> PyResult<Vec<Vec<u32>>> {
        Ok(paths_to_py(&self.read()?.template))
    }

    /// int: tree nodes per draft, the root included (T).
    #[getter]
    fn tree_size(&self) -> PyResult<usize> {
        Ok(self.read()?.template.num_nodes())
    }

    /// Replace the drafting template.
    ///
    /// Args:
    ///     template (str | list[list[int]]): as in the constructor.
    ///
    /// Raises:
    ///     ValueError / TypeError: as in the constructor.
    #[pyo3(signature = (template))]
    fn set_template(&self, template: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = template_from_py(template)?;
        let mut st = self.write()?;
        st.rec.check_template(&t).map_err(to_py)?;
        st.template = t;
        Ok(())
    }

    /// Draft the template's tree below `root_token` (one adjacency gather per node, BFS order).
    ///
    /// Args:
    ///     root_token (int): the last token of the sequence (not yet verified-forwarded).
    ///     template (Template | None): draft with this compiled template instead of the
    ///         recycler's own (a drafter owns its template; the recycler is shared state).
    ///
    /// Returns:
    ///     DraftTree: tokens / parents / depths, each int64 [T].
    ///
    /// Raises:
    ///     IndexError: root_token outside [0, vocab_size).
    ///     ValueError: the template uses a rank >= k.
    ///     TypeError: root_token is not an int.
    #[pyo3(signature = (root_token, template = None))]
    fn draft(
        &self,
        py: Python<'_>,
        root_token: &Bound<'_, PyAny>,
        template: Option<PyRef<'_, PyTemplate>>,
    ) -> PyResult<PyDraftTree> {
        // A microsecond gather: it runs with the GIL held (the lock is never held while
        // waiting for the GIL, so this cannot deadlock).
        let st = self.read()?;
        let root = args::id("root token", root_token, st.rec.vocab())?;
        let t = match &template {
            Some(t) => {
                st.rec.check_template(&t.inner).map_err(to_py)?;
                &t.inner
            }
            None => &st.template,
        };
        let tree = st.rec.draft(root, t).map_err(to_py)?;
        drop(st);
        Ok(PyDraftTree::new(py, tree))
    }

    /// Overwrite the row of every tree position with the target's top-k after it.
    ///
    /// For i = 0..n-1 in order, row tokens[i] := topk_ids[i]; among duplicated tokens the last
    /// position wins. Nothing is written when the input is invalid.
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): token of each position.
    ///     topk_ids (np.ndarray[int64], shape [n, k]): top-k token ids after each position, best first.
    ///
    /// Raises:
    ///     ValueError: shapes differ from [n] / [n, k].
    ///     IndexError: an id outside [0, vocab_size).
    #[pyo3(signature = (tokens, topk_ids))]
    fn update(
        &self,
        py: Python<'_>,
        tokens: Ids1<'_>,
        topk_ids: Ids2<'_>,
    ) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        let (ids, _, width) = slice2("topk_ids", &topk_ids)?;
        py.detach(|| self.write()?.rec.update(t, ids, width).map_err(to_py))
    }

    /// Move-to-front, the update rule from committed tokens alone (no top-k): for i = 0..n-1 in
    /// order, successors[i] moves to rank 0 of row tokens[i], the row's other candidates keep
    /// their order below it (copies of it are dropped), and the row is padded with it to k.
    /// Rows listed in `empty` start with no candidates (rows never written), so a new row
    /// becomes [s, s, ..., s]. Every id is checked before any row is written: an error writes
    /// nothing.
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): the row of each pair.
    ///     successors (np.ndarray[int64], shape [n]): the token that followed tokens[i].
    ///     empty (np.ndarray[int64] | None, shape [m]): rows to read as empty at their first
    ///         pair (None: none).
    ///
    /// Raises:
    ///     ValueError: tokens and successors differ in length, an array is not 1-D.
    ///     IndexError: an id outside [0, vocab_size).
    #[pyo3(signature = (tokens, successors, empty = None))]
    fn move_to_front(
        &self,
        py: Python<'_>,
        tokens: Ids1<'_>,
        successors: Ids1<'_>,
        empty: Option<Ids1<'_>>,
    ) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        let s = slice1("successors", &successors)?;
        let e: &[i64] = match &empty {
            Some(e) => slice1("empty", e)?,
            None => &[],
        };
        py.detach(|| self.write()?.rec.move_to_front(t, s, e).map_err(to_py))
    }

    /// Seed rows from the prompt's prefill: row prompt[i] := topk_ids[i] (later positions win).
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): the prompt tokens.
    ///     topk_ids (np.ndarray[int64], shape [n, k]): top-k ids of the prefill logits at each position.
    ///
    /// Raises:
    ///     ValueError: shapes differ from [n] / [n, k].
    ///     IndexError: an id outside [0, vocab_size).
    #[pyo3(signature = (tokens, topk_ids))]
    fn seed_from_prefill(
        &self,
        py: Python<'_>,
        tokens: Ids1<'_>,
        topk_ids: Ids2<'_>,
    ) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        let (ids, _, width) = slice2("topk_ids", &topk_ids)?;
        py.detach(|| self.write()?.rec.seed_from_prefill(t, ids, width).map_err(to_py))
    }

    /// Rank of next_tokens[i] in row tokens[i] (first match), or -1 when absent.
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]).
    ///     next_tokens (np.ndarray[int64], shape [n]).
    ///
    /// Returns:
    ///     np.ndarray[int64], shape [n].
    ///
    /// Raises:
    ///     ValueError: lengths differ.  IndexError: an id outside [0, vocab_size).
    #[pyo3(signature = (tokens, next_tokens))]
    fn ranks_of<'py>(
        &self,
        py: Python<'py>,
        tokens: Ids1<'py>,
        next_tokens: Ids1<'py>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let t = slice1("tokens", &tokens)?;
        let n = slice1("next_tokens", &next_tokens)?;
        let ranks = py.detach(|| self.read()?.rec.ranks_of(t, n).map_err(to_py))?;
        Ok(ranks.into_pyarray(py))
    }

    /// The rows of some tokens (their candidate next tokens, best first).
    ///
    /// Args:
    ///     tokens (np.ndarray[int64], shape [n]): token ids.
    ///
    /// Returns:
    ///     np.ndarray[uint32], shape [n, k].
    ///
    /// Raises:
    ///     IndexError: an id outside [0, vocab_size).
    #[pyo3(signature = (tokens))]
    fn rows<'py>(&self, py: Python<'py>, tokens: Ids1<'py>) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let t = slice1("tokens", &tokens)?;
        let (flat, k) = py.detach(|| -> PyResult<_> {
            let st = self.read()?;
            Ok((st.rec.rows(t).map_err(to_py)?, st.rec.k()))
        })?;
        flat.into_pyarray(py).reshape([t.len(), k])
    }

    /// A copy of the adjacency matrix.
    ///
    /// Returns:
    ///     np.ndarray[uint32], shape [vocab_size, k].
    fn adjacency<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let (flat, shape) = py.detach(|| -> PyResult<_> {
            let st = self.read()?;
            Ok((st.rec.adjacency().to_vec(), [st.rec.vocab(), st.rec.k()]))
        })?;
        flat.into_pyarray(py).reshape(shape)
    }

    /// Save the matrix (not the template) to `path`: a versioned little-endian binary file
    /// (magic "TLRECYCL", version, vocab, k, then vocab * k u32).
    ///
    /// Args:
    ///     path (str | os.PathLike): destination (written through a temporary file).
    ///
    /// Raises:
    ///     OSError: the file cannot be written.
    #[pyo3(signature = (path))]
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read()?.rec.save(&path).map_err(to_py))
    }

    /// Load a matrix written by `save`. The header is checked (sizes within the caps of the
    /// constructor, file length matching) before the matrix is allocated.
    ///
    /// Args:
    ///     path (str | os.PathLike): the file.
    ///     vocab_size (int | None): when given, must equal the file's vocabulary size.
    ///     k (int | None): when given, must equal the file's k.
    ///     template (str | list[list[int]]): drafting template (default "2.2.2").
    ///
    /// Returns:
    ///     TokenRecycler.
    ///
    /// Raises:
    ///     OSError: the file cannot be read.
    ///     ValueError: not a recycler file, unsupported version, sizes out of range, truncated,
    ///         corrupt, or a vocab_size / k mismatch (the message names both values); bad
    ///         template.
    #[staticmethod]
    #[pyo3(signature = (path, vocab_size = None, k = None, template = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        #[pyo3(from_py_with = args::opt_vocab_size)] vocab_size: Option<usize>,
        #[pyo3(from_py_with = args::opt_k_candidates)] k: Option<usize>,
        template: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rec = py.detach(|| TokenRecycler::load(&path, vocab_size, k)).map_err(to_py)?;
        Self::with(rec, template)
    }

    /// The matrix (not the template) as bytes: the same versioned format as `save`.
    ///
    /// Returns:
    ///     bytes: header (magic "TLRECYCL", version, vocab, k) then vocab * k u32.
    #[pyo3(signature = ())]
    fn to_bytes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let data = py.detach(|| -> PyResult<Vec<u8>> { Ok(self.read()?.rec.to_bytes()) })?;
        Ok(pyo3::types::PyBytes::new(py, &data))
    }

    /// A recycler from `to_bytes` output, validated like `load` (header, sizes, length, every
    /// entry < vocab_size) before the matrix is allocated.
    ///
    /// Args:
    ///     data (bytes): the serialised matrix.
    ///     vocab_size (int | None): when given, must equal the data's vocabulary size.
    ///     k (int | None): when given, must equal the data's k.
    ///     template (str | list[list[int]]): drafting template (default "2.2.2").
    ///
    /// Returns:
    ///     TokenRecycler.
    ///
    /// Raises:
    ///     ValueError: not recycler data, unsupported version, truncated, corrupt, or a
    ///         vocab_size / k mismatch; bad template.
    #[staticmethod]
    #[pyo3(signature = (data, vocab_size = None, k = None, template = None))]
    fn from_bytes(
        py: Python<'_>,
        data: &[u8],
        #[pyo3(from_py_with = args::opt_vocab_size)] vocab_size: Option<usize>,
        #[pyo3(from_py_with = args::opt_k_candidates)] k: Option<usize>,
        template: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rec = py.detach(|| TokenRecycler::from_bytes(data, vocab_size, k)).map_err(to_py)?;
        Self::with(rec, template)
    }

    fn __repr__(&self) -> PyResult<String> {
        let st = self.read()?;
        Ok(format!(
            "TokenRecycler(vocab_size={}, k={}, tree_size={})",
            st.rec.vocab(),
            st.rec.k(),
            st.template.num_nodes()
        ))
    }
}

/// Names of the built-in templates.
///
/// Returns:
///     list[str]: "2.2.2" and the nested "2.2.2-N".
#[pyfunction]
#[pyo3(signature = ())]
pub fn template_names() -> Vec<String> {
    template::template_names()
}

/// Validate a template and return its rank paths in canonical order (by depth, then
/// lexicographic): node i + 1 of a drafted tree is path i.
///
/// Args:
///     template (str | list[list[int]]): a name or rank paths.
///
/// Returns:
///     list[list[int]]: the canonical paths.
///
/// Raises:
///     ValueError: empty, duplicate, negative rank, not subtree-closed, unknown name.
///     TypeError: neither a str nor a list of int lists.
#[pyfunction]
#[pyo3(signature = (template))]
pub fn template_paths(template: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    Ok(paths_to_py(&template_from_py(template)?))
}

/// Parent array of a template's tree (root included).
///
/// Args:
///     template (str | list[list[int]]): a name or rank paths.
///
/// Returns:
///     np.ndarray[int64], shape [T]: parents[0] == -1, parents[i] < i.
///
/// Raises:
///     ValueError / TypeError: as in `template_paths`.
#[pyfunction]
#[pyo3(signature = (template))]
pub fn template_parents<'py>(py: Python<'py>, template: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    Ok(template_from_py(template)?.parents().to_vec().into_pyarray(py))
}

/// The 80 paths of "2.2.2" in nested order: decreasing prior acceptance, every prefix
/// subtree-closed ("2.2.2-N" is the first N).
///
/// Returns:
///     list[list[int]].
#[pyfunction]
#[pyo3(signature = ())]
pub fn nested_template_order() -> Vec<Vec<u32>> {
    template::nested_order_2_2_2()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenRecycler>()?;
    m.add_class::<PyDraftTree>()?;
    m.add_class::<PyTemplate>()?;
    m.add_function(wrap_pyfunction!(template_names, m)?)?;
    m.add_function(wrap_pyfunction!(template_paths, m)?)?;
    m.add_function(wrap_pyfunction!(template_parents, m)?)?;
    m.add_function(wrap_pyfunction!(nested_template_order, m)?)?;
    Ok(())
}
