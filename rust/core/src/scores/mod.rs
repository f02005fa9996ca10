//! Kernels behind `tokenloom.scores`: the token-frequency table of a reference corpus
//! ([`frequency`]) and the DC-PDD detection score over it ([`dcpdd`]).

pub mod dcpdd;
pub mod frequency;

pub use dcpdd::{dcpdd_score, first_occurrences};
pub use frequency::TokenCounts;
