//! The one error type of the core. The bindings map `Shape` and `Value` to `ValueError`
//! and `Index` to `IndexError`.

/// Everything that can go wrong in a kernel because of its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoreError {
    /// An array has the wrong length or shape.
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: &'static str,
        expected: String,
        got: String,
    },
    /// A value is not allowed (NaN, negative probability, bad structure, ...).
    #[error("{0}")]
    Value(String),
    /// An id or index is outside its valid range.
    #[error("{what}: {index} is out of range [0, {bound})")]
    Index {
        what: &'static str,
        index: i64,
        bound: usize,
    },
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(String),
}

impl CoreError {
    pub fn value(msg: impl Into<String>) -> Self {
        CoreError::Value(msg.into())
    }

    pub fn shape(what: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        CoreError::Shape {
            what,
            expected: expected.to_string(),
            got: got.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CoreError>;

/// Checks that `index` lies in `[0, bound)` and returns it as `usize`.
pub fn check_index(what: &'static str, index: i64, bound: usize) -> Result<usize> {
    if index < 0 || index as u64 >= bound as u64 {
        return Err(CoreError::Index { what, index, bound });
    }
    Ok(index as usize)
}
