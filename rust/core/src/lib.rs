//! tokenloom-core: the decoding kernels of tokenloom, in pure Rust (no Python).
//!
//! One module per kernel; every fallible function returns [`error::Result`].

pub mod canon;
pub mod cover;
pub mod dyntree;
pub mod error;
pub mod recycling;
pub mod rng;
pub mod sampling;
pub mod template;
pub mod tree;
pub mod trie;
pub mod verify;

pub use error::{CoreError, Result};
