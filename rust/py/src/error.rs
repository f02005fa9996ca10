//! Mapping of core errors to Python exceptions.

use pyo3::exceptions::{PyIndexError, PyOSError, PyValueError};
use numpy::PyUntypedArrayMethods;
use pyo3::PyErr;
use tokenloom_core::CoreError;

/// `Shape`/`Value` -> ValueError, `Index` -> IndexError, `Io` -> OSError.
pub fn to_py(err: CoreError) -> PyErr {
    let msg = err.to_string();
    match err {
        CoreError::Shape { .. } | CoreError::Value(_) => PyValueError::new_err(msg),
        CoreError::Index { .. } => PyIndexError::new_err(msg),
        CoreError::Io(_) => PyOSError::new_err(msg),
    }
}

/// A contiguous view of a 1-D numpy array, or a ValueError naming the argument.
pub fn slice1<'a, T: numpy::Element>(
    what: &str,
    arr: &'a numpy::PyReadonlyArray1<'_, T>,
) -> pyo3::PyResult<&'a [T]> {
    arr.as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a C-contiguous array")))
}

/// A contiguous view of a 2-D numpy array with its shape, or a ValueError naming the argument.
pub fn slice2<'a, T: numpy::Element>(
    what: &str,
    arr: &'a numpy::PyReadonlyArray2<'_, T>,
) -> pyo3::PyResult<(&'a [T], usize, usize)> {
    let shape = arr.shape();
    let (rows, cols) = (shape[0], shape[1]);
    let s = arr
        .as_slice()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a C-contiguous array")))?;
    Ok((s, rows, cols))
}
