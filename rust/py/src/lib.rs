//! `tokenloom._core`: PyO3 bindings of tokenloom-core. One file per exposed area; each
//! area registers its functions and classes in `register`.

mod bytes;
mod error;
mod verify;

use pyo3::prelude::*;

#[pymodule]
mod _core {
    use super::*;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        verify::register(m)?;
        bytes::register(m)?;
        Ok(())
    }
}
