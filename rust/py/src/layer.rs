//! Bindings of `tokenloom_core::layer`: a decoder layer's RMS norm fused with its residual add
//! (`RmsNorm`), its rotary embedding (`rotate_heads`) and its MLP activation (`silu`, `silu_mul`).

use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::layer::rotary::{rotate_heads as rotate_f32, rotate_heads_bf16, RotaryShape};
use tokenloom_core::layer::silu::{silu_bf16, silu_f32, silu_mul_bf16, silu_mul_f32};
use tokenloom_core::layer::RmsNorm;
use tokenloom_core::Result as CoreResult;

use crate::error::to_py;
use crate::floats::{bf16_bits_mut as as_u16, describe, Bf16Bits2};

/// Rows of one call: float32, or bfloat16 bits.
enum Rows<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    Bf16(Bf16Bits2<'py>),
}

impl<'py> Rows<'py> {
    fn new(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(a) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Rows::F32(a));
        }
        Bf16Bits2::new(obj).map(Rows::Bf16).ok_or_else(|| {
            PyValueError::new_err(format!(
                "{what}: expected a 2-D float32 numpy array (or int16 / uint16 bfloat16 bits), got {}",
                describe(obj)
            ))
        })
    }

    fn shape(&self) -> (usize, usize) {
        match self {
            Rows::F32(a) => (a.shape()[0], a.shape()[1]),
            Rows::Bf16(Bf16Bits2::I16(a)) => (a.shape()[0], a.shape()[1]),
            Rows::Bf16(Bf16Bits2::U16(a)) => (a.shape()[0], a.shape()[1]),
        }
    }
}

fn f32_slice<'a>(what: &str, a: &'a PyReadonlyArray2<'_, f32>) -> PyResult<&'a [f32]> {
    a.as_slice().map_err(|_| PyValueError::new_err(format!("{what}: expected a C-contiguous array")))
}

fn int16_out(len: usize) -> Vec<i16> {
    vec![0i16; len]
}

/// A one-input kernel over `rows` ("x") into a new [out_rows, out_cols] array of the rows' dtype:
/// `f32k` for float32 rows, `bf16k` for bfloat16 bits.
fn unary<'py>(
    py: Python<'py>,
    rows: &Rows<'py>,
    (out_rows, out_cols): (usize, usize),
    f32k: impl FnOnce(&[f32], &mut [f32]) -> CoreResult<()>,
    bf16k: impl FnOnce(&[u16], &mut [u16]) -> CoreResult<()>,
) -> PyResult<Bound<'py, PyAny>> {
    let len = out_rows.checked_mul(out_cols).ok_or_else(|| PyValueError::new_err("sizes overflow"))?;
    match rows {
        Rows::F32(a) => {
            let mut y = vec![0.0f32; len];
            f32k(f32_slice("x", a)?, &mut y).map_err(to_py)?;
            array(py, y, out_rows, out_cols)
        }
        Rows::Bf16(b) => {
            let (xs, _, _) = b.slice("x")?;
            let mut y = int16_out(len);
            bf16k(xs, as_u16(&mut y)).map_err(to_py)?;
            array(py, y, out_rows, out_cols)
        }
    }
}

fn array<'py, T: numpy::Element>(py: Python<'py>, v: Vec<T>, rows: usize, cols: usize) -> PyResult<Bound<'py, PyAny>> {
    let a = Array2::from_shape_vec((rows, cols), v).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(a.into_pyarray(py).into_any())
}

/// A decoder layer's RMS norm: per row ``y = round(w * round(x * r))`` with
/// ``r = 1 / sqrt(mean(x^2) + eps)``, float32 arithmetic, ``round`` the rounding to the rows'
/// dtype (bfloat16: nearest even): transformers' ``LlamaRMSNorm`` with a fixed summation order
/// (16 lanes, then pairwise), the same bits on every CPU. :meth:`add_forward` first adds the
/// residual (``s = round(x + delta)``, torch's ``x + delta``) and norms ``s``.
///
/// Args:
///     weight (numpy.ndarray): [H] float32; or, with ``bf16=True``, the bfloat16 bit patterns
///         as int16 or uint16 (``tensor.view(torch.int16).numpy()``).
///     eps (float): finite, >= 0 (used as float32).
///     bf16 (bool): the weight (and every call's rows) is bfloat16.
///
/// Raises:
///     ValueError: an empty weight, one not 1-D of the expected dtype, or a bad eps.
#[pyclass(name = "RmsNorm", module = "tokenloom._core", frozen)]
pub struct PyRmsNorm {
    inner: RmsNorm,
}

#[pymethods]
impl PyRmsNorm {
    #[new]
    #[pyo3(signature = (weight, eps, *, bf16=false))]
    fn new(weight: &Bound<'_, PyAny>, eps: f64, bf16: bool) -> PyResult<Self> {
        let inner = if bf16 {
            let w = if let Ok(a) = weight.extract::<PyReadonlyArray1<'_, i16>>() {
                a.as_slice().map_err(|_| PyValueError::new_err("weight: expected a C-contiguous array"))?.iter().map(|&v| v as u16).collect()
            } else if let Ok(a) = weight.extract::<PyReadonlyArray1<'_, u16>>() {
                a.as_slice().map_err(|_| PyValueError::new_err("weight: expected a C-contiguous array"))?.to_vec()
            } else {
                return Err(PyValueError::new_err(format!(
                    "weight: expected a 1-D int16 or uint16 (bfloat16 bits) numpy array, got {}",
                    describe(weight)
                )));
            };
            RmsNorm::from_bf16(&w, eps as f32)
        } else {
            let a: PyReadonlyArray1<'_, f32> = weight
                .extract()
                .map_err(|_| PyValueError::new_err(format!("weight: expected a 1-D float32 numpy array, got {}", describe(weight))))?;
            RmsNorm::from_f32(a.as_slice().map_err(|_| PyValueError::new_err("weight: expected a C-contiguous array"))?, eps as f32)
        };
        Ok(PyRmsNorm { inner: inner.map_err(to_py)? })
    }

    /// The norm of each row.
    ///
    /// Args:
    ///     x (numpy.ndarray): [M, H], C-contiguous, M >= 1: float32, or bfloat16 bits (int16 /
    ///         uint16) for a bfloat16 norm.
    ///
    /// Returns:
    ///     numpy.ndarray: [M, H], float32 or int16 bfloat16 bits, as x.
    ///
    /// Raises:
    ///     ValueError: x not such an array, of H columns, of the norm's dtype.
    fn forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let rows = Rows::new("x", x)?;
        let shape = self.check(&rows)?;
        unary(py, &rows, shape, |x, y| self.inner.forward(x, y), |x, y| self.inner.forward_bf16(x, y))
    }

    /// ``s = x + delta`` and the norm of each row of ``s``.
    ///
    /// Args:
    ///     x, delta (numpy.ndarray): [M, H] each, of one dtype (as :meth:`forward`'s x).
    ///
    /// Returns:
    ///     tuple[numpy.ndarray, numpy.ndarray]: (s, norm(s)), [M, H] each, x's dtype.
    ///
    /// Raises:
    ///     ValueError: x or delta not such an array, of other shapes or dtypes.
    fn add_forward<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>, delta: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
        let (rows, deltas) = (Rows::new("x", x)?, Rows::new("delta", delta)?);
        let (m, h) = self.check(&rows)?;
        if deltas.shape() != (m, h) {
            return Err(PyValueError::new_err(format!("delta: expected shape [{m}, {h}] (as x), got {:?}", deltas.shape())));
        }
        match (&rows, &deltas) {
            (Rows::F32(a), Rows::F32(d)) => {
                let (mut s, mut y) = (vec![0.0f32; m * h], vec![0.0f32; m * h]);
                self.inner.add_forward(f32_slice("x", a)?, f32_slice("delta", d)?, &mut s, &mut y).map_err(to_py)?;
                Ok((array(py, s, m, h)?, array(py, y, m, h)?))
            }
            (Rows::Bf16(a), Rows::Bf16(d)) => {
                let ((xs, _, _), (ds, _, _)) = (a.slice("x")?, d.slice("delta")?);
                let (mut s, mut y) = (int16_out(m * h), int16_out(m * h));
                self.inner.add_forward_bf16(xs, ds, as_u16(&mut s), as_u16(&mut y)).map_err(to_py)?;
                Ok((array(py, s, m, h)?, array(py, y, m, h)?))
            }
            _ => Err(PyValueError::new_err("delta: expected the dtype of x")),
        }
    }

    /// H.
    #[getter]
    fn hidden_size(&self) -> usize {
        self.inner.cols()
    }

    /// Whether the weight is bfloat16.
    #[getter]
    fn bf16(&self) -> bool {
        self.inner.is_bf16()
    }

    /// The epsilon (float32).
    #[getter]
    fn eps(&self) -> f32 {
        self.inner.eps()
    }

    fn __repr__(&self) -> String {
        let dt = if self.inner.is_bf16() { "bfloat16" } else { "float32" };
        format!("RmsNorm(hidden_size={}, eps={}, weight={dt})", self.inner.cols(), self.inner.eps())
    }
}

impl PyRmsNorm {
    fn check(&self, rows: &Rows<'_>) -> PyResult<(usize, usize)> {
        let (m, h) = rows.shape();
        if h != self.inner.cols() {
            return Err(PyValueError::new_err(format!("x: expected {} columns (hidden_size), got {h}", self.inner.cols())));
        }
        if m == 0 {
            return Err(PyValueError::new_err("x: expected at least one row"));
        }
        let bf16 = matches!(rows, Rows::Bf16(_));
        if bf16 != self.inner.is_bf16() {
            let (has, pass) = if self.inner.is_bf16() { ("bfloat16", "bfloat16 bits (int16 / uint16)") } else { ("float32", "float32") };
            return Err(PyValueError::new_err(format!("x: this norm holds a {has} weight: pass {pass} rows")));
        }
        Ok((m, h))
    }
}

/// The rotary embedding of a step's query and key heads, as transformers'
/// ``apply_rotary_pos_emb`` (``x * cos + rotate_half(x) * sin``) bit for bit, read straight
/// from the projections' output rows and written head-major: for row ``r = b * T + t`` and head
/// ``h``, ``out[b, h, t] = x_h * cos[r] + swap_halves(x_h) * signed_sin[r]``, each product and
/// the sum rounded to the rows' dtype as torch rounds them.
///
/// Args:
///     x (numpy.ndarray): [B * T, C] rows, C >= heads * head_dim (the heads are the first
///         columns; others, e.g. the value heads, are ignored), C-contiguous: float32, or
///         bfloat16 bits (int16 / uint16).
///     heads (int): heads to rotate (H). head_dim (int): D, even.
///     cos, signed_sin (numpy.ndarray): [B * T, D] each, x's dtype: the rotary cosine and the
///         sine with its first half negated, per row of x.
///     batch (int): B (the rows are B blocks of T tokens).
///
/// Returns:
///     numpy.ndarray: [B * H * T, D] (view it as [B, H, T, D]), x's dtype.
///
/// Raises:
///     ValueError: arrays of other shapes or mixed dtypes, an odd head_dim, too many heads, or
///         rows not a multiple of batch.
#[pyfunction]
#[pyo3(signature = (x, heads, head_dim, cos, signed_sin, batch=1))]
fn rotate_heads<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    heads: usize,
    head_dim: usize,
    cos: &Bound<'py, PyAny>,
    signed_sin: &Bound<'py, PyAny>,
    batch: usize,
) -> PyResult<Bound<'py, PyAny>> {
    let (rows, c, sn) = (Rows::new("x", x)?, Rows::new("cos", cos)?, Rows::new("signed_sin", signed_sin)?);
    let (m, cols) = rows.shape();
    let shape = RotaryShape { rows: m, cols, heads, head_dim, batch };
    let len = heads.checked_mul(head_dim).and_then(|w| w.checked_mul(m)).ok_or_else(|| PyValueError::new_err("sizes overflow"))?;
    let out_rows = len.checked_div(head_dim).unwrap_or(0);
    match (&rows, &c, &sn) {
        (Rows::F32(a), Rows::F32(cc), Rows::F32(ss)) => {
            let mut y = vec![0.0f32; len];
            rotate_f32(shape, f32_slice("x", a)?, f32_slice("cos", cc)?, f32_slice("signed_sin", ss)?, &mut y).map_err(to_py)?;
            array(py, y, out_rows, head_dim)
        }
        (Rows::Bf16(a), Rows::Bf16(cc), Rows::Bf16(ss)) => {
            let ((xs, _, _), (cs, _, _), (ssl, _, _)) = (a.slice("x")?, cc.slice("cos")?, ss.slice("signed_sin")?);
            let mut y = int16_out(len);
            rotate_heads_bf16(shape, xs, cs, ssl, as_u16(&mut y)).map_err(to_py)?;
            array(py, y, out_rows, head_dim)
        }
        _ => Err(PyValueError::new_err("cos, signed_sin: expected the dtype of x")),
    }
}

/// ``x * sigmoid(x)`` elementwise, as ``x / (1 + exp(-x))`` in float32 with tokenloom's own
/// vectorizable ``exp`` (within 2 ulp of the exact one; the same bits on every CPU; not torch's
/// ``silu`` bit for bit), rounded once to x's dtype.
///
/// Args:
///     x (numpy.ndarray): [M, N], C-contiguous: float32, or bfloat16 bits (int16 / uint16).
///
/// Returns:
///     numpy.ndarray: [M, N], x's dtype.
///
/// Raises:
///     ValueError: x not such an array, or empty.
#[pyfunction]
fn silu<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let rows = Rows::new("x", x)?;
    let (m, n) = rows.shape();
    if m == 0 || n == 0 {
        return Err(PyValueError::new_err("x: expected at least one value"));
    }
    unary(py, &rows, (m, n), silu_f32, silu_bf16)
}

/// A gated MLP's ``act(gate) * up`` from the rows ``[gate | up]`` side by side (the output of
/// the gate and up projections packed as one): ``round(round(silu(gate)) * up)``, ``silu`` as
/// :func:`silu`, ``round`` to x's dtype (torch's ``silu(gate) * up`` with that activation).
///
/// Args:
///     x (numpy.ndarray): [M, 2 * I], C-contiguous: float32, or bfloat16 bits (int16 / uint16).
///
/// Returns:
///     numpy.ndarray: [M, I], x's dtype.
///
/// Raises:
///     ValueError: x not such an array, empty, or of an odd width.
#[pyfunction]
fn silu_mul<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let rows = Rows::new("x", x)?;
    let (m, n) = rows.shape();
    if m == 0 || n == 0 || n % 2 != 0 {
        return Err(PyValueError::new_err(format!("x: expected [M >= 1, 2 * I] rows (gate | up), got [{m}, {n}]")));
    }
    let inter = n / 2;
    unary(py, &rows, (m, inter), |x, y| silu_mul_f32(x, inter, y), |x, y| silu_mul_bf16(x, inter, y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRmsNorm>()?;
    m.add_function(wrap_pyfunction!(rotate_heads, m)?)?;
    m.add_function(wrap_pyfunction!(silu, m)?)?;
    m.add_function(wrap_pyfunction!(silu_mul, m)?)
}
