//! Bindings of `tokenloom_core::spec::merged`: the merged drafter's tree of one step
//! (`grow_merged`) and the candidate classes it scores with (`CandidateClasses`).

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::spec::merged::{self, ClassMap, Cut, MergedInput};

use crate::args;
use crate::ints::{Ids1};
use crate::dyntree::{tree_arrays, PyDynamicTreeBuilder, TreeArrays};
use crate::error::{slice1, to_py};
use crate::recycling::PyTokenRecycler;
use crate::suffix::{max_match_arg, max_nodes_arg, to_ids, PySuffixCache, PySuffixIndex};

type I64Array<'py> = Bound<'py, PyArray1<i64>>;

fn depths_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("recycle_depths", args::size("recycle_depths", obj, 1, 1 << 16))
}

fn sources_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("sources", args::size("sources", obj, 1, 1 << 16))
}

/// How the merged drafter's candidates map to calibration classes (the constants of
/// ``tokenloom.spec.suffix.calibration``).
///
/// A suffix candidate of ``source`` with effective match length ``m``, count ratio ``p`` and
/// support ``u`` is class ``((source * M + bm) * P + bp) * S + bu``: ``bm`` / ``bu`` the first
/// bound >= ``m`` / ``u`` (the last bucket above every bound), ``bp`` the first of the first
/// ``P - 1`` bounds above ``p``, else ``P - 1``. The rank-r recycled candidate of a node at
/// depth d is class ``n_suffix + r * recycle_depths + min(d, recycle_depths - 1)``.
///
/// Args:
///     match_buckets (Sequence[int]): upper bounds (inclusive) of the match-length buckets.
///     prob_buckets (Sequence[float]): upper bounds of the count-ratio buckets (>= 2).
///     support_buckets (Sequence[int]): upper bounds (inclusive) of the support buckets.
///     recycle_depths (int): recycling depths told apart (>= 1).
///     sources (int): suffix sources (0 this request, 1 the cross-request cache; >= 1).
///
/// Raises:
///     ValueError: empty or not strictly increasing bounds, a non-finite count-ratio bound,
///         a count below 1.  TypeError: not sequences of numbers.
#[pyclass(module = "tokenloom._core", name = "CandidateClasses", frozen)]
pub struct PyCandidateClasses {
    inner: ClassMap,
}

#[pymethods]
impl PyCandidateClasses {
    #[new]
    #[pyo3(signature = (match_buckets, prob_buckets, support_buckets, recycle_depths, sources = 2))]
    fn new(
        match_buckets: Vec<i64>,
        prob_buckets: Vec<f64>,
        support_buckets: Vec<i64>,
        #[pyo3(from_py_with = depths_arg)] recycle_depths: usize,
        #[pyo3(from_py_with = sources_arg)] sources: usize,
    ) -> PyResult<Self> {
        let inner = ClassMap::new(match_buckets, prob_buckets, support_buckets, sources, recycle_depths).map_err(to_py)?;
        Ok(PyCandidateClasses { inner })
    }

    /// The class of a suffix candidate.
    ///
    /// Raises:
    ///     ValueError: ``source`` not below ``sources``.
    #[pyo3(signature = (source, match_len, prob, support))]
    fn suffix_class(&self, source: usize, match_len: i64, prob: f64, support: i64) -> PyResult<usize> {
        if source >= self.inner.sources() {
            return Err(PyValueError::new_err(format!(
                "source: expected one of 0..{}, got {source}",
                self.inner.sources()
            )));
        }
        Ok(self.inner.suffix_class(source, match_len, prob, support))
    }

    /// The class of the rank-``rank`` recycled candidate of a node at ``depth`` (root 0).
    #[pyo3(signature = (rank, depth))]
    fn recycle_class(&self, rank: usize, depth: usize) -> usize {
        self.inner.recycle_class(rank, depth)
    }

    /// Classes with ``k`` recycled candidates per row.
    #[pyo3(signature = (k))]
    fn num_classes(&self, k: usize) -> usize {
        self.inner.num_classes(k)
    }

    /// int: suffix classes (the recycled ones follow).
    #[getter]
    fn n_suffix(&self) -> usize {
        self.inner.n_suffix()
    }

    fn __repr__(&self) -> String {
        format!(
            "CandidateClasses(n_suffix={}, recycle_depths={}, sources={})",
            self.inner.n_suffix(),
            self.inner.recycle_depths(),
            self.inner.sources()
        )
    }
}

/// (the tree's arrays, (row_nodes, row_offsets, offered_tokens, offered_classes), matched).
type Grown<'py> = (
    TreeArrays<'py>,
    (I64Array<'py>, I64Array<'py>, I64Array<'py>, I64Array<'py>),
    Vec<bool>,
);

/// The merged drafter's tree of one step (the rule of ``MergedDrafter``: the trie union of the
/// suffix continuations of ``index`` and ``cache``, the recycler's rows, calibrated classes,
/// capped rows), grown best-first with ``builder`` (reset to ``root``). The GIL is released
/// while it runs; the stores' locks are taken one at a time, then the builder's with the
/// recycler's.
///
/// Args:
///     builder (DynamicTreeBuilder): its budget, max_depth and k (children per node) shape the tree.
///     root (int): the newest token of the sequence (the context's last).
///     context (np.ndarray[int64], shape [n]): the context's last tokens.
///     est (np.ndarray[float64], shape [C]): the estimate of every class, each in [0, 1];
///         ``C = classes.num_classes(k)``, ``k`` the recycler's (0 without one).
///     classes (CandidateClasses): the class map.
///     index (SuffixIndex): this request's index (source 0).
///     cache (SuffixCache | None): the cross-request cache (source 1).
///     recycler (TokenRecycler | None): the recycler whose rows give recycled candidates.
///     max_match (int): longest context suffix matched, in [1, 256].
///     max_nodes (int): most nodes of each source's continuation draft, in [1, 2**24].
///     cost_tokens, cost_seconds (np.ndarray[float64], shape [m] | None): the step-cost curve
///         (``StepCost.tokens`` / ``.seconds``); when given, the tree is cut to the root and its
///         N best nodes (``best_nodes``); the rows still cover every expanded node.
///     token_cost (float | None): when given (in [0, 1]), the tree is cut to its best chain
///         (``top_path``) instead.
///
/// Returns:
///     tuple: ``(tree, rows, matched)``.
///     ``tree``: (tokens, parents, depths, scores, draft_rows, node_ids), each [T], as
///     ``DynamicTreeBuilder.tree`` (``draft_rows[i]`` is node i's row below, -1 if never expanded).
///     ``rows``: the rows handed to the builder, (row_nodes int64 [R]: the builder id of each
///     row's node; row_offsets int64 [R + 1]; offered_tokens, offered_classes int64 [P]): row r
///     offered the (token, class) pairs ``row_offsets[r]:row_offsets[r + 1]``; a candidate of
///     both sources has two pairs, adjacent.
///     ``matched``: list[bool], whether the index and the cache matched.
///
/// Raises:
///     ValueError: ``est`` of the wrong length or outside [0, 1], ``classes`` with one source
///         and a cache, a size outside its range, a bad cost curve (lengths, not increasing, seconds <= 0)
///         or only one of its arrays, both cuts, a token_cost outside [0, 1].
///     IndexError: a token id out of range (root, context, a recycler row).
///     TypeError: an argument of the wrong type.
#[pyfunction]
#[pyo3(signature = (builder, root, context, est, classes, index, cache = None, recycler = None, *, max_match = 16, max_nodes = 16, cost_tokens = None, cost_seconds = None, token_cost = None))]
#[allow(clippy::too_many_arguments)]
fn grow_merged<'py>(
    py: Python<'py>,
    builder: &Bound<'py, PyDynamicTreeBuilder>,
    root: &Bound<'py, PyAny>,
    context: Ids1<'py>,
    est: PyReadonlyArray1<'py, f64>,
    classes: &Bound<'py, PyCandidateClasses>,
    index: &Bound<'py, PySuffixIndex>,
    cache: Option<&Bound<'py, PySuffixCache>>,
    recycler: Option<&Bound<'py, PyTokenRecycler>>,
    #[pyo3(from_py_with = max_match_arg)] max_match: usize,
    #[pyo3(from_py_with = max_nodes_arg)] max_nodes: usize,
    cost_tokens: Option<PyReadonlyArray1<'py, f64>>,
    cost_seconds: Option<PyReadonlyArray1<'py, f64>>,
    token_cost: Option<f64>,
) -> PyResult<Grown<'py>> {
    let root = args::id_i64("root", root)?;
    let ctx = to_ids("context", slice1("context", &context)?)?;
    let est = slice1("est", &est)?;
    let cut = match (&cost_tokens, &cost_seconds, token_cost) {
        (Some(t), Some(s), None) => Cut::Best(slice1("cost_tokens", t)?, slice1("cost_seconds", s)?),
        (None, None, Some(c)) => Cut::Chain(c),
        (None, None, None) => Cut::Whole,
        (Some(_), Some(_), Some(_)) => {
            return Err(PyValueError::new_err("cost_tokens / cost_seconds and token_cost: one cut at most"))
        }
        _ => return Err(PyValueError::new_err("cost_tokens and cost_seconds: expected both or neither")),
    };
    let (b, cm, idx) = (builder.get(), &classes.get().inner, index.get());
    let (cache, rec) = (cache.map(|c| c.get()), recycler.map(|r| r.get()));
    let out = py.detach(|| -> PyResult<_> {
        let mut drafts = vec![(0, idx.lock()?.0.speculate(&ctx, max_match, max_nodes, 0.0))];
        if let Some(c) = cache {
            drafts.push((1, c.lock()?.trie().speculate(&ctx, max_match, max_nodes, 0.0)));
        }
        let rec = rec.map(|r| r.read()).transpose()?;
        let input = MergedInput { root, drafts: &drafts, recycler: rec.as_ref().map(|s| &s.rec), est, classes: cm, cut };
        merged::grow_merged(&mut *b.lock()?, &input).map_err(to_py)
    })?;
    Ok((
        tree_arrays(py, out.tree),
        (
            out.row_nodes.into_pyarray(py),
            out.row_offsets.into_pyarray(py),
            out.offered_tokens.into_pyarray(py),
            out.offered_classes.into_pyarray(py),
        ),
        out.matched,
    ))
}

/// The merged drafter's row cap (``tokenloom.spec.suffix.drafter.cap_rows`` calls it): each row
/// of ``probs`` (float64 [rows, width], entries in [0, 1]) made a sub-distribution keeping its
/// largest estimate. Sums in numpy's order: bit-identical to the numpy form the tests keep.
/// Returns a new array.
///
/// Raises:
///     ValueError: a NaN, infinite or negative entry, or one above 1; not C-contiguous.
#[pyfunction]
#[pyo3(signature = (probs))]
fn cap_rows<'py>(py: Python<'py>, probs: numpy::PyReadonlyArray2<'py, f64>) -> PyResult<Bound<'py, numpy::PyArray2<f64>>> {
    let (p, rows, width) = crate::error::slice2("probs", &probs)?;
    if let Some(i) = p.iter().position(|x| !(0.0..=1.0).contains(x)) {
        return Err(PyValueError::new_err(format!(
            "probs[{}, {}] = {}: expected an estimate in [0, 1]",
            i / width.max(1),
            i % width.max(1),
            p[i]
        )));
    }
    let mut out = p.to_vec();
    merged::cap_rows(&mut out, width);
    numpy::PyArrayMethods::reshape(&out.into_pyarray(py), [rows, width])
}

/// The nodes to keep of a scored tree for a step-cost curve (``best_nodes`` of
/// ``tokenloom.spec.suffix.drafter``).
///
/// Args:
///     scores (np.ndarray[float64], shape [T]): node scores (node 0 the root, BFS order, a
///         child never above its parent).
///     depths (np.ndarray[int64], shape [T]): node depths.
///     cost_tokens, cost_seconds (np.ndarray[float64], shape [m]): the step-cost curve.
///
/// Returns:
///     np.ndarray[int64], shape [N + 1]: the root and the N best nodes, increasing.
///
/// Raises:
///     ValueError: shapes differ, a bad cost curve, a NaN score.
#[pyfunction]
#[pyo3(signature = (scores, depths, cost_tokens, cost_seconds))]
fn best_nodes<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray1<'py, f64>,
    depths: Ids1<'py>,
    cost_tokens: PyReadonlyArray1<'py, f64>,
    cost_seconds: PyReadonlyArray1<'py, f64>,
) -> PyResult<I64Array<'py>> {
    let (s, d) = (slice1("scores", &scores)?, slice1("depths", &depths)?);
    let (t, c) = (slice1("cost_tokens", &cost_tokens)?, slice1("cost_seconds", &cost_seconds)?);
    if s.len() != d.len() {
        return Err(PyValueError::new_err(format!(
            "depths: expected {} entries (= len(scores)), got {}",
            s.len(),
            d.len()
        )));
    }
    if s.iter().any(|x| x.is_nan()) {
        return Err(PyValueError::new_err("scores: expected numbers, got NaN"));
    }
    merged::check_cost(t, c).map_err(to_py)?;
    let keep = if s.is_empty() { vec![] } else { merged::best_nodes(s, d, t, c) };
    Ok(keep.into_iter().map(|i| i as i64).collect::<Vec<i64>>().into_pyarray(py))
}

/// The best chain of a scored tree (``top_path`` of ``tokenloom.spec.suffix.drafter``).
///
/// Args:
///     scores (np.ndarray[float64], shape [T]): node scores (node 0 the root).
///     parents (np.ndarray[int64], shape [T]): parents[0] == -1, 0 <= parents[i] < i.
///     token_cost (float): in [0, 1].
///
/// Returns:
///     np.ndarray[int64], shape [L + 1]: the path's nodes, root first.
///
/// Raises:
///     ValueError: shapes differ, bad parents, a NaN score, token_cost outside [0, 1], T == 0.
#[pyfunction]
#[pyo3(signature = (scores, parents, token_cost = 0.0))]
fn top_path<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray1<'py, f64>,
    parents: Ids1<'py>,
    token_cost: f64,
) -> PyResult<I64Array<'py>> {
    let (s, p) = (slice1("scores", &scores)?, slice1("parents", &parents)?);
    if s.len() != p.len() || s.is_empty() {
        return Err(PyValueError::new_err(format!(
            "parents: expected {} entries (= len(scores) >= 1), got {}",
            s.len(),
            p.len()
        )));
    }
    tokenloom_core::tree::validate_parents(p).map_err(to_py)?;
    if s.iter().any(|x| x.is_nan()) {
        return Err(PyValueError::new_err("scores: expected numbers, got NaN"));
    }
    if !(0.0..=1.0).contains(&token_cost) {
        return Err(PyValueError::new_err(format!("token_cost: expected a number in [0, 1], got {token_cost}")));
    }
    let path = merged::top_path(s, p, token_cost);
    Ok(path.into_iter().map(|i| i as i64).collect::<Vec<i64>>().into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(top_path, m)?)?;
    m.add_function(wrap_pyfunction!(best_nodes, m)?)?;
    m.add_class::<PyCandidateClasses>()?;
    m.add_function(wrap_pyfunction!(grow_merged, m)?)?;
    m.add_function(wrap_pyfunction!(cap_rows, m)?)?;
    Ok(())
}
