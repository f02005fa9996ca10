//! Bindings of `tokenloom_core::dyntree`: the DySpec dynamic tree builder.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use std::sync::{Mutex, MutexGuard};

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray2};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use tokenloom_core::limits::MAX_TREE_NODES;
use tokenloom_core::spec::dyntree::{BuilderConfig, DynamicTree, DynamicTreeBuilder};

use crate::args;
use crate::ints::{Ids1, Ids2};
use crate::error::{slice1, slice2, to_py};

type I64Array<'py> = Bound<'py, PyArray1<i64>>;

/// (tokens, parents, depths, scores, draft_rows, node_ids) of a built tree, each [T].
pub(crate) type TreeArrays<'py> = (
    I64Array<'py>,
    I64Array<'py>,
    I64Array<'py>,
    Bound<'py, PyArray1<f64>>,
    I64Array<'py>,
    I64Array<'py>,
);

/// The arrays of a built tree, in the order of ``DynamicTreeBuilder.tree``.
pub(crate) fn tree_arrays(py: Python<'_>, t: DynamicTree) -> TreeArrays<'_> {
    (
        t.tokens.into_pyarray(py),
        t.parents.into_pyarray(py),
        t.depths.into_pyarray(py),
        t.scores.into_pyarray(py),
        t.draft_rows.into_pyarray(py),
        t.node_ids.into_pyarray(py),
    )
}

fn budget_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("budget", args::size("budget", obj, 1, MAX_TREE_NODES))
}

fn max_depth_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("max_depth", args::size("max_depth", obj, 1, MAX_TREE_NODES))
}

/// Greedy DySpec draft-tree builder (arXiv 2410.11744), grown one depth per draft forward.
///
/// Candidates sit in a max-heap keyed by the product of draft probabilities on their path
/// (sampled drafts: the i-th sibling is keyed v * (1 - mass of the earlier siblings)). The
/// tree is the `budget` best candidates; `frontier()` lists the nodes whose draft rows the
/// next `expand` needs (one batched draft forward), until it is empty.
///
/// Args:
///     budget (int): most draft nodes in a tree, the root excluded (>= 1).
///     max_depth (int): deepest node depth, the root being depth 0 (>= 1).
///     k (int): most children per expanded node (>= 1).
///     sampled (bool): draw children without replacement from the draft row (Gumbel-top-k
///         distribution) instead of taking the top-k.
///     seed (int | None): seed in [0, 2**64) of the shared counter-based generator (sampled
///         drafts; draw i at node n of the t-th tree uses ``uniforms(seed, t, n << 32 | i)``);
///         None: random.
///     vocab_size (int | None): when given, token ids are checked against it.
///     max_frontier (int | None): most nodes per draft forward (None: exact greedy).
///
/// Thread-safe: the builder sits behind a lock, taken without the GIL while a frontier is
/// expanded, so threads sharing one builder see the calls in some order.
///
/// Raises:
///     ValueError: a size below 1 or above its cap (budget and max_depth <= 2**24,
///         vocab_size <= 2**24), a seed outside [0, 2**64).
///     TypeError: a size or seed that is not an int.
#[pyclass(module = "tokenloom._core", name = "DynamicTreeBuilder", frozen)]
pub struct PyDynamicTreeBuilder {
    inner: Mutex<DynamicTreeBuilder>,
}

impl PyDynamicTreeBuilder {
    pub(crate) fn lock(&self) -> PyResult<MutexGuard<'_, DynamicTreeBuilder>> {
        self.inner.lock().map_err(|_| {
            PyRuntimeError::new_err("DynamicTreeBuilder: a previous call panicked; the state is unusable")
        })
    }
}

#[pymethods]
impl PyDynamicTreeBuilder {
    #[new]
    #[pyo3(signature = (budget, max_depth, *, k = 8, sampled = false, seed = None, vocab_size = None, max_frontier = None))]
    fn new(
        #[pyo3(from_py_with = budget_arg)] budget: usize,
        #[pyo3(from_py_with = max_depth_arg)] max_depth: usize,
        #[pyo3(from_py_with = args::k_candidates)] k: usize,
        sampled: bool,
        #[pyo3(from_py_with = args::opt_seed)] seed: Option<u64>,
        #[pyo3(from_py_with = args::opt_vocab_size)] vocab_size: Option<usize>,
        #[pyo3(from_py_with = args::opt_max_frontier)] max_frontier: Option<usize>,
    ) -> PyResult<Self> {
        let cfg = BuilderConfig {
            budget,
            max_depth,
            k,
            sampled,
            seed: seed.unwrap_or_else(|| RandomState::new().hash_one(0x5EED_u64)),
            vocab_size: vocab_size.unwrap_or(0),
            max_frontier,
        };
        let inner = DynamicTreeBuilder::new(cfg).map_err(to_py)?;
        Ok(PyDynamicTreeBuilder { inner: Mutex::new(inner) })
    }

    /// Starts a new tree whose root (node 0) carries `root_token`; the frontier becomes [0].
    ///
    /// Args:
    ///     root_token (int): the last token of the sequence (already emitted).
    ///
    /// Raises:
    ///     IndexError: a negative id, or one >= vocab_size.
    ///     TypeError: root_token is not an int.
    #[pyo3(signature = (root_token))]
    fn reset(&self, root_token: &Bound<'_, PyAny>) -> PyResult<()> {
        let root = args::id_i64("root_token", root_token)?;
        self.lock()?.reset(root).map_err(to_py)
    }

    /// The nodes whose draft distributions the next `expand` needs, best first.
    ///
    /// Returns:
    ///     tuple[np.ndarray[int64] x 4]: (ids, tokens, parents, depths), each [F]; `parents`
    ///     are builder node ids (-1 for the root). F == 0 once the tree is complete.
    ///
    /// Raises:
    ///     ValueError: no tree yet (call reset first).
    fn frontier<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(I64Array<'py>, I64Array<'py>, I64Array<'py>, I64Array<'py>)> {
        let inner = self.lock()?;
        let f = inner.frontier().map_err(to_py)?;
        let (mut ids, mut tokens, mut parents, mut depths) = (vec![], vec![], vec![], vec![]);
        for &id in f {
            let (t, p, d) = inner.node(id as i64).map_err(to_py)?;
            ids.push(id as i64);
            tokens.push(t);
            parents.push(p);
            depths.push(d as i64);
        }
        drop(inner);
        Ok((
            ids.into_pyarray(py),
            tokens.into_pyarray(py),
            parents.into_pyarray(py),
            depths.into_pyarray(py),
        ))
    }

    /// Expands the whole frontier with top-k draft rows.
    ///
    /// Args:
    ///     node_ids (np.ndarray[int64], shape [n]): a permutation of `frontier()` ids.
    ///     topk_ids (np.ndarray[int64], shape [n, w]): candidate tokens of each node's row.
    ///     topk_probs (np.ndarray[float64], shape [n, w]): their draft probabilities, each in
    ///         [0, 1], each row summing to at most 1 (+1e-4). Zero entries are ignored;
    ///         sampled drafts draw from the row renormalised over its entries.
    ///
    /// Raises:
    ///     ValueError: shapes differ, NaN or out-of-range probabilities, a row summing above
    ///         1, a token twice in a row, node ids not the frontier, no tree yet.
    ///     IndexError: a node id that does not exist, a token id < 0 or >= vocab_size.
    #[pyo3(signature = (node_ids, topk_ids, topk_probs))]
    fn expand<'py>(
        &self,
        py: Python<'py>,
        node_ids: Ids1<'py>,
        topk_ids: Ids2<'py>,
        topk_probs: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<()> {
        let n = slice1("node_ids", &node_ids)?;
        let (ids, rows, width) = slice2("topk_ids", &topk_ids)?;
        let (probs, prow, pcol) = slice2("topk_probs", &topk_probs)?;
        if (prow, pcol) != (rows, width) {
            return Err(PyValueError::new_err(format!(
                "topk_probs: expected shape [{rows}, {width}] (= topk_ids), got [{prow}, {pcol}]"
            )));
        }
        if rows != n.len() {
            return Err(PyValueError::new_err(format!(
                "topk_ids: expected {} rows (= len(node_ids)), got {rows}",
                n.len()
            )));
        }
        py.detach(|| self.lock()?.expand_topk(n, ids, probs, width).map_err(to_py))
    }

    /// Expands the whole frontier with full draft rows (the column is the token id).
    ///
    /// Args:
    ///     node_ids (np.ndarray[int64], shape [n]): a permutation of `frontier()` ids.
    ///     probs (np.ndarray[float64], shape [n, V]): draft distribution at each node.
    ///
    /// Raises:
    ///     ValueError: as `expand`, or V != vocab_size when vocab_size is set.
    ///     IndexError: a node id that does not exist.
    #[pyo3(signature = (node_ids, probs))]
    fn expand_rows<'py>(
        &self,
        py: Python<'py>,
        node_ids: Ids1<'py>,
        probs: PyReadonlyArray2<'py, f64>,
    ) -> PyResult<()> {
        let n = slice1("node_ids", &node_ids)?;
        let (p, rows, vocab) = slice2("probs", &probs)?;
        if rows != n.len() {
            return Err(PyValueError::new_err(format!(
                "probs: expected {} rows (= len(node_ids)), got {rows}",
                n.len()
            )));
        }
        py.detach(|| self.lock()?.expand_rows(n, p, vocab).map_err(to_py))
    }

    /// The current tree: the root and the selected nodes, in BFS order.
    ///
    /// Returns:
    ///     tuple: (tokens, parents, depths, scores, draft_rows, node_ids), each [T]:
    ///     int64 tokens, parents (parents[0] == -1, parents[i] < i) and depths; float64
    ///     path-probability estimates (root 1.0); int64 index of the draft row (over all
    ///     expand calls since reset, in call order) each node's children came from, -1 if
    ///     never expanded; int64 builder ids.
    ///
    /// Raises:
    ///     ValueError: no tree yet (call reset first).
    #[allow(clippy::type_complexity)]
    fn tree<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<TreeArrays<'py>> {
        Ok(tree_arrays(py, self.lock()?.tree().map_err(to_py)?))
    }

    /// Token, parent id and depth of a created node.
    ///
    /// Raises:
    ///     IndexError: no such node.
    #[pyo3(signature = (node_id))]
    fn node(&self, node_id: &Bound<'_, PyAny>) -> PyResult<(i64, i64, u32)> {
        let id = args::id_i64("node id", node_id)?;
        self.lock()?.node(id).map_err(to_py)
    }

    /// True once the tree is complete (the frontier is empty).
    #[getter]
    fn done(&self) -> PyResult<bool> {
        Ok(self.lock()?.is_done())
    }

    /// Nodes created since reset (root and all candidates).
    #[getter]
    fn num_nodes(&self) -> PyResult<usize> {
        Ok(self.lock()?.num_nodes())
    }

    /// Draft rows received since reset.
    #[getter]
    fn rows_seen(&self) -> PyResult<i64> {
        Ok(self.lock()?.rows_seen())
    }

    #[getter]
    fn budget(&self) -> PyResult<usize> {
        Ok(self.lock()?.config().budget)
    }

    #[getter]
    fn max_depth(&self) -> PyResult<usize> {
        Ok(self.lock()?.config().max_depth)
    }

    #[getter]
    fn k(&self) -> PyResult<usize> {
        Ok(self.lock()?.config().k)
    }

    #[getter]
    fn sampled(&self) -> PyResult<bool> {
        Ok(self.lock()?.config().sampled)
    }

    #[getter]
    fn seed(&self) -> PyResult<u64> {
        Ok(self.lock()?.config().seed)
    }

    #[getter]
    fn vocab_size(&self) -> PyResult<Option<usize>> {
        Ok(Some(self.lock()?.config().vocab_size).filter(|&v| v > 0))
    }

    #[getter]
    fn max_frontier(&self) -> PyResult<Option<usize>> {
        Ok(self.lock()?.config().max_frontier)
    }

    fn __repr__(&self) -> PyResult<String> {
        let c = *self.lock()?.config();
        let cap = c
            .max_frontier
            .map_or_else(|| "None".to_string(), |v| v.to_string());
        let sampled = if c.sampled { "True" } else { "False" };
        Ok(format!(
            "DynamicTreeBuilder(budget={}, max_depth={}, k={}, sampled={sampled}, max_frontier={cap})",
            c.budget, c.max_depth, c.k
        ))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDynamicTreeBuilder>()?;
    Ok(())
}
