//! Bindings of `tokenloom_core::linear`: the `TiledLinear` packed weight and its small-M
//! product, run with the GIL released.

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::linear::{Isa, PackedLinear, MAX_THREADS};

use crate::args;
use crate::error::to_py;
use crate::floats::{bf16_bits_mut, describe, Bf16Bits2};

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
/// With ``amx=True`` (bfloat16 weights only) the weight is packed for the AMX kernel instead:
/// on a CPU and OS with AMX-BF16 (:func:`amx_available`) each call runs ``TDPBF16PS`` tiles,
/// the rows of x rounded to bfloat16 (exact for a bfloat16 model's activations), exact
/// products summed in float32 in the hardware's order: within float32 rounding of the other
/// kernels, not bit-equal to them, and each output row a function of its own input row alone
/// (what a tree step needs). Elsewhere a portable kernel of the same layout runs.
///
/// Args:
///     weight (numpy.ndarray): [N, K], float32; or, with ``bf16=True``, the bfloat16 bit
///         patterns as int16 or uint16 (``tensor.view(torch.int16).numpy()``), kept as bf16.
///     bias (numpy.ndarray | None): [N] float32.
///     bf16 (bool): the weight holds bfloat16 bit patterns.
///     amx (bool): pack for the AMX kernel (needs ``bf16=True``).
///
/// Raises:
///     ValueError: a weight that is not a non-empty C-contiguous 2-D array of the expected
///         dtype, a bias that is not [N] float32, or ``amx=True`` without ``bf16=True``.
#[pyclass(name = "TiledLinear", module = "tokenloom._core", frozen)]
pub struct PyTiledLinear {
    inner: PackedLinear,
}

#[pymethods]
impl PyTiledLinear {
    #[new]
    #[pyo3(signature = (weight, bias=None, *, bf16=false, amx=false))]
    fn new(py: Python<'_>, weight: &Bound<'_, PyAny>, bias: Option<&Bound<'_, PyAny>>, bf16: bool, amx: bool) -> PyResult<Self> {
        if amx && !bf16 {
            return Err(PyValueError::new_err("amx=True packs bfloat16 weights: pass bf16=True with the weight's bfloat16 bits"));
        }
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
            let arr = Bf16Bits2::new(weight).ok_or_else(|| {
                PyValueError::new_err(format!("weight: expected a 2-D int16 or uint16 (bfloat16 bits) numpy array, got {}", describe(weight)))
            })?;
            let (w, n, k) = arr.slice("weight")?;
            if amx {
                py.detach(|| PackedLinear::from_bf16_amx(w, n, k, bias.as_deref()))
            } else {
                py.detach(|| PackedLinear::from_bf16(w, n, k, bias.as_deref()))
            }
        } else {
            let (w, n, k) = matrix::<f32>("weight", "float32", weight)?;
            py.detach(|| PackedLinear::from_f32(&w, n, k, bias.as_deref()))
        };
        Ok(PyTiledLinear { inner: inner.map_err(to_py)? })
    }

    /// ``x @ weight.T (+ bias)``.
    ///
    /// Args:
    ///     x (numpy.ndarray): [M, K], C-contiguous, M >= 1: float32; or the bfloat16 bit
    ///         patterns as int16 or uint16 (``tensor.view(torch.int16).numpy()``), for a
    ///         bfloat16 weight only.
    ///     threads (int): threads splitting the weight panels, 1 to 64 (1: the calling thread).
    ///
    /// Returns:
    ///     numpy.ndarray: [M, N] float32 for float32 x; for bfloat16 x, int16 bfloat16 bit
    ///     patterns (the float32 results rounded to nearest even, as ``.to(torch.bfloat16)``
    ///     rounds; view them with ``torch.from_numpy(y).view(torch.bfloat16)``).
    ///
    /// Raises:
    ///     ValueError: x not a C-contiguous 2-D array of one of those dtypes with K columns
    ///         and >= 1 row, bfloat16 x for a float32 weight, or threads out of range.
    #[pyo3(signature = (x, threads=1))]
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, #[pyo3(from_py_with = threads_arg)] threads: usize) -> PyResult<Bound<'py, PyAny>> {
        let inner = &self.inner;
        let kin = inner.in_features();
        let n = inner.out_features();
        let check = |m: usize, k: usize| -> PyResult<usize> {
            if k != kin {
                return Err(PyValueError::new_err(format!("x: expected {kin} columns (in_features), got {k}")));
            }
            m.checked_mul(n).ok_or_else(|| PyValueError::new_err("x: too many rows"))
        };
        if let Ok(arr) = x.extract::<PyReadonlyArray2<'py, f32>>() {
            let (m, k) = (arr.shape()[0], arr.shape()[1]);
            let len = check(m, k)?;
            let xs = arr.as_slice().map_err(|_| PyValueError::new_err("x: expected a C-contiguous array"))?;
            let mut y = vec![0.0f32; len];
            py.detach(|| inner.forward(xs, m, &mut y, threads)).map_err(to_py)?;
            let y = Array2::from_shape_vec((m, n), y).map_err(|e| PyValueError::new_err(e.to_string()))?;
            return Ok(y.into_pyarray(py).into_any());
        }
        let Some(arr) = Bf16Bits2::new(x) else {
            return Err(PyValueError::new_err(format!(
                "x: expected a 2-D float32 numpy array (or int16 / uint16 bfloat16 bits for a bfloat16 weight), got {}",
                describe(x)
            )));
        };
        let (xs, m, k) = arr.slice("x")?;
        if !inner.is_bf16() {
            return Err(PyValueError::new_err("x: bfloat16 bits (int16 / uint16) need a bfloat16 weight; this TiledLinear holds float32: pass float32 x"));
        }
        let len = check(m, k)?;
        let mut y = vec![0i16; len];
        let bits = bf16_bits_mut(&mut y);
        py.detach(|| inner.forward_bf16(xs, m, bits, threads)).map_err(to_py)?;
        let y = Array2::from_shape_vec((m, n), y).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(y.into_pyarray(py).into_any())
    }

    /// The layer of output columns ``start:end`` of this one, sharing its packed weight (no
    /// copy). For any x its output equals ``self.forward(x)[:, start:end]`` bit for bit (and
    /// the output of those weight rows packed alone): so the separate layers of one fused
    /// weight (a model's q / k / v projections packed as one) cost no second copy.
    ///
    /// Args:
    ///     start (int): the first column, a multiple of 16 (a weight panel's first column).
    ///     end (int): one past the last column: a multiple of 16, or ``out_features``.
    ///
    /// Returns:
    ///     TiledLinear: [end - start, K].
    ///
    /// Raises:
    ///     ValueError: an empty or out-of-range span, or one off the panels.
    fn columns(&self, start: usize, end: usize) -> PyResult<Self> {
        Ok(PyTiledLinear { inner: self.inner.columns(start, end).map_err(to_py)? })
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

    /// Whether the weight is packed for the AMX kernel (``amx=True``).
    #[getter]
    fn amx(&self) -> bool {
        self.inner.is_amx()
    }

    /// The kernel a call runs: ``"amx-bf16"``, ``"amx-portable"`` (AMX panels on a CPU without
    /// AMX), or the micro-kernel family (:func:`tiled_linear_isa`).
    #[getter]
    fn kernel(&self) -> &'static str {
        self.inner.kernel_name()
    }

    fn __repr__(&self) -> String {
        let dt = if self.inner.is_bf16() { "bfloat16" } else { "float32" };
        format!(
            "TiledLinear(out_features={}, in_features={}, weight={dt}, kernel={})",
            self.inner.out_features(),
            self.inner.in_features(),
            self.inner.kernel_name()
        )
    }
}

/// The micro-kernel family :class:`TiledLinear` uses on this CPU: ``"avx512f"``, ``"avx2+fma"`` or
/// ``"scalar"``.
#[pyfunction]
fn tiled_linear_isa() -> &'static str {
    Isa::detect().name()
}

/// Whether this CPU and OS run the AMX-BF16 kernel (:class:`TiledLinear` with ``amx=True``):
/// the CPU reports AMX-TILE and AMX-BF16 and Linux granted the tile data to this process.
#[pyfunction]
fn amx_available() -> bool {
    tokenloom_core::linear::amx_available()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTiledLinear>()?;
    m.add_function(wrap_pyfunction!(amx_available, m)?)?;
    m.add_function(wrap_pyfunction!(tiled_linear_isa, m)?)?;
    Ok(())
}
