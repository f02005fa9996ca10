//! Float arrays that may be float32 or float64: the kernels are generic over both, so
//! probabilities and logits cross without a conversion copy.

use numpy::ndarray::Axis;
use numpy::{PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// A 2-D float32 or float64 array.
pub enum F2<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
}

/// A 3-D float32 or float64 array.
pub enum F3<'py> {
    F32(PyReadonlyArray3<'py, f32>),
    F64(PyReadonlyArray3<'py, f64>),
}

fn dtype_error(what: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyErr {
    let got = match obj.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!("dtype {} with shape {:?}", a.dtype().str().map(|s| s.to_string()).unwrap_or_default(), a.shape()),
        Err(_) => format!("a {}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
    };
    PyValueError::new_err(format!("{what}: expected a {ndim}-D float32 or float64 numpy array, got {got}"))
}

impl<'py> F2<'py> {
    pub fn new(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
            Ok(F2::F32(a))
        } else if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f64>>() {
            Ok(F2::F64(a))
        } else {
            Err(dtype_error(what, obj, 2))
        }
    }
}

impl<'py> F3<'py> {
    pub fn new(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f32>>() {
            Ok(F3::F32(a))
        } else if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f64>>() {
            Ok(F3::F64(a))
        } else {
            Err(dtype_error(what, obj, 3))
        }
    }
}

/// The [rows, cols] blocks of a 3-D array, one slice per leading index. Each block must be
/// C-contiguous; the leading axis may have any stride (a broadcast batch costs no copy).
pub fn blocks<'a, T: numpy::Element>(
    what: &str,
    arr: &'a PyReadonlyArray3<'_, T>,
) -> PyResult<(Vec<&'a [T]>, usize, usize)> {
    let view = arr.as_array();
    let (_, rows, cols) = view.dim();
    let mut out = Vec::with_capacity(view.len_of(Axis(0)));
    for b in 0..view.len_of(Axis(0)) {
        let block = view.index_axis_move(Axis(0), b);
        let s = block.to_slice().ok_or_else(|| {
            PyValueError::new_err(format!("{what}: each [{rows}, {cols}] block must be C-contiguous"))
        })?;
        out.push(s);
    }
    Ok((out, rows, cols))
}

/// Mismatched float dtypes between two arrays that a kernel reads together.
pub fn mixed(what: &str) -> PyErr {
    PyValueError::new_err(format!("{what}: target_probs and draft_probs must have the same dtype"))
}
