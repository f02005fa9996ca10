//! tokenloom-core: the decoding kernels of tokenloom, in pure Rust (no Python).
//!
//! Layout (mirrors the Python package): [`verify`] (greedy / tree / chain verification),
//! [`sampling`] and [`rng`] (transforms, probability rows, the counter-based generator),
//! [`tree`] (flat parent arrays), [`limits`] (size caps), [`linear`] (small-M linear layers for CPU decoding), [`layer`] (a decoder layer's RMS norm fused with its residual add, its rotary embedding), [`spec`] (drafters: templates, recycling, dynamic trees) and
//! [`bytes`] (trie, canonicality, byte index, covers), [`scores`] (token-frequency tables, DC-PDD), [`topk`] (the k best columns of logit rows). Every fallible function returns
//! [`error::Result`].

pub mod bytes;
pub mod error;
pub mod files;
pub mod limits;
pub mod layer;
pub mod linear;
pub mod rng;
pub mod sampling;
pub mod scores;
pub mod spec;
pub mod topk;
pub mod tree;
pub mod verify;

pub use error::{CoreError, Result};
