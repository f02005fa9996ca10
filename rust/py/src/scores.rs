//! Bindings of `tokenloom_core::scores`: the `TokenCounts` table and the DC-PDD score.

use std::path::PathBuf;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use tokenloom_core::limits::MAX_VOCAB;
use tokenloom_core::scores::{dcpdd, TokenCounts};

use crate::args;
use crate::ints::{Ids1};
use crate::error::{slice1, to_py};

/// Token counts of a reference corpus (DC-PDD's token-frequency table).
///
/// Args:
///     vocab_size (int): number of token ids, in [1, 2**24].
///
/// Raises:
///     ValueError: vocab_size out of range.
///     TypeError: vocab_size is not an int.
#[pyclass(name = "TokenCounts", module = "tokenloom._core", frozen)]
pub struct PyTokenCounts {
    state: RwLock<TokenCounts>,
}

fn poisoned() -> PyErr {
    PyRuntimeError::new_err("TokenCounts: a previous call panicked; the state is unusable")
}

impl PyTokenCounts {
    fn read(&self) -> PyResult<RwLockReadGuard<'_, TokenCounts>> {
        self.state.read().map_err(|_| poisoned())
    }

    fn write(&self) -> PyResult<RwLockWriteGuard<'_, TokenCounts>> {
        self.state.write().map_err(|_| poisoned())
    }
}

fn vocab_size_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::unnamed("vocab_size", args::size("vocab_size", obj, 1, MAX_VOCAB))
}

fn opt_max_per_doc(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    if obj.is_none() {
        return Ok(None);
    }
    args::size("max_per_doc", obj, 1, usize::MAX).map(Some)
}

#[pymethods]
impl PyTokenCounts {
    #[new]
    #[pyo3(signature = (vocab_size))]
    fn new(#[pyo3(from_py_with = vocab_size_arg)] vocab_size: usize) -> PyResult<Self> {
        Ok(PyTokenCounts { state: RwLock::new(TokenCounts::new(vocab_size).map_err(to_py)?) })
    }

    /// int: number of token ids.
    #[getter]
    fn vocab_size(&self) -> PyResult<usize> {
        Ok(self.read()?.vocab())
    }

    /// int: tokens counted.
    #[getter]
    fn total(&self) -> PyResult<u64> {
        Ok(self.read()?.total())
    }

    /// int: documents counted (calls of `add`).
    #[getter]
    fn docs(&self) -> PyResult<u64> {
        Ok(self.read()?.docs())
    }

    /// Count one document's token ids.
    ///
    /// Args:
    ///     ids (np.ndarray[int64], shape [n]): the document's tokens, each in [0, vocab_size).
    ///     max_per_doc (int | None): count only the first max_per_doc tokens (>= 1).
    ///
    /// Raises:
    ///     IndexError: an id outside [0, vocab_size) (nothing is counted then).
    ///     ValueError: max_per_doc < 1; a non-contiguous array.
    #[pyo3(signature = (ids, max_per_doc = None))]
    fn add(
        &self,
        py: Python<'_>,
        ids: Ids1<'_>,
        #[pyo3(from_py_with = opt_max_per_doc)] max_per_doc: Option<usize>,
    ) -> PyResult<()> {
        let ids = slice1("ids", &ids)?;
        py.detach(|| self.write()?.add(ids, max_per_doc).map_err(to_py))
    }

    /// Add another table's counts (same vocabulary).
    ///
    /// Raises:
    ///     ValueError: another vocabulary size.
    #[pyo3(signature = (other))]
    fn merge(&self, other: &PyTokenCounts) -> PyResult<()> {
        let theirs = other.read()?.clone();
        self.write()?.merge(&theirs).map_err(to_py)
    }

    /// The raw counts.
    ///
    /// Returns:
    ///     np.ndarray[uint64], shape [vocab_size].
    fn counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<u64>>> {
        Ok(self.read()?.counts().to_vec().into_pyarray(py))
    }

    /// The Laplace-smoothed frequency distribution (count + 1) / (total + vocab_size).
    ///
    /// Returns:
    ///     np.ndarray[float64], shape [vocab_size]: positive, sums to 1.
    fn smoothed<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        Ok(self.read()?.smoothed().into_pyarray(py))
    }

    /// Write the table to `path` (versioned little-endian binary with a CRC-32, through a
    /// temporary file).
    ///
    /// Raises:
    ///     OSError: the file cannot be written.
    #[pyo3(signature = (path))]
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.read()?.save(&path).map_err(to_py))
    }

    /// Load a table written by `save`: header, length, the stored total and the CRC-32 of the
    /// whole file (format version 2; version 1 files, without it, are still read) are checked.
    ///
    /// Args:
    ///     path (str | os.PathLike): the file (a regular file: a named pipe is refused, never
    ///         waited on).
    ///     vocab_size (int | None): when given, must equal the file's vocabulary size.
    ///
    /// Raises:
    ///     OSError: the file cannot be read or is not a regular file.
    ///     ValueError: not such a file, another format version, truncated, corrupt (a CRC-32
    ///         mismatch: any flipped bit), or a vocab_size mismatch.
    #[staticmethod]
    #[pyo3(signature = (path, vocab_size = None))]
    fn load(
        py: Python<'_>,
        path: PathBuf,
        #[pyo3(from_py_with = args::opt_vocab_size)] vocab_size: Option<usize>,
    ) -> PyResult<Self> {
        let t = py.detach(|| TokenCounts::load(&path, vocab_size)).map_err(to_py)?;
        Ok(PyTokenCounts { state: RwLock::new(t) })
    }

    fn __repr__(&self) -> PyResult<String> {
        let t = self.read()?;
        Ok(format!("TokenCounts(vocab_size={}, total={}, docs={})", t.vocab(), t.total(), t.docs()))
    }
}

/// The DC-PDD score of one text: the mean over first occurrences of each distinct token of
/// min(probs[i] * log(1 / freq[ids[i]]), a). Higher: more likely a training member.
///
/// Args:
///     ids (np.ndarray[int64], shape [n]): the scored tokens, n >= 1.
///     probs (np.ndarray[float64], shape [n]): their model probabilities, in [0, 1].
///     freq (np.ndarray[float64], shape [V]): token frequencies, each in (0, 1].
///     a (float): the clip, > 0 (0.01 in the paper's reference).
///
/// Returns:
///     float.
///
/// Raises:
///     ValueError: lengths differ, n == 0, a probability / frequency / clip out of range.
///     IndexError: an id outside [0, V).
#[pyfunction]
#[pyo3(signature = (ids, probs, freq, a = 0.01))]
pub fn dcpdd_score(
    py: Python<'_>,
    ids: Ids1<'_>,
    probs: PyReadonlyArray1<'_, f64>,
    freq: PyReadonlyArray1<'_, f64>,
    a: f64,
) -> PyResult<f64> {
    let (ids, probs, freq) = (slice1("ids", &ids)?, slice1("probs", &probs)?, slice1("freq", &freq)?);
    py.detach(|| dcpdd::dcpdd_score(ids, probs, freq, a)).map_err(to_py)
}

/// Indices of the first occurrence of each distinct id, increasing.
///
/// Args:
///     ids (np.ndarray[int64], shape [n]).
///
/// Returns:
///     np.ndarray[int64], shape [m].
#[pyfunction]
#[pyo3(signature = (ids))]
pub fn first_occurrences<'py>(py: Python<'py>, ids: Ids1<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let ids = slice1("ids", &ids)?;
    let idx: Vec<i64> = dcpdd::first_occurrences(ids).into_iter().map(|i| i as i64).collect();
    Ok(idx.into_pyarray(py))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenCounts>()?;
    m.add_function(wrap_pyfunction!(dcpdd_score, m)?)?;
    m.add_function(wrap_pyfunction!(first_occurrences, m)?)?;
    Ok(())
}
