//! The `k` best columns of each row of a logit matrix, best first: the candidates a Token
//! Recycling row keeps after every verified position.
//!
//! Order: larger value first; NaN above every number (as `torch.topk`); ties (and NaNs among
//! themselves) by the lower column. One pass over the row: blocks of [`BLOCK`] entries are
//! compared with the current k-th best at once (a vectorisable count), and only a block with
//! an entry that may enter is looked at entry by entry, so a row costs about one read.

use crate::error::{CoreError, Result};
use crate::sampling::Real;

/// Entries compared with the k-th best at once.
pub const BLOCK: usize = 32;

/// Whether `(a, ia)` ranks above `(b, ib)`: NaN first, then the larger value, then the lower
/// column.
#[inline]
fn above<T: Real + PartialOrd>(a: T, ia: usize, b: T, ib: usize) -> bool {
    #[allow(clippy::eq_op)]
    let (an, bn) = (a != a, b != b);
    match (an, bn) {
        (true, false) => true,
        (false, true) => false,
        (true, true) => ia < ib,
        (false, false) => a > b || (a == b && ia < ib),
    }
}

/// `best` holds the ranked (value, column) pairs seen so far (at most `k`, best first);
/// insert `(v, j)` if it ranks among the `k` best.
#[inline]
fn offer<T: Real + PartialOrd>(best: &mut Vec<(T, usize)>, k: usize, v: T, j: usize) {
    if best.len() == k {
        let (lv, lj) = best[k - 1];
        if !above(v, j, lv, lj) {
            return;
        }
        best.pop();
    }
    let mut at = best.len();
    while at > 0 && above(v, j, best[at - 1].0, best[at - 1].1) {
        at -= 1;
    }
    best.insert(at, (v, j));
}

/// Writes into `out[k]` the columns of the `k` best entries of `row`, best first.
fn row_top_k<T: Real + PartialOrd>(row: &[T], k: usize, best: &mut Vec<(T, usize)>, out: &mut [i64]) {
    best.clear();
    let head = k.min(row.len());
    for (j, &v) in row[..head].iter().enumerate() {
        offer(best, k, v, j);
    }
    let mut j0 = head;
    for block in row[head..].chunks(BLOCK) {
        // a later column enters only by ranking strictly above the k-th best: a larger value
        // or NaN, i.e. `!(v <= kth)` (also true for every entry when the k-th best is NaN)
        let kth = best[k - 1].0;
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let n: u32 = block.iter().map(|&v| u32::from(!(v <= kth))).sum();
        if n > 0 {
            for (i, &v) in block.iter().enumerate() {
                offer(best, k, v, j0 + i);
            }
        }
        j0 += block.len();
    }
    for (o, &(_, j)) in out.iter_mut().zip(best.iter()) {
        *o = j as i64;
    }
}

/// The `k` best columns of each row of the row-major `[rows, cols]` matrix `data`, best first.
///
/// Returns: int64 `[rows * k]`, row-major.
///
/// Errors: `k` is 0 or above `cols`; `data` is not `rows * cols` long.
pub fn top_k_rows<T: Real + PartialOrd>(data: &[T], cols: usize, k: usize) -> Result<Vec<i64>> {
    if k == 0 || k > cols {
        return Err(CoreError::value(format!("top-k: k must be in [1, {cols}] (the row length), got {k}")));
    }
    if !data.chunks_exact(cols).remainder().is_empty() {
        return Err(CoreError::value(format!(
            "top-k: {} entries do not make rows of {cols}",
            data.len()
        )));
    }
    let rows = data.len() / cols;
    let mut out = vec![0i64; rows * k];
    let mut best = Vec::with_capacity(k + 1);
    for (row, o) in data.chunks_exact(cols).zip(out.chunks_exact_mut(k)) {
        row_top_k(row, k, &mut best, o);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition: sort every column by (NaN first, larger value first, lower column).
    fn reference(data: &[f32], cols: usize, k: usize) -> Vec<i64> {
        let mut out = Vec::new();
        for row in data.chunks_exact(cols) {
            let mut idx: Vec<usize> = (0..cols).collect();
            idx.sort_by(|&a, &b| {
                if above(row[a], a, row[b], b) {
                    std::cmp::Ordering::Less
                } else {
                    std::cmp::Ordering::Greater
                }
            });
            out.extend(idx[..k].iter().map(|&j| j as i64));
        }
        out
    }

    #[test]
    fn ties_nans_and_errors() {
        let row = [1.0f32, 3.0, 3.0, f32::NAN, -1.0, f32::NAN, 3.0];
        assert_eq!(top_k_rows(&row, 7, 4).unwrap(), vec![3, 5, 1, 2]);
        assert_eq!(top_k_rows(&row, 7, 7).unwrap(), vec![3, 5, 1, 2, 6, 0, 4]);
        assert!(top_k_rows(&row, 7, 0).is_err());
        assert!(top_k_rows(&row, 7, 8).is_err());
        assert!(top_k_rows(&row, 3, 1).is_err());
        assert_eq!(top_k_rows::<f64>(&[], 5, 2).unwrap(), Vec::<i64>::new());
    }

    #[test]
    fn long_rows_cross_blocks() {
        // the best entries in late blocks, equal values across blocks
        let mut row = vec![0.0f32; 200];
        row[150] = 5.0;
        row[40] = 5.0;
        row[199] = f32::INFINITY;
        row[3] = -f32::INFINITY;
        assert_eq!(top_k_rows(&row, 200, 4).unwrap(), vec![199, 40, 150, 0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn equals_sorting(
            cols in 1usize..150,
            rows in 1usize..4,
            seed in any::<u64>(),
            coarse in any::<bool>(),
            nan_every in 0usize..40,
            k_frac in 0.0f64..1.0,
        ) {
            let mut s = seed | 1;
            let data: Vec<f32> = (0..rows * cols).map(|i| {
                s ^= s << 13; s ^= s >> 7; s ^= s << 17;
                if nan_every > 0 && i % nan_every == 0 { return f32::NAN; }
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                if coarse { (u * 4.0).floor() as f32 } else { (u * 20.0 - 10.0) as f32 }
            }).collect();
            let k = 1 + ((cols - 1) as f64 * k_frac) as usize;
            prop_assert_eq!(top_k_rows(&data, cols, k).unwrap(), reference(&data, cols, k));
        }
    }
}
