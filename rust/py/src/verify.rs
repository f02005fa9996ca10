//! Bindings of `tokenloom_core::verify`.

use numpy::{IntoPyArray, PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use tokenloom_core::rng::Stream;
use tokenloom_core::sampling::Real;
use tokenloom_core::verify::{self, Rows, VerifyResult};

use crate::args;
use crate::ints::{ids1_bound, Ids1, Ids2};
use crate::error::{slice1, slice2, to_py};
use crate::floats::{blocks, mixed, F2, F3};

type PyVerifyResult<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

fn into_py<'py>(py: Python<'py>, r: VerifyResult) -> PyVerifyResult<'py> {
    (r.path.into_pyarray(py), r.tokens.into_pyarray(py))
}

/// Greedy tree verification.
///
/// Args:
///     parents (np.ndarray[int64], shape [T]): parent of each node; parents[0] == -1, parents[i] < i.
///     tokens (np.ndarray[int64], shape [T]): token of each node (tokens[0] is the root's, unused).
///     target_argmax (np.ndarray[int64], shape [T]): target argmax of the token following each node.
///
/// Returns:
///     tuple[np.ndarray[int64], np.ndarray[int64]]: (path, tokens): accepted node indices
///     starting with 0, and the emitted tokens (accepted drafts, then the bonus token).
///
/// Raises:
///     ValueError: lengths differ, the tree is empty or not topologically ordered.
///     IndexError: a negative target id.
///     TypeError: an array that is not a 1-D integer array (other integer dtypes than int64,
///         e.g. an int32 argmax, convert by value).
#[pyfunction]
#[pyo3(signature = (parents, tokens, target_argmax))]
pub fn verify_greedy<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = ids1_bound)] parents: Bound<'py, PyArray1<i64>>,
    #[pyo3(from_py_with = ids1_bound)] tokens: Bound<'py, PyArray1<i64>>,
    #[pyo3(from_py_with = ids1_bound)] target_argmax: Bound<'py, PyArray1<i64>>,
) -> PyResult<PyVerifyResult<'py>> {
    // A microsecond kernel: the walk runs with the GIL held and reads the arrays without
    // rust-numpy's borrow registry (whose bookkeeping costs more than the walk on small trees).
    // SAFETY: the GIL is held for the whole call and nothing here runs Python code, so no other
    // thread can write to the arrays; the slices do not outlive this function.
    let (p, t, a) = unsafe { (raw1("parents", &parents)?, raw1("tokens", &tokens)?, raw1("target_argmax", &target_argmax)?) };
    let r = verify::verify_greedy(p, t, a).map_err(to_py)?;
    Ok((PyArray1::from_slice(py, &r.path), PyArray1::from_slice(py, &r.tokens)))
}

/// A contiguous view of a 1-D array without registering a borrow.
///
/// # Safety
/// The caller must hold the GIL while the slice lives and must not run Python code meanwhile.
unsafe fn raw1<'a>(what: &str, arr: &'a Bound<'_, PyArray1<i64>>) -> PyResult<&'a [i64]> {
    arr.as_slice()
        .map_err(|_| pyo3::exceptions::PyValueError::new_err(format!("{what}: expected a C-contiguous array")))
}

/// Greedy verification of B padded trees.
///
/// Args:
///     parents, tokens, target_argmax (np.ndarray[int64], shape [B, T_max]): one tree per row.
///     lengths (np.ndarray[int64], shape [B]): nodes used in each row (root included).
///
/// Returns:
///     list[tuple[np.ndarray[int64], np.ndarray[int64]]]: (path, tokens) per tree.
///
/// Raises:
///     ValueError: shapes differ, a tree is empty or not topologically ordered.
///     IndexError: a length above T_max or a negative target id.
#[pyfunction]
#[pyo3(signature = (parents, tokens, target_argmax, lengths))]
pub fn verify_greedy_batch<'py>(
    py: Python<'py>,
    parents: Ids2<'py>,
    tokens: Ids2<'py>,
    target_argmax: Ids2<'py>,
    lengths: Ids1<'py>,
) -> PyResult<Vec<PyVerifyResult<'py>>> {
    let (p, _, t_max) = slice2("parents", &parents)?;
    let (t, _, _) = slice2("tokens", &tokens)?;
    let (a, _, _) = slice2("target_argmax", &target_argmax)?;
    let l = slice1("lengths", &lengths)?;
    let rs = py
        .detach(|| verify::verify_greedy_batch(p, t, a, l, t_max))
        .map_err(to_py)?;
    Ok(rs.into_iter().map(|r| into_py(py, r)).collect())
}


fn rows2<'a, R: Real + numpy::Element>(what: &'static str, a: &'a numpy::PyReadonlyArray2<'_, R>) -> PyResult<Rows<'a, R>> {
    let (data, rows, vocab) = slice2(what, a)?;
    Rows::new(what, data, rows, vocab).map_err(to_py)
}

fn tree_one<R: Real + numpy::Element>(
    py: Python<'_>,
    parents: &[i64],
    tokens: &[i64],
    target: &numpy::PyReadonlyArray2<'_, R>,
    draft: Option<&numpy::PyReadonlyArray2<'_, R>>,
    seed: u64,
    replacement: bool,
) -> PyResult<VerifyResult> {
    let target = rows2("target_probs", target)?;
    let draft = draft.map(|d| rows2("draft_probs", d)).transpose()?;
    py.detach(|| verify::verify_tree(parents, tokens, target, draft, Stream::new(seed, 0), replacement))
        .map_err(to_py)
}

/// Lossless verification of one draft tree by rejection sampling.
///
/// Without ``draft_probs`` (deterministic drafts): at each visited node draw y ~ target_probs[node];
/// descend into the lowest-index child carrying y, else emit y and stop. With ``draft_probs``
/// (children of node i drawn from draft_probs[i]): SpecInfer's multi-draft rule, or Sequoia's
/// without-replacement variant when ``replacement`` is False. Only rows of visited nodes are read.
///
/// Args:
///     parents (np.ndarray[int64], shape [T]): parents[0] == -1, 0 <= parents[i] < i.
///     tokens (np.ndarray[int64], shape [T]): token of each node, in [0, V) (tokens[0] unused).
///     target_probs (np.ndarray[float32 | float64 | float16], shape [T, V]): target distribution of the
///         token after each node; rows finite, >= 0, summing to 1 within 1e-4.
///     draft_probs (np.ndarray, same dtype and shape as target_probs, optional): draft
///         distribution from which each node's children were drawn.
///     seed (int): seed in [0, 2**64); the call uses stream 0 of the counter-based generator.
///     replacement (bool): children drawn with replacement (True) or without (False).
///
/// Returns:
///     tuple[np.ndarray[int64], np.ndarray[int64]]: (path, tokens).
///
/// Raises:
///     ValueError: bad shapes or dtypes, an empty or unordered tree, a bad probability row.
///     IndexError: a token outside [0, V).
#[pyfunction]
#[pyo3(signature = (parents, tokens, target_probs, draft_probs=None, seed=0, replacement=true))]
pub fn verify_tree<'py>(
    py: Python<'py>,
    parents: Ids1<'py>,
    tokens: Ids1<'py>,
    target_probs: &Bound<'py, PyAny>,
    draft_probs: Option<&Bound<'py, PyAny>>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
    replacement: bool,
) -> PyResult<PyVerifyResult<'py>> {
    let p = slice1("parents", &parents)?;
    let t = slice1("tokens", &tokens)?;
    let target = F2::new("target_probs", target_probs)?;
    let draft = draft_probs.map(|d| F2::new("draft_probs", d)).transpose()?;
    let r = match (&target, &draft) {
        (F2::F32(a), None) => tree_one(py, p, t, a, None, seed, replacement),
        (F2::F64(a), None) => tree_one(py, p, t, a, None, seed, replacement),
        (F2::F32(a), Some(F2::F32(d))) => tree_one(py, p, t, a, Some(d), seed, replacement),
        (F2::F64(a), Some(F2::F64(d))) => tree_one(py, p, t, a, Some(d), seed, replacement),
        _ => Err(mixed("draft_probs")),
    }?;
    Ok(into_py(py, r))
}

#[allow(clippy::too_many_arguments)]
fn tree_batch<R: Real + numpy::Element>(
    py: Python<'_>,
    parents: &[i64],
    tokens: &[i64],
    t_max: usize,
    target: &numpy::PyReadonlyArray3<'_, R>,
    draft: Option<&numpy::PyReadonlyArray3<'_, R>>,
    lengths: &[i64],
    seed: u64,
    replacement: bool,
) -> PyResult<Vec<VerifyResult>> {
    let (tb, rows, vocab) = blocks("target_probs", target)?;
    if rows != t_max {
        return Err(to_py(tokenloom_core::CoreError::shape("target_probs", format!("[B, {t_max}, V]"), format!("[B, {rows}, {vocab}]"))));
    }
    let db = match draft {
        Some(d) => {
            let (db, r2, v2) = blocks("draft_probs", d)?;
            if (r2, v2) != (rows, vocab) {
                return Err(to_py(tokenloom_core::CoreError::shape(
                    "draft_probs",
                    format!("[B, {rows}, {vocab}] (the shape of target_probs)"),
                    format!("[B, {r2}, {v2}]"),
                )));
            }
            Some(db)
        }
        None => None,
    };
    py.detach(|| verify::verify_tree_batch(parents, tokens, t_max, &tb, db.as_deref(), vocab, lengths, seed, replacement))
        .map_err(to_py)
}

/// Lossless verification of B padded trees (the rule of ``verify_tree``).
///
/// Args:
///     parents, tokens (np.ndarray[int64], shape [B, T_max]): one tree per row.
///     target_probs (np.ndarray[float32 | float64 | float16], shape [B, T_max, V]): each [T_max, V] block
///         C-contiguous (the batch axis may be broadcast with stride 0).
///     draft_probs (same dtype and shape as target_probs, optional).
///     lengths (np.ndarray[int64], shape [B]): nodes used in each row (root included).
///     seed (int): seed in [0, 2**64); tree b uses stream b.
///     replacement (bool): children drawn with (True) or without (False) replacement.
///
/// Returns:
///     list[tuple[np.ndarray[int64], np.ndarray[int64]]]: (path, tokens) per tree.
///
/// Raises:
///     ValueError: bad shapes or dtypes, an empty or unordered tree, a bad probability row.
///     IndexError: a length above T_max or a token outside [0, V).
#[pyfunction]
#[pyo3(signature = (parents, tokens, target_probs, lengths, draft_probs=None, seed=0, replacement=true))]
#[allow(clippy::too_many_arguments)]
pub fn verify_tree_batch<'py>(
    py: Python<'py>,
    parents: Ids2<'py>,
    tokens: Ids2<'py>,
    target_probs: &Bound<'py, PyAny>,
    lengths: Ids1<'py>,
    draft_probs: Option<&Bound<'py, PyAny>>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
    replacement: bool,
) -> PyResult<Vec<PyVerifyResult<'py>>> {
    let (p, _, t_max) = slice2("parents", &parents)?;
    let (t, _, _) = slice2("tokens", &tokens)?;
    let l = slice1("lengths", &lengths)?;
    let target = F3::new("target_probs", target_probs)?;
    let draft = draft_probs.map(|d| F3::new("draft_probs", d)).transpose()?;
    let rs = match (&target, &draft) {
        (F3::F32(a), None) => tree_batch(py, p, t, t_max, a, None, l, seed, replacement),
        (F3::F64(a), None) => tree_batch(py, p, t, t_max, a, None, l, seed, replacement),
        (F3::F32(a), Some(F3::F32(d))) => tree_batch(py, p, t, t_max, a, Some(d), l, seed, replacement),
        (F3::F64(a), Some(F3::F64(d))) => tree_batch(py, p, t, t_max, a, Some(d), l, seed, replacement),
        _ => Err(mixed("draft_probs")),
    }?;
    Ok(rs.into_iter().map(|r| into_py(py, r)).collect())
}

fn chain_one<R: Real + numpy::Element>(
    py: Python<'_>,
    draft_tokens: &[i64],
    draft: &numpy::PyReadonlyArray2<'_, R>,
    target: &numpy::PyReadonlyArray2<'_, R>,
    seed: u64,
) -> PyResult<VerifyResult> {
    let d = rows2("draft_probs", draft)?;
    let t = rows2("target_probs", target)?;
    py.detach(|| verify::verify_chain(draft_tokens, d, t, Stream::new(seed, 0))).map_err(to_py)
}

/// Chain speculative sampling with the bonus token (FlashInfer ``chain_speculative_sampling``).
///
/// Step i accepts draft_tokens[i] with probability min(1, p_i(x) / q_i(x)); at the first
/// rejection it emits y ~ norm(max(0, p_i - q_i)); if all are accepted it emits y ~ p_n.
///
/// Args:
///     draft_tokens (np.ndarray[int64], shape [n]): drafted ids, in [0, V).
///     draft_probs (np.ndarray[float32 | float64 | float16], shape [n, V]): q_i, from which token i was drawn.
///     target_probs (np.ndarray, same dtype, shape [n + 1, V]): p_i; row n is the bonus row.
///     seed (int): seed in [0, 2**64); the call uses stream 0.
///
/// Returns:
///     tuple[np.ndarray[int64], np.ndarray[int64]]: (path = [0, 1, .., k], tokens [k + 1]).
///
/// Raises:
///     ValueError: bad shapes or dtypes, a bad probability row.
///     IndexError: a draft token outside [0, V).
#[pyfunction]
#[pyo3(signature = (draft_tokens, draft_probs, target_probs, seed=0))]
pub fn verify_chain<'py>(
    py: Python<'py>,
    draft_tokens: Ids1<'py>,
    draft_probs: &Bound<'py, PyAny>,
    target_probs: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
) -> PyResult<PyVerifyResult<'py>> {
    let x = slice1("draft_tokens", &draft_tokens)?;
    let d = F2::new("draft_probs", draft_probs)?;
    let t = F2::new("target_probs", target_probs)?;
    let r = match (&d, &t) {
        (F2::F32(d), F2::F32(t)) => chain_one(py, x, d, t, seed),
        (F2::F64(d), F2::F64(t)) => chain_one(py, x, d, t, seed),
        _ => Err(mixed("draft_probs")),
    }?;
    Ok(into_py(py, r))
}

fn chain_batch<R: Real + numpy::Element>(
    py: Python<'_>,
    draft_tokens: &[i64],
    n_max: usize,
    draft: &numpy::PyReadonlyArray3<'_, R>,
    target: &numpy::PyReadonlyArray3<'_, R>,
    lengths: &[i64],
    seed: u64,
) -> PyResult<Vec<VerifyResult>> {
    let (db, dr, dv) = blocks("draft_probs", draft)?;
    let (tb, tr, tv) = blocks("target_probs", target)?;
    if dr != n_max || tr != n_max + 1 || dv != tv {
        return Err(to_py(tokenloom_core::CoreError::shape(
            "draft_probs / target_probs",
            format!("[B, {n_max}, V] and [B, {}, V]", n_max + 1),
            format!("[B, {dr}, {dv}] and [B, {tr}, {tv}]"),
        )));
    }
    py.detach(|| verify::verify_chain_batch(draft_tokens, n_max, &db, &tb, tv, lengths, seed)).map_err(to_py)
}

/// Chain speculative sampling over B padded chains (the rule of ``verify_chain``).
///
/// Args:
///     draft_tokens (np.ndarray[int64], shape [B, n_max]).
///     draft_probs (np.ndarray[float32 | float64 | float16], shape [B, n_max, V]).
///     target_probs (np.ndarray, same dtype, shape [B, n_max + 1, V]).
///     lengths (np.ndarray[int64], shape [B]): drafts used in each chain (<= n_max).
///     seed (int): seed in [0, 2**64); chain b uses stream b.
///
/// Returns:
///     list[tuple[np.ndarray[int64], np.ndarray[int64]]]: (path, tokens) per chain.
///
/// Raises:
///     ValueError: bad shapes or dtypes, a bad probability row.
///     IndexError: a length above n_max or a draft token outside [0, V).
#[pyfunction]
#[pyo3(signature = (draft_tokens, draft_probs, target_probs, lengths, seed=0))]
pub fn verify_chain_batch<'py>(
    py: Python<'py>,
    draft_tokens: Ids2<'py>,
    draft_probs: &Bound<'py, PyAny>,
    target_probs: &Bound<'py, PyAny>,
    lengths: Ids1<'py>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
) -> PyResult<Vec<PyVerifyResult<'py>>> {
    let (x, _, n_max) = slice2("draft_tokens", &draft_tokens)?;
    let l = slice1("lengths", &lengths)?;
    let d = F3::new("draft_probs", draft_probs)?;
    let t = F3::new("target_probs", target_probs)?;
    let rs = match (&d, &t) {
        (F3::F32(d), F3::F32(t)) => chain_batch(py, x, n_max, d, t, l, seed),
        (F3::F64(d), F3::F64(t)) => chain_batch(py, x, n_max, d, t, l, seed),
        _ => Err(mixed("draft_probs")),
    }?;
    Ok(rs.into_iter().map(|r| into_py(py, r)).collect())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify_greedy, m)?)?;
    m.add_function(wrap_pyfunction!(verify_greedy_batch, m)?)?;
    m.add_function(wrap_pyfunction!(verify_tree, m)?)?;
    m.add_function(wrap_pyfunction!(verify_tree_batch, m)?)?;
    m.add_function(wrap_pyfunction!(verify_chain, m)?)?;
    m.add_function(wrap_pyfunction!(verify_chain_batch, m)?)?;
    Ok(())
}
