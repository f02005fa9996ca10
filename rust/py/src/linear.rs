//! Bindings of `tokenloom_core::linear`: the `TiledLinear` packed weight and its small-M
//! product, run with the GIL released.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::linear::{Isa, PackedLinear, MAX_THREADS};

use crate::args;
use crate::error::to_py;

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<numpy::PyUntypedArray>() {
        Ok(a) => format!("dtype {} with shape {:?}", a.dtype().str().map(|s| s.to_string()).unwrap_or_default(), a.shape()),
        Err(_) => format!("a {}", obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()),
    }
}

fn threads_arg(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    args::size("threads", obj, 1, MAX_THREADS)
}

/// A C-contiguous 2-D array of `T` as (values, rows, cols), or a ValueError naming `what`.
fn matrix<'py, T: numpy::Element + Copy>(what: &str, dtype: &str, obj: &Bound<'py, PyAny>) -> PyResult<(Vec<T>, usize, usize)> {
    let arr: PyReadonlyArray2<'py, T> = obj
        .extract()
        .map_err(|_| PyValueError::new_err(format!("{what}: expected a 2-D {dtype} numpy array, got {}", describe(obj))))?;
    let (r, c) = (arr.shape()[0], arr.shape()[1]);
    let s = arr.as_slice().map_err(|_| PyValueError::new_err(format!("{what}: expected a C-contiguous array")))?;
    Ok((s.to_vec(), r, c))
}

/// A linear layer's weight packed for products with few rows: `y[M, N] = x[M, K] @ W[N, K]^T
/// (+ bias)`, the weight streamed once per call for all M rows (panels of 16 output columns,
/// AVX-512F or AVX2+FMA micro-kernels where the CPU has them, else a portable loop; float32
/// accumulation, the same bits whichever kernel runs).
///
/// Args:
///     weight (numpy.ndarray): [N, K], float32; or, with ``bf16=True``, the bfloat16 bit
///         patterns as int16 or uint16 (``tensor.view(torch.int16).numpy()``), kept as bf16.
///     bias (numpy.ndarray | None): [N] float32.
///     bf16 (bool): the weight holds bfloat16 bit patterns.
///
/// Raises:
///     ValueError: a weight that is not a non-empty C-contiguous 2-D array of the expected
///         dtype, or a bias that is not [N] float32.
#[pyclass(name = "TiledLinear", module = "tokenloom._core", frozen)]
pub struct PyTiledLinear {
    inner: PackedLinear,
}

#[pymethods]
impl PyTiledLinear {
    #[new]
    #[pyo3(signature = (weight, bias=None, *, bf16=false))]
    fn new(py: Python<'_>, weight: &Bound<'_, PyAny>, bias: Option<&Bound<'_, PyAny>>, bf16: bool) -> PyResult<Self> {
        let bias: Option<Vec<f32>> = match bias {
            None => None,
            Some(b) if b.is_none() => None,
            Some(b) => {
                let arr: PyReadonlyArray1<'_, f32> = b
                    .extract()
                    .map_err(|_| PyValueError::new_err(format!("bias: expected a 1-D float32 numpy array, got {}", describe(b))))?;
                Some(arr.as_slice().map_err(|_| PyValueError::new_err("bias: expected a C-contiguous array"))?.to_vec())
            }
        };
        let inner = if bf16 {
            let (w, n, k) = if weight.extract::<PyReadonlyArray2<'_, u16>>().is_ok() {
                matrix::<u16>("weight", "int16 or uint16 (bfloat16 bits)", weight)?
            } else {
                let (w, n, k) = matrix::<i16>("weight", "int16 or uint16 (bfloat16 bits)", weight)?;
                (w.into_iter().map(|v| v as u16).collect(), n, k)
            };
            py.detach(|| PackedLinear::from_bf16(&w, n, k, bias.as_deref()))
        } else {
            let (w, n, k) = matrix::<f32>("weight", "float32", weight)?;
            py.detach(|| PackedLinear::from_f32(&w, n, k, bias.as_deref()))
        };
        Ok(PyTiledLinear { inner: inner.map_err(to_py)? })
    }

    /// ``x @ weight.T (+ bias)``.
    ///
    /// Args:
    ///     x (numpy.ndarray): [M, K] float32, C-contiguous, M >= 1.
    ///     threads (int): threads splitting the weight panels, 1 to 64 (1: the calling thread).
    ///
    /// Returns:
    ///     numpy.ndarray: [M, N] float32.
    ///
    /// Raises:
    ///     ValueError: x not a C-contiguous 2-D float32 array of K columns and >= 1 row, or
    ///         threads out of range.
    #[pyo3(signature = (x, threads=1))]
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, #[pyo3(from_py_with = threads_arg)] threads: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let arr: PyReadonlyArray2<'py, f32> = x
            .extract()
            .map_err(|_| PyValueError::new_err(format!("x: expected a 2-D float32 numpy array, got {}", describe(x))))?;
        let (m, k) = (arr.shape()[0], arr.shape()[1]);
        if k != self.inner.in_features() {
            return Err(PyValueError::new_err(format!("x: expected {} columns (in_features), got {k}", self.inner.in_features())));
        }
        let xs = arr.as_slice().map_err(|_| PyValueError::new_err("x: expected a C-contiguous array"))?;
        let n = self.inner.out_features();
        let inner = &self.inner;
        let y = py.detach(|| -> tokenloom_core::Result<Vec<f32>> {
            let mut y = vec![0.0f32; m.checked_mul(n).ok_or_else(|| tokenloom_core::CoreError::value("x: too many rows"))?];
            inner.forward(xs, m, &mut y, threads)?;
            Ok(y)
        });
        let y = y.map_err(to_py)?;
        let y = Array2::from_shape_vec((m, n), y).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(y.into_pyarray(py))
    }

    /// N.
    #[getter]
    fn out_features(&self) -> usize {
        self.inner.out_features()
    }

    /// K.
    #[getter]
    fn in_features(&self) -> usize {
        self.inner.in_features()
    }

    /// Whether the weight is kept as bfloat16.
    #[getter]
    fn bf16(&self) -> bool {
        self.inner.is_bf16()
    }

    /// Bytes of the packed weight (streamed once per call).
    #[getter]
    fn weight_bytes(&self) -> usize {
        self.inner.weight_bytes()
    }

    fn __repr__(&self) -> String {
        let dt = if self.inner.is_bf16() { "bfloat16" } else { "float32" };
        format!("TiledLinear(out_features={}, in_features={}, weight={dt})", self.inner.out_features(), self.inner.in_features())
    }
}

/// The micro-kernel family :class:`TiledLinear` uses on this CPU: ``"avx512f"``, ``"avx2+fma"`` or
/// ``"scalar"``.
#[pyfunction]
fn tiled_linear_isa() -> &'static str {
    Isa::detect().name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTiledLinear>()?;
    m.add_function(wrap_pyfunction!(tiled_linear_isa, m)?)?;
    Ok(())
}
