//! Drafters of the speculative engine: static Token Recycling templates ([`template`]), the
//! recycling adjacency matrix ([`recycling`]) and DySpec dynamic trees ([`dyntree`]).

pub mod dyntree;
pub mod recycling;
pub mod template;
