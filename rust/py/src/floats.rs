//! Float arrays that may be float32 or float64: the kernels are generic over both, so
//! probabilities and logits cross without a conversion copy. Other float arrays are converted
//! by value, never reinterpreted: a byte-swapped (non-native byte order) float64 becomes a
//! native float64, a byte-swapped float32 a native float32, narrower floats (float16) float32
//! and wider ones (long double) float64.

use numpy::ndarray::Axis;
use numpy::{PyArrayDescrMethods, PyReadonlyArray2, PyReadonlyArray3, PyUntypedArrayMethods};
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

/// An int16 output buffer as the `u16` bfloat16 bit patterns a kernel writes (no copy).
pub fn bf16_bits_mut(v: &mut [i16]) -> &mut [u16] {
    // SAFETY: i16 and u16 have the same size and alignment and every bit pattern is valid for
    // both: the kernel writes the bfloat16 bits straight into the int16 array returned.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u16>(), v.len()) }
}

/// What an argument is, for an error message: a numpy array's dtype and shape, else its type.
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!("dtype {} with shape {:?}", a.dtype().str().map(|s| s.to_string()).unwrap_or_default(), a.shape()),
        Err(_) => format!("a {}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
    }
}

fn dtype_error(what: &str, obj: &Bound<'_, PyAny>, ndim: usize) -> PyErr {
    PyValueError::new_err(format!("{what}: expected a {ndim}-D float32 or float64 numpy array, got {}", describe(obj)))
}

/// A float array of another float dtype, converted by value to native float32 (items of at
/// most 4 bytes) or float64 (wider); None when `obj` is not a float numpy array of `ndim`
/// dimensions.
fn native_copy<'py>(obj: &Bound<'py, PyAny>, ndim: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Ok(a) = obj.cast::<numpy::PyUntypedArray>() else { return Ok(None) };
    let dt = a.dtype();
    if dt.kind() != b'f' || a.ndim() != ndim {
        return Ok(None);
    }
    let py = obj.py();
    let target = if dt.itemsize() <= 4 { numpy::dtype::<f32>(py) } else { numpy::dtype::<f64>(py) };
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("order", "C")?;
    Ok(Some(a.call_method("astype", (target,), Some(&kwargs))?))
}

impl<'py> F2<'py> {
    pub fn new(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(F2::F32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f64>>() {
            return Ok(F2::F64(a));
        }
        match native_copy(obj, 2)? {
            Some(c) if c.extract::<PyReadonlyArray2<'py, f32>>().is_ok() => Ok(F2::F32(c.extract()?)),
            Some(c) => Ok(F2::F64(c.extract()?)),
            None => Err(dtype_error(what, obj, 2)),
        }
    }
}

impl<'py> F3<'py> {
    pub fn new(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f32>>() {
            return Ok(F3::F32(a));
        }
        if let Ok(a) = obj.extract::<PyReadonlyArray3<'py, f64>>() {
            return Ok(F3::F64(a));
        }
        match native_copy(obj, 3)? {
            Some(c) if c.extract::<PyReadonlyArray3<'py, f32>>().is_ok() => Ok(F3::F32(c.extract()?)),
            Some(c) => Ok(F3::F64(c.extract()?)),
            None => Err(dtype_error(what, obj, 3)),
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

/// A 2-D array of bfloat16 bit patterns, int16 or uint16 (``tensor.view(torch.int16).numpy()``),
/// borrowed: [`Bf16Bits2::slice`] reads it in place, whichever of the two integer types it is.
pub enum Bf16Bits2<'py> {
    I16(PyReadonlyArray2<'py, i16>),
    U16(PyReadonlyArray2<'py, u16>),
}

impl<'py> Bf16Bits2<'py> {
    /// The array, or None when `obj` is not a 2-D int16 / uint16 numpy array.
    pub fn new(obj: &Bound<'py, PyAny>) -> Option<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, i16>>() {
            return Some(Bf16Bits2::I16(a));
        }
        obj.extract::<PyReadonlyArray2<'py, u16>>().ok().map(Bf16Bits2::U16)
    }

    /// The bit patterns as `u16` (no copy), with the shape; a ValueError naming `what` unless
    /// the array is C-contiguous.
    pub fn slice(&self, what: &str) -> PyResult<(&[u16], usize, usize)> {
        match self {
            Bf16Bits2::U16(a) => crate::error::slice2(what, a),
            Bf16Bits2::I16(a) => {
                let (s, rows, cols) = crate::error::slice2(what, a)?;
                // SAFETY: i16 and u16 have the same size and alignment and every bit pattern is
                // valid for both; the slice borrows the array for as long as `self` lives.
                Ok((unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u16>(), s.len()) }, rows, cols))
            }
        }
    }
}
