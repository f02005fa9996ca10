//! Verification of draft trees and chains against the target model.
//!
//! Conventions shared by every verifier: node 0 is the root (its token is already in the
//! sequence), `parents` is a valid parent array (see [`crate::tree`]), and the target's
//! prediction at node `i` (`target_argmax[i]`, `target_probs[i]`) is about the token that
//! FOLLOWS node `i`. Probability rows are used as given (they must sum to 1 within
//! [`crate::sampling::PROB_TOL`]); a row is checked with [`crate::sampling::check_row`] when a
//! walk reads it in full (to sample or to form a residual), and an acceptance test checks the two
//! entries it reads. Rows the walk never reads in full are not summed.
//!
//! Randomness comes from [`crate::rng`]: draw `slot` at node `i` uses the counter
//! `i << 32 | slot` (slot 0: the sample from the target or residual; slot `k + 1`: the
//! acceptance test of the k-th child). A single call uses stream 0; row `b` of a batch uses
//! stream `b`, so the seed alone fixes every result, whatever the batch order or threading.
//!
//! - [`greedy`]: argmax matching.
//! - [`tree`]: lossless tree verification, deterministic drafts or SpecInfer / Sequoia
//!   multi-draft rejection sampling.
//! - [`chain`]: Leviathan / Chen speculative sampling with the bonus token.

pub mod chain;
pub mod greedy;
pub mod tree;

pub use chain::{verify_chain, verify_chain_batch};
pub use greedy::{verify_greedy, verify_greedy_batch};
pub use tree::{verify_tree, verify_tree_batch};

use crate::error::{CoreError, Result};
use crate::sampling::{sample_scanned, scan_row, Real};

/// What a verifier accepts: the node path from the root and the emitted tokens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyResult {
    /// Accepted node indices, starting with the root (0).
    pub path: Vec<i64>,
    /// Emitted token ids: the accepted draft tokens, then one token from the target.
    pub tokens: Vec<i64>,
}

/// A row-major `[rows, vocab]` matrix of probabilities.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a, R> {
    pub data: &'a [R],
    pub rows: usize,
    pub vocab: usize,
}

impl<'a, R: Real> Rows<'a, R> {
    /// Checks that `data` holds `rows * vocab` entries and that `vocab >= 1`.
    pub fn new(what: &'static str, data: &'a [R], rows: usize, vocab: usize) -> Result<Self> {
        if vocab == 0 {
            return Err(CoreError::shape(
                what,
                "a vocabulary of at least 1 token",
                "0 columns",
            ));
        }
        if data.len() != rows * vocab {
            return Err(CoreError::shape(
                what,
                format!("[{rows}, {vocab}]"),
                format!("{} elements", data.len()),
            ));
        }
        Ok(Rows { data, rows, vocab })
    }

    #[inline]
    pub fn row(&self, i: usize) -> &'a [R] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// Below this mass a residual `max(0, r - q)` is treated as rounding noise (r == q up to
/// rounding, where a rejection has probability ~0) and the walk keeps sampling from `r`.
pub(crate) const RESIDUAL_FLOOR: f64 = 1e-9;

/// A distribution being updated by rejections: the original row (divided by its sum), or an
/// owned normalised buffer.
pub(crate) enum Dist<'a, R> {
    Row { row: &'a [R], inv: f64 },
    Own,
}

impl<'a, R: Real> Dist<'a, R> {
    #[inline]
    pub(crate) fn at(&self, own: &[f64], x: usize) -> f64 {
        match self {
            Dist::Row { row, inv } => row[x].get() * inv,
            Dist::Own => own[x],
        }
    }
}

/// Writes `max(0, r - q)` into `out` and returns its sum (r and q normalised).
pub(crate) fn residual_into<R: Real>(
    r: &Dist<R>,
    r_own: &[f64],
    q: &Dist<R>,
    q_own: &[f64],
    out: &mut Vec<f64>,
) -> f64 {
    fn go<A: Real, B: Real>(r: &[A], rs: f64, q: &[B], qs: f64, out: &mut Vec<f64>) -> f64 {
        out.clear();
        out.extend(
            r.iter()
                .zip(q)
                .map(|(a, b)| (a.get() * rs - b.get() * qs).max(0.0)),
        );
        out.iter().sum()
    }
    match (r, q) {
        (Dist::Row { row: a, inv: rs }, Dist::Row { row: b, inv: qs }) => go(a, *rs, b, *qs, out),
        (Dist::Row { row: a, inv: rs }, Dist::Own) => go(a, *rs, q_own, 1.0, out),
        (Dist::Own, Dist::Row { row: b, inv: qs }) => go(r_own, 1.0, b, *qs, out),
        (Dist::Own, Dist::Own) => go(r_own, 1.0, q_own, 1.0, out),
    }
}

/// Replaces `r` by `norm(max(0, r - q))`, unless that residual is below [`RESIDUAL_FLOOR`].
pub(crate) fn reject_update<'a, R: Real>(
    r: &mut Dist<'a, R>,
    r_own: &mut Vec<f64>,
    q: &Dist<'a, R>,
    q_own: &[f64],
    tmp: &mut Vec<f64>,
) {
    let mass = residual_into(r, r_own, q, q_own, tmp);
    if mass > RESIDUAL_FLOOR {
        let inv = 1.0 / mass;
        tmp.iter_mut().for_each(|x| *x *= inv);
        std::mem::swap(r_own, tmp);
        *r = Dist::Own;
    }
}

/// Inverse-CDF sample from a distribution with the uniform `u`.
pub(crate) fn sample_dist<R: Real>(
    d: &Dist<R>,
    own: &[f64],
    row_chunks: &[f64],
    row_mass: f64,
    u: f64,
    chunks: &mut Vec<f64>,
) -> i64 {
    match d {
        Dist::Row { row, .. } => sample_scanned(row, row_chunks, u * row_mass) as i64,
        Dist::Own => {
            let mass = scan_row(own, chunks).unwrap_or(0.0);
            sample_scanned(own, chunks, u * mass) as i64
        }
    }
}

/// The rows of batch entry `b` as a slice, checking its length.
pub(crate) fn batch_rows<'a, R: Real>(
    what: &'static str,
    slices: &[&'a [R]],
    b: usize,
    rows: usize,
    vocab: usize,
) -> Result<Rows<'a, R>> {
    match slices.get(b) {
        Some(s) => Rows::new(what, s, rows, vocab),
        None => Err(CoreError::shape(
            what,
            format!("{} batch rows", b + 1),
            slices.len(),
        )),
    }
}
