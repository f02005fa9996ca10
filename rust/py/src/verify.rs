//! Bindings of `tokenloom_core::verify`.

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;
use tokenloom_core::verify::{self, VerifyResult};

use crate::error::{slice1, slice2, to_py};

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
#[pyfunction]
#[pyo3(signature = (parents, tokens, target_argmax))]
pub fn verify_greedy<'py>(
    py: Python<'py>,
    parents: PyReadonlyArray1<'py, i64>,
    tokens: PyReadonlyArray1<'py, i64>,
    target_argmax: PyReadonlyArray1<'py, i64>,
) -> PyResult<PyVerifyResult<'py>> {
    let p = slice1("parents", &parents)?;
    let t = slice1("tokens", &tokens)?;
    let a = slice1("target_argmax", &target_argmax)?;
    let r = verify::verify_greedy(p, t, a).map_err(to_py)?;
    Ok(into_py(py, r))
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
    parents: PyReadonlyArray2<'py, i64>,
    tokens: PyReadonlyArray2<'py, i64>,
    target_argmax: PyReadonlyArray2<'py, i64>,
    lengths: PyReadonlyArray1<'py, i64>,
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

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(verify_greedy, m)?)?;
    m.add_function(wrap_pyfunction!(verify_greedy_batch, m)?)?;
    Ok(())
}
