//! Drafters of the speculative engine: static Token Recycling templates ([`template`]), the
//! recycling adjacency matrix ([`recycling`]), DySpec dynamic trees ([`dyntree`]), the merged
//! drafter's tree of suffix and recycled candidates ([`merged`]) and suffix
//! tries of earlier tokens ([`suffix`]).

pub mod dyntree;
pub mod merged;
pub mod recycling;
pub mod suffix;
pub mod template;
