//! `tokenloom._core`: PyO3 bindings of tokenloom-core. One file per exposed area (verify,
//! sampling, recycling, dyntree, suffix, merged, bytes, scores, linear, layer), each registering its functions and classes in
//! `register`; `args`, `floats` and `error` convert arguments, float arrays and errors.
//!
//! Classes with state are `frozen` and keep it behind a lock, taken without the GIL around the
//! longer kernels, and never while Python code runs: two threads sharing one object see the
//! calls in some order, never an error or a torn state.

mod args;
mod bytes;
mod dyntree;
mod error;
mod floats;
mod ints;
mod layer;
mod linear;
mod merged;
mod recycling;
mod sampling;
mod scores;
mod suffix;
mod verify;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    use super::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        verify::register(m)?;
        dyntree::register(m)?;
        sampling::register(m)?;
        recycling::register(m)?;
        suffix::register(m)?;
        merged::register(m)?;
        bytes::register(m)?;
        scores::register(m)?;
        linear::register(m)?;
        layer::register(m)?;
        Ok(())
    }
}
