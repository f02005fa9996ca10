//! `tokenloom._core`: PyO3 bindings of tokenloom-core. One file per exposed area; each
//! area registers its functions and classes in `register`.

mod dyntree;
mod bytes;
mod error;
mod floats;
mod sampling;
mod recycling;
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
        bytes::register(m)?;
        Ok(())
    }
}
