//! Bindings of `tokenloom_core::sampling` and `tokenloom_core::rng`.

use numpy::{IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokenloom_core::rng;
use tokenloom_core::sampling::{Real, Transforms};

use crate::args;
use crate::error::{slice1, slice2, to_py};
use crate::floats::{Bf16Bits2, F2};

fn probs_impl<'py, R: Real + numpy::Element>(
    py: Python<'py>,
    tr: Transforms,
    logits: &PyReadonlyArray2<'py, R>,
    as_f32: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let (data, rows, vocab) = slice2("logits", logits)?;
    let p = py.detach(|| tr.probs(data, rows, vocab)).map_err(to_py)?;
    let shape = [rows, vocab];
    if as_f32 {
        let v: Vec<f32> = p.iter().map(|&x| x as f32).collect();
        Ok(PyArray1::from_vec(py, v).reshape(shape)?.into_any())
    } else {
        Ok(PyArray1::from_vec(py, p).reshape(shape)?.into_any())
    }
}

/// Probabilities from logits: temperature, then top-k, then top-p, then min-p, in f64.
///
/// Args:
///     logits (np.ndarray[float32 | float64; other floats, e.g. float16, convert by value],
///         shape [B, V]): -inf masks a token; NaN and +inf are errors.
///     temperature (float): >= 0; 0 gives the one-hot row of the argmax (ties -> lowest id).
///         Logits are divided by it, so a subnormal temperature gives the T -> 0+ limit
///         exactly: uniform over the tied maxima.
///     top_k (int | None): keep tokens whose logit is >= the k-th largest (ties kept).
///     top_p (float | None): 0 < top_p <= 1; keep the smallest top set reaching mass top_p
///         (ties at the boundary kept).
///     min_p (float | None): 0 <= min_p <= 1; keep tokens with p >= min_p * max p.
///
/// Returns:
///     np.ndarray (shape [B, V], the dtype of ``logits``): rows summing to 1.
///
/// Raises:
///     ValueError: a bad parameter, a NaN / +inf logit, a row of only -inf, a wrong dtype.
///     TypeError: top_k is not an int, or a float parameter is not a number.
#[pyfunction]
#[pyo3(signature = (logits, temperature=1.0, top_k=None, top_p=None, min_p=None))]
pub fn probs_from_logits<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = args::temperature)] temperature: f64,
    #[pyo3(from_py_with = args::top_k)] top_k: Option<i64>,
    #[pyo3(from_py_with = args::top_p)] top_p: Option<f64>,
    #[pyo3(from_py_with = args::min_p)] min_p: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let tr = Transforms::new(temperature, top_k, top_p, min_p).map_err(to_py)?;
    match F2::new("logits", logits)? {
        F2::F32(a) => probs_impl(py, tr, &a, true),
        F2::F64(a) => probs_impl(py, tr, &a, false),
    }
}

/// Samples one token per logit row after the transforms of ``probs_from_logits``.
///
/// Row r uses the uniform ``uniforms(seed, stream0 + r, counter)`` and the inverse CDF.
///
/// Args:
///     logits (np.ndarray[float32 | float64; other floats, e.g. float16, convert by value],
///         shape [B, V]).
///     temperature, top_k, top_p, min_p: as in ``probs_from_logits``.
///     seed (int): 64-bit seed.
///     counter (int): 64-bit draw counter (a sampler increments it per call).
///     stream0 (int): stream of row 0.
///
/// Returns:
///     np.ndarray[int64], shape [B]: sampled ids.
///
/// Raises:
///     ValueError: as ``probs_from_logits``; seed, counter or stream0 outside [0, 2**64).
///     TypeError: as ``probs_from_logits``; an int argument that is not an int.
#[pyfunction]
#[pyo3(signature = (logits, temperature=1.0, top_k=None, top_p=None, min_p=None, seed=0, counter=0, stream0=0))]
#[allow(clippy::too_many_arguments)]
pub fn sample_logits<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = args::temperature)] temperature: f64,
    #[pyo3(from_py_with = args::top_k)] top_k: Option<i64>,
    #[pyo3(from_py_with = args::top_p)] top_p: Option<f64>,
    #[pyo3(from_py_with = args::min_p)] min_p: Option<f64>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
    #[pyo3(from_py_with = args::counter)] counter: u64,
    #[pyo3(from_py_with = args::stream0)] stream0: u64,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let tr = Transforms::new(temperature, top_k, top_p, min_p).map_err(to_py)?;
    let ids = match F2::new("logits", logits)? {
        F2::F32(a) => {
            let (d, r, v) = slice2("logits", &a)?;
            py.detach(|| tr.sample(d, r, v, seed, stream0, counter))
        }
        F2::F64(a) => {
            let (d, r, v) = slice2("logits", &a)?;
            py.detach(|| tr.sample(d, r, v, seed, stream0, counter))
        }
    }
    .map_err(to_py)?;
    Ok(ids.into_pyarray(py))
}

/// Uniforms in [0, 1) of the counter-based generator: ``out[i] = u(seed, streams[i], counters[i])``.
///
/// Args:
///     seed (int): 64-bit seed.
///     streams (np.ndarray[uint64], shape [N]).
///     counters (np.ndarray[uint64], shape [N]).
///
/// Returns:
///     np.ndarray[float64], shape [N].
///
/// Raises:
///     ValueError: the lengths differ, or seed outside [0, 2**64).
#[pyfunction]
#[pyo3(signature = (seed, streams, counters))]
pub fn uniforms<'py>(
    py: Python<'py>,
    #[pyo3(from_py_with = args::seed)] seed: u64,
    streams: PyReadonlyArray1<'py, u64>,
    counters: PyReadonlyArray1<'py, u64>,
) -> PyResult<Bound<'py, PyArray1<f64>>> {
    let s = slice1("streams", &streams)?;
    let c = slice1("counters", &counters)?;
    if s.len() != c.len() {
        return Err(PyValueError::new_err(format!(
            "counters: expected length {} (= len(streams)), got {}",
            s.len(),
            c.len()
        )));
    }
    let out: Vec<f64> = s.iter().zip(c).map(|(&st, &ct)| rng::uniform(seed, st, ct)).collect();
    Ok(out.into_pyarray(py))
}

/// The ``k`` best columns of each logit row, best first: larger values first, NaN above every
/// number, ties by the lower column. One pass over each row (``torch.topk`` costs several).
///
/// Args:
///     logits (np.ndarray[float32 | float64; other floats, e.g. float16, convert by value],
///         shape [n, V]): C-contiguous rows. With ``bf16=True``: bfloat16 bit patterns as
///         int16 or uint16 (``tensor.view(torch.int16).numpy()``), ranked by their values.
///     k (int): in [1, V].
///     bf16 (bool): the rows hold bfloat16 bit patterns.
///
/// Returns:
///     np.ndarray[int64], shape [n, k].
///
/// Raises:
///     ValueError: k outside [1, V], a wrong dtype or layout.  TypeError: k is not an int.
#[pyfunction]
#[pyo3(signature = (logits, k, *, bf16=false))]
pub fn top_k_rows<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    #[pyo3(from_py_with = args::k_candidates)] k: usize,
    bf16: bool,
) -> PyResult<Bound<'py, PyAny>> {
    fn run<R: Real + PartialOrd + numpy::Element>(
        py: Python<'_>,
        a: &PyReadonlyArray2<'_, R>,
        k: usize,
    ) -> PyResult<(Vec<i64>, usize)> {
        let (d, rows, v) = slice2("logits", a)?;
        Ok((py.detach(|| tokenloom_core::topk::top_k_rows(d, v, k)).map_err(to_py)?, rows))
    }
    if bf16 {
        // widening bfloat16 to float32 is exact and keeps the order (NaN stays NaN)
        let arr = Bf16Bits2::new(logits).ok_or_else(|| {
            PyValueError::new_err("logits: with bf16=True, expected a 2-D int16 or uint16 numpy array of bfloat16 bits")
        })?;
        let (bits, rows, v) = arr.slice("logits")?;
        let ids = py
            .detach(|| {
                let wide: Vec<f32> = bits.iter().map(|&b| tokenloom_core::linear::bf16_to_f32(b)).collect();
                tokenloom_core::topk::top_k_rows(&wide, v, k)
            })
            .map_err(to_py)?;
        return Ok(ids.into_pyarray(py).reshape([rows, k])?.into_any());
    }
    let (ids, rows) = match F2::new("logits", logits)? {
        F2::F32(a) => run(py, &a, k)?,
        F2::F64(a) => run(py, &a, k)?,
    };
    Ok(ids.into_pyarray(py).reshape([rows, k])?.into_any())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(top_k_rows, m)?)?;
    m.add_function(wrap_pyfunction!(probs_from_logits, m)?)?;
    m.add_function(wrap_pyfunction!(sample_logits, m)?)?;
    m.add_function(wrap_pyfunction!(uniforms, m)?)?;
    Ok(())
}
