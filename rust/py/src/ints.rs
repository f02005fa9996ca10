//! Integer arrays (ids, parents, lengths): the kernels read int64, and an array of another
//! integer dtype (int32 argmax, uint16 ids, a byte-swapped int64) is converted by value, as the
//! float arrays of `floats` are; anything else -- floats above all, never truncated -- is a
//! TypeError naming the expected dtype and what came ("argument 'name': " is PyO3's prefix).

use std::ops::Deref;

use numpy::ndarray::Dimension;
use numpy::{PyArray, PyArrayDescrMethods, PyArrayMethods, PyReadonlyArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

/// An int64 array of `D` dimensions, borrowed read-only (Deref to rust-numpy's
/// `PyReadonlyArray`, so the `slice1` / `slice2` helpers take it as they are).
pub struct Ids<'py, D: Dimension>(PyReadonlyArray<'py, i64, D>);

/// A 1-D int64 array (see [`Ids`]).
pub type Ids1<'py> = Ids<'py, numpy::Ix1>;
/// A 2-D int64 array (see [`Ids`]).
pub type Ids2<'py> = Ids<'py, numpy::Ix2>;

impl<'py, D: Dimension> Deref for Ids<'py, D> {
    type Target = PyReadonlyArray<'py, i64, D>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a, 'py, D: Dimension + 'a> FromPyObject<'a, 'py> for Ids<'py, D> {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        Ok(Ids(int64_array::<D>(&obj)?.readonly()))
    }
}

/// `obj` as an int64 array of `D` dimensions: itself when it is one, else a C-contiguous int64
/// copy of an integer array (by value; uint64 values above 2**63 - 1 are a ValueError).
pub fn int64_array<'py, D: Dimension>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray<i64, D>>> {
    if let Ok(a) = obj.cast::<PyArray<i64, D>>() {
        return Ok(a.clone());
    }
    let ndim = D::NDIM.unwrap_or(0);
    let expected = format!("expected a {ndim}-D int64 numpy array (other integer dtypes convert by value)");
    let Ok(a) = obj.cast::<numpy::PyUntypedArray>() else {
        let got = obj.get_type().name().map(|n| n.to_string()).unwrap_or_default();
        return Err(PyTypeError::new_err(format!("{expected}, got {got}")));
    };
    let dt = a.dtype();
    let (kind, size) = (dt.kind(), dt.itemsize());
    if !matches!(kind, b'i' | b'u') || a.ndim() != ndim {
        let name = dt.str().map(|s| s.to_string()).unwrap_or_default();
        return Err(PyTypeError::new_err(format!("{expected}, got dtype {name} with shape {:?}", a.shape())));
    }
    let py = obj.py();
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("order", "C")?;
    let copy = a.call_method("astype", (numpy::dtype::<i64>(py),), Some(&kwargs))?;
    let copy = copy.cast_into::<PyArray<i64, D>>().map_err(PyErr::from)?;
    if kind == b'u' && size >= 8 && copy.readonly().as_array().iter().any(|&x| x < 0) {
        return Err(PyValueError::new_err(format!("{expected}: a uint64 value does not fit int64")));
    }
    Ok(copy)
}

/// A `from_py_with` extractor of a 1-D int64 array for kernels that read it without a borrow.
pub fn ids1_bound<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, numpy::PyArray1<i64>>> {
    int64_array::<numpy::Ix1>(obj)
}
