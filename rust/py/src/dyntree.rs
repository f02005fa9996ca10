//! Bindings of `tokenloom_core::dyntree`: the DySpec dynamic tree builder.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::dyntree::{BuilderConfig, DynamicTreeBuilder};

use crate::error::{slice1, slice2, to_py};

type I64Array<'py> = Bound<'py, PyArray1<i64>>;

fn positive(what: &str, v: i64) -> PyResult<usize> {
    if v < 1 {
        return Err(PyValueError::new_err(format!(
            "{what}: expected an int >= 1, got {v}"
        )));
    }
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{what}: {v} is too large")))
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
///     seed (int | None): seed of the counter-based RNG (sampled drafts); None: random.
///     vocab_size (int | None): when given, token ids are checked against it.
///     max_frontier (int | None): most nodes per draft forward (None: exact greedy).
///
/// Raises:
///     ValueError: a size below 1.
#[pyclass(module = "tokenloom._core", name = "DynamicTreeBuilder")]
pub struct PyDynamicTreeBuilder {
    inner: DynamicTreeBuilder,
}

#[pymethods]
impl PyDynamicTreeBuilder {
    #[new]
    #[pyo3(signature = (budget, max_depth, *, k = 8, sampled = false, seed = None, vocab_size = None, max_frontier = None))]
    fn new(
        budget: i64,
        max_depth: i64,
        k: i64,
        sampled: bool,
        seed: Option<u64>,
        vocab_size: Option<i64>,
        max_frontier: Option<i64>,
    ) -> PyResult<Self> {
        let cfg = BuilderConfig {
            budget: positive("budget", budget)?,
            max_depth: positive("max_depth", max_depth)?,
            k: positive("k", k)?,
            sampled,
            seed: seed.unwrap_or_else(|| RandomState::new().hash_one(0x5EED_u64)),
            vocab_size: vocab_size
                .map(|v| positive("vocab_size", v))
                .transpose()?
                .unwrap_or(0),
            max_frontier: max_frontier
                .map(|v| positive("max_frontier", v))
                .transpose()?,
        };
        let inner = DynamicTreeBuilder::new(cfg).map_err(to_py)?;
        Ok(PyDynamicTreeBuilder { inner })
    }

    /// Starts a new tree whose root (node 0) carries `root_token`; the frontier becomes [0].
    ///
    /// Args:
    ///     root_token (int): the last token of the sequence (already emitted).
    ///
    /// Raises:
    ///     IndexError: a negative id, or one >= vocab_size.
    #[pyo3(signature = (root_token))]
    fn reset(&mut self, root_token: i64) -> PyResult<()> {
        self.inner.reset(root_token).map_err(to_py)
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
        let f = self.inner.frontier().map_err(to_py)?;
        let (mut ids, mut tokens, mut parents, mut depths) = (vec![], vec![], vec![], vec![]);
        for &id in f {
            let (t, p, d) = self.inner.node(id as i64).map_err(to_py)?;
            ids.push(id as i64);
            tokens.push(t);
            parents.push(p);
            depths.push(d as i64);
        }
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
    ///         [0, 1], each row summing to at most 1 (+1e-3). Zero entries are ignored;
    ///         sampled drafts draw from the row renormalised over its entries.
    ///
    /// Raises:
    ///     ValueError: shapes differ, NaN or out-of-range probabilities, a row summing above
    ///         1, a token twice in a row, node ids not the frontier, no tree yet.
    ///     IndexError: a node id that does not exist, a token id < 0 or >= vocab_size.
    #[pyo3(signature = (node_ids, topk_ids, topk_probs))]
    fn expand<'py>(
        &mut self,
        py: Python<'py>,
        node_ids: PyReadonlyArray1<'py, i64>,
        topk_ids: PyReadonlyArray2<'py, i64>,
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
        let inner = &mut self.inner;
        py.detach(|| inner.expand_topk(n, ids, probs, width))
            .map_err(to_py)
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
        &mut self,
        py: Python<'py>,
        node_ids: PyReadonlyArray1<'py, i64>,
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
        let inner = &mut self.inner;
        py.detach(|| inner.expand_rows(n, p, vocab)).map_err(to_py)
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
    ) -> PyResult<(
        I64Array<'py>,
        I64Array<'py>,
        I64Array<'py>,
        Bound<'py, PyArray1<f64>>,
        I64Array<'py>,
        I64Array<'py>,
    )> {
        let t = self.inner.tree().map_err(to_py)?;
        Ok((
            t.tokens.into_pyarray(py),
            t.parents.into_pyarray(py),
            t.depths.into_pyarray(py),
            t.scores.into_pyarray(py),
            t.draft_rows.into_pyarray(py),
            t.node_ids.into_pyarray(py),
        ))
    }

    /// Token, parent id and depth of a created node.
    ///
    /// Raises:
    ///     IndexError: no such node.
    #[pyo3(signature = (node_id))]
    fn node(&self, node_id: i64) -> PyResult<(i64, i64, u32)> {
        self.inner.node(node_id).map_err(to_py)
    }

    /// True once the tree is complete (the frontier is empty).
    #[getter]
    fn done(&self) -> bool {
        self.inner.is_done()
    }

    /// Nodes created since reset (root and all candidates).
    #[getter]
    fn num_nodes(&self) -> usize {
        self.inner.num_nodes()
    }

    /// Draft rows received since reset.
    #[getter]
    fn rows_seen(&self) -> i64 {
        self.inner.rows_seen()
    }

    #[getter]
    fn budget(&self) -> usize {
        self.inner.config().budget
    }

    #[getter]
    fn max_depth(&self) -> usize {
        self.inner.config().max_depth
    }

    #[getter]
    fn k(&self) -> usize {
        self.inner.config().k
    }

    #[getter]
    fn sampled(&self) -> bool {
        self.inner.config().sampled
    }

    #[getter]
    fn seed(&self) -> u64 {
        self.inner.config().seed
    }

    #[getter]
    fn vocab_size(&self) -> Option<usize> {
        Some(self.inner.config().vocab_size).filter(|&v| v > 0)
    }

    #[getter]
    fn max_frontier(&self) -> Option<usize> {
        self.inner.config().max_frontier
    }

    fn __repr__(&self) -> String {
        let c = self.inner.config();
        let cap = c
            .max_frontier
            .map_or_else(|| "None".to_string(), |v| v.to_string());
        let sampled = if c.sampled { "True" } else { "False" };
        format!(
            "DynamicTreeBuilder(budget={}, max_depth={}, k={}, sampled={sampled}, max_frontier={cap})",
            c.budget, c.max_depth, c.k
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDynamicTreeBuilder>()?;
    Ok(())
}
