//! Scalar arguments from Python, checked by value.
//!
//! An integer argument accepts exactly what `operator.index` accepts: Python ints (bools
//! included) and numpy integer scalars; a float or a string is a `TypeError`, never truncated
//! or parsed, and so is a bool. The value is then range-checked as a Python int, so an int too large for the
//! kernel is a `ValueError` (sizes, seeds, counts) or an `IndexError` (ids), never an
//! `OverflowError`. The `from_py_with` extractors at the end name their argument in messages.

use pyo3::exceptions::{PyIndexError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyString};

/// `obj` as an int (`operator.index(obj)`, bools refused), or a TypeError naming `what`.
fn as_int<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if obj.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{what}: expected an int, got bool")));
    }
    // SAFETY: `PyNumber_Index` takes a valid object pointer and returns a new reference or
    // NULL with an exception set, which `from_owned_ptr_or_err` turns into a PyErr.
    let r = unsafe { Bound::from_owned_ptr_or_err(obj.py(), pyo3::ffi::PyNumber_Index(obj.as_ptr())) };
    r.map_err(|e| {
        if e.is_instance_of::<PyTypeError>(obj.py()) {
            PyTypeError::new_err(format!("{what}: expected an int, got {}", type_name(obj)))
        } else {
            e
        }
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "an object".into())
}

/// The decimal value of an int for a message (Python refuses `str` past 4300 digits).
fn show(v: &Bound<'_, PyAny>) -> String {
    match v.str() {
        Ok(s) => s.to_string(),
        Err(_) => {
            let bits = v.call_method0("bit_length").and_then(|b| b.extract::<u64>()).unwrap_or(0);
            format!("an int of {bits} bits")
        }
    }
}

/// The value of an int argument when it fits an i128 (None: it does not).
fn value<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyAny>, Option<i128>)> {
    let v = as_int(what, obj)?;
    let x = v.extract::<i128>().ok();
    Ok((v, x))
}

/// An unsigned size, count or seed in `[lo, hi]`; ValueError otherwise.
pub fn uint(what: &str, obj: &Bound<'_, PyAny>, lo: u64, hi: u64) -> PyResult<u64> {
    let (v, x) = value(what, obj)?;
    match x {
        Some(x) if x >= i128::from(lo) && x <= i128::from(hi) => Ok(x as u64),
        Some(x) if x < i128::from(lo) => {
            Err(PyValueError::new_err(format!("{what}: expected an int >= {lo}, got {x}")))
        }
        _ => Err(PyValueError::new_err(format!("{what}: expected an int <= {hi}, got {}", show(&v)))),
    }
}

/// A size in `[lo, hi]` as usize (see [`uint`]).
pub fn size(what: &str, obj: &Bound<'_, PyAny>, lo: usize, hi: usize) -> PyResult<usize> {
    Ok(uint(what, obj, lo as u64, hi as u64)? as usize)
}

/// A 64-bit seed or counter: an int in `[0, 2**64)`; ValueError otherwise.
pub fn u64_arg(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    let (v, x) = value(what, obj)?;
    match x {
        Some(x) if (0..=i128::from(u64::MAX)).contains(&x) => Ok(x as u64),
        _ => Err(PyValueError::new_err(format!("{what}: expected an int in [0, 2**64), got {}", show(&v)))),
    }
}

/// An id in `[0, bound)`; IndexError otherwise (with the message of the core's index errors).
pub fn id(what: &str, obj: &Bound<'_, PyAny>, bound: usize) -> PyResult<i64> {
    let (v, x) = value(what, obj)?;
    match x {
        Some(x) if x >= 0 && x < bound as i128 && x <= i128::from(i64::MAX) => Ok(x as i64),
        _ => Err(PyIndexError::new_err(format!("{what}: {} is out of range [0, {bound})", show(&v)))),
    }
}

/// An int that fits an i64, the kernel checking its range; `big(value)` is the error for one
/// that does not fit.
pub fn i64_or(what: &str, obj: &Bound<'_, PyAny>, big: impl FnOnce(String) -> PyErr) -> PyResult<i64> {
    let (v, x) = value(what, obj)?;
    match x.and_then(|x| i64::try_from(x).ok()) {
        Some(x) => Ok(x),
        None => Err(big(show(&v))),
    }
}

/// An id that the kernel range-checks itself: any int that fits an i64 (IndexError otherwise,
/// since no id is that large).
pub fn id_i64(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<i64> {
    i64_or(what, obj, |v| PyIndexError::new_err(format!("{what}: {v} is out of range [0, 2**63)")))
}

/// The token before a position: -1 (the start of the text) -> None, else an id in `[0, bound)`.
pub fn prev(what: &str, obj: &Bound<'_, PyAny>, bound: usize) -> PyResult<Option<u32>> {
    let (v, x) = value(what, obj)?;
    match x {
        Some(-1) => Ok(None),
        Some(x) if x >= 0 && x < bound as i128 && x <= i128::from(u32::MAX) => Ok(Some(x as u32)),
        _ => Err(PyIndexError::new_err(format!(
            "{what}: {} is out of range [0, {bound}) (or -1 for the start of the text)",
            show(&v)
        ))),
    }
}

/// A sequence of ids, each in `[0, bound)` (a str is refused).
pub fn ids(what: &str, obj: &Bound<'_, PyAny>, bound: usize) -> PyResult<Vec<u32>> {
    let bound = bound.min(u32::MAX as usize);
    items(what, obj)?.iter().map(|x| id(what, x, bound).map(|v| v as u32)).collect()
}

/// The items of an iterable argument (a str is refused: it is not a sequence of values).
pub fn items<'py>(what: &str, obj: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what}: expected a sequence, got str")));
    }
    let it = obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{what}: expected a sequence, got {}", type_name(obj))))?;
    it.collect()
}

/// A float argument (ints accepted); an int too large for a float is a ValueError.
pub fn real(what: &str, obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    match obj.extract::<f64>() {
        Ok(x) => Ok(x),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyOverflowError>(obj.py()) => Err(PyValueError::new_err(
            format!("{what}: expected a finite float, got an int too large for a float"),
        )),
        Err(_) => Err(PyTypeError::new_err(format!("{what}: expected a float, got {}", type_name(obj)))),
    }
}

fn optional<T>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<T>) -> PyResult<Option<T>> {
    if obj.is_none() {
        Ok(None)
    } else {
        f(obj).map(Some)
    }
}

// --- `from_py_with` extractors (one per argument name) -------------------------------------
// PyO3 prefixes a TypeError raised by an extractor with "argument 'name': ", so theirs drop the
// name; ValueErrors keep it (PyO3 passes them through unchanged).

pub fn unnamed<T>(what: &str, r: PyResult<T>) -> PyResult<T> {
    r.map_err(|e| {
        Python::attach(|py| {
            if e.is_instance_of::<PyTypeError>(py) {
                let msg = e.value(py).to_string();
                let prefix = format!("{what}: ");
                PyTypeError::new_err(msg.strip_prefix(&prefix).unwrap_or(&msg).to_string())
            } else {
                e
            }
        })
    })
}

pub fn seed(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    unnamed("seed", u64_arg("seed", obj))
}

pub fn opt_seed(obj: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    optional(obj, seed)
}

pub fn counter(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    unnamed("counter", u64_arg("counter", obj))
}

pub fn stream0(obj: &Bound<'_, PyAny>) -> PyResult<u64> {
    unnamed("stream0", u64_arg("stream0", obj))
}

pub fn temperature(obj: &Bound<'_, PyAny>) -> PyResult<f64> {
    unnamed("temperature", real("temperature", obj))
}

pub fn top_k(obj: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    unnamed("top_k", optional(obj, |o| Ok(uint("top_k", o, 1, i64::MAX as u64)? as i64)))
}

pub fn top_p(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    unnamed("top_p", optional(obj, |o| real("top_p", o)))
}

pub fn min_p(obj: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
    unnamed("min_p", optional(obj, |o| real("min_p", o)))
}

pub fn k_candidates(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    unnamed("k", size("k", obj, 1, usize::MAX))
}

pub fn opt_k_candidates(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    optional(obj, k_candidates)
}

pub fn opt_vocab_size(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    unnamed("vocab_size", optional(obj, |o| size("vocab_size", o, 1, tokenloom_core::limits::MAX_VOCAB)))
}

pub fn opt_max_frontier(obj: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
    unnamed("max_frontier", optional(obj, |o| size("max_frontier", o, 1, usize::MAX)))
}

pub fn limit(obj: &Bound<'_, PyAny>) -> PyResult<usize> {
    unnamed("limit", size("limit", obj, 0, usize::MAX))
}
