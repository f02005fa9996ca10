//! Documented size caps of the kernels, checked before anything is allocated, and the one
//! fallible allocation helper. A size above its cap is a `Value` error (Python `ValueError`),
//! never an aborted process.

use crate::error::{CoreError, Result};

/// Largest vocabulary (token ids, logits width) any kernel accepts: 2^24 = 16,777,216 ids,
/// some 60 times the largest tokenizer in use. Masks and adjacency rows are sized by it.
pub const MAX_VOCAB: usize = 1 << 24;

/// Largest Token Recycling matrix, `vocab_size * k` cells of 4 bytes: 2^28 (1 GiB), e.g. a
/// 262,144-token vocabulary with k = 1024 (the paper uses k = 8).
pub const MAX_RECYCLER_CELLS: usize = 1 << 28;

/// Largest draft tree (`budget`, `max_depth`) of the dynamic tree builder: 2^24 nodes, far
/// beyond what a tree-attention forward can take.
pub const MAX_TREE_NODES: usize = 1 << 24;

/// Checks `1 <= got <= max` for a size named `what`.
pub fn check_size(what: &str, got: u64, max: usize) -> Result<usize> {
    if got == 0 || got > max as u64 {
        return Err(CoreError::value(format!(
            "{what}: expected an int in [1, {max}], got {got}"
        )));
    }
    Ok(got as usize)
}

/// A vector of `n` copies of `fill`, or a `Value` error when the memory cannot be reserved
/// (instead of the process abort of `vec![fill; n]`).
pub fn try_filled<T: Clone>(what: &str, n: usize, fill: T) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| {
        CoreError::value(format!(
            "{what}: cannot allocate {n} elements of {} bytes",
            std::mem::size_of::<T>()
        ))
    })?;
    v.resize(n, fill);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_allocation() {
        assert_eq!(check_size("n", 5, 10).unwrap(), 5);
        assert!(check_size("n", 0, 10).is_err());
        assert!(check_size("n", 11, 10).is_err());
        assert_eq!(try_filled("v", 3, 7u32).unwrap(), vec![7, 7, 7]);
        assert!(try_filled("v", usize::MAX / 2, 0u32).is_err());
    }
}
