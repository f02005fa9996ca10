//! Drafters of the speculative engine: static Token Recycling templates ([`template`]), the
//! recycling adjacency matrix ([`recycling`]), DySpec dynamic trees ([`dyntree`]) and suffix
//! tries of earlier tokens ([`suffix`]).

pub mod dyntree;
pub mod recycling;
pub mod suffix;
pub mod template;
