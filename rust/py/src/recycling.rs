//! Bindings of `tokenloom_core::{template, recycling}`: the `TokenRecycler` class, its
//! `DraftTree`, and the template helpers.

use std::path::PathBuf;

use numpy::{IntoPyArray, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use tokenloom_core::recycling::{DraftTree, TokenRecycler};
use tokenloom_core::template::{self, Template};

use crate::error::{slice1, slice2, to_py};

/// A template argument: a name (str) or a list of rank paths.
fn template_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Template> {
    if let Ok(name) = obj.extract::<String>() {
        return Template::named(&name).map_err(to_py);
    }
    let paths: Vec<Vec<i64>> = obj.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "template: expected a name (one of {:?}) or a list of rank paths (list[list[int]])",
            template::template_names()
        ))
    })?;
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
#[pyclass(name = "DraftTree", module = "tokenloom._core", frozen)]
pub struct PyDraftTree {
    inner: DraftTree,
}

#[pymethods]
impl PyDraftTree {
    #[getter]
    fn tokens<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.tokens.clone().into_pyarray(py)
    }

    #[getter]
    fn parents<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.parents.clone().into_pyarray(py)
    }

    #[getter]
    fn depths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        self.inner.depths.clone().into_pyarray(py)
    }

    fn __len__(&self) -> usize {
        self.inner.tokens.len()
    }

    fn __repr__(&self) -> String {
        format!("DraftTree(nodes={}, tokens={:?})", self.inner.tokens.len(), self.inner.tokens)
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
/// Args:
///     vocab_size (int): rows of the matrix (the model's vocabulary size), >= 1.
///     k (int): candidates kept per token, >= 1 (8 in the paper).
///     template (str | list[list[int]]): "2.2.2" (the paper's 80 nodes), a nested "2.2.2-N"
///         (N in 1, 4, 8, 16, 24, 32, 48, 64, 80), or rank paths such as [[0], [1], [0, 0]].
///
/// Raises:
///     ValueError: vocab_size or k is 0, the template is empty / not subtree-closed / has
///         duplicate paths / uses a rank >= k, or an unknown template name.
///     TypeError: template is neither a str nor a list of int lists.
#[pyclass(name = "TokenRecycler", module = "tokenloom._core")]
pub struct PyTokenRecycler {
    rec: TokenRecycler,
    template: Template,
}

#[pymethods]
impl PyTokenRecycler {
    #[new]
    #[pyo3(signature = (vocab_size, k = 8, template = None))]
    fn new(vocab_size: usize, k: usize, template: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let rec = TokenRecycler::new(vocab_size, k).map_err(to_py)?;
        let template = match template {
            Some(t) => template_from_py(t)?,
            None => Template::named("2.2.2").map_err(to_py)?,
        };
        rec.check_template(&template).map_err(to_py)?;
        Ok(PyTokenRecycler { rec, template })
    }

    /// int: rows of the adjacency matrix.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.rec.vocab()
    }

    /// int: candidates per token.
    #[getter]
    fn k(&self) -> usize {
        self.rec.k()
    }

    /// list[list[int]]: the template's rank paths in canonical order (node i + 1 = path i).
    #[getter]
    fn template(&self) -> Vec<Vec<u32>> {
        paths_to_py(&self.template)
    }

    /// int: tree nodes per draft, the root included (T).
    #[getter]
    fn tree_size(&self) -> usize {
        self.template.num_nodes()
    }

    /// Replace the drafting template.
    ///
    /// Args:
    ///     template (str | list[list[int]]): as in the constructor.
    ///
    /// Raises:
    ///     ValueError / TypeError: as in the constructor.
    #[pyo3(signature = (template))]
    fn set_template(&mut self, template: &Bound<'_, PyAny>) -> PyResult<()> {
        let t = template_from_py(template)?;
        self.rec.check_template(&t).map_err(to_py)?;
        self.template = t;
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
    #[pyo3(signature = (root_token, template = None))]
    fn draft(&self, root_token: i64, template: Option<PyRef<'_, PyTemplate>>) -> PyResult<PyDraftTree> {
        let t = match &template {
            Some(t) => {
                self.rec.check_template(&t.inner).map_err(to_py)?;
                &t.inner
            }
            None => &self.template,
        };
        let inner = self.rec.draft(root_token, t).map_err(to_py)?;
        Ok(PyDraftTree { inner })
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
        &mut self,
        py: Python<'_>,
        tokens: PyReadonlyArray1<'_, i64>,
        topk_ids: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        let (ids, _, width) = slice2("topk_ids", &topk_ids)?;
        let rec = &mut self.rec;
        py.detach(|| rec.update(t, ids, width)).map_err(to_py)
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
        &mut self,
        py: Python<'_>,
        tokens: PyReadonlyArray1<'_, i64>,
        topk_ids: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<()> {
        let t = slice1("tokens", &tokens)?;
        let (ids, _, width) = slice2("topk_ids", &topk_ids)?;
        let rec = &mut self.rec;
        py.detach(|| rec.seed_from_prefill(t, ids, width)).map_err(to_py)
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
        tokens: PyReadonlyArray1<'py, i64>,
        next_tokens: PyReadonlyArray1<'py, i64>,
    ) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let t = slice1("tokens", &tokens)?;
        let n = slice1("next_tokens", &next_tokens)?;
        Ok(self.rec.ranks_of(t, n).map_err(to_py)?.into_pyarray(py))
    }

    /// A copy of the adjacency matrix.
    ///
    /// Returns:
    ///     np.ndarray[uint32], shape [vocab_size, k].
    fn adjacency<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<u32>>> {
        let flat = self.rec.adjacency().to_vec().into_pyarray(py);
        flat.reshape([self.rec.vocab(), self.rec.k()])
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
        let rec = &self.rec;
        py.detach(|| rec.save(&path)).map_err(to_py)
    }

    /// Load a matrix written by `save`.
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
    ///     ValueError: not a recycler file, unsupported version, truncated, corrupt, or a
    ///         vocab_size / k mismatch (the message names both values); bad template.
    #[staticmethod]
    #[pyo3(signature = (path, vocab_size = None, k = None, template = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        vocab_size: Option<usize>,
        k: Option<usize>,
        template: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let rec = py.detach(|| TokenRecycler::load(&path, vocab_size, k)).map_err(to_py)?;
        let template = match template {
            Some(t) => template_from_py(t)?,
            None => Template::named("2.2.2").map_err(to_py)?,
        };
        rec.check_template(&template).map_err(to_py)?;
        Ok(PyTokenRecycler { rec, template })
    }

    fn __repr__(&self) -> String {
        format!(
            "TokenRecycler(vocab_size={}, k={}, tree_size={})",
            self.rec.vocab(),
            self.rec.k(),
            self.template.num_nodes()
        )
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
