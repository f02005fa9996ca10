//! Input builders shared by the fuzz targets: each turns fuzz bytes into kernel arguments
//! that are mostly well-formed (so the kernels run past their checks) and sometimes raw (so
//! the checks themselves are fuzzed). Every builder bounds its sizes, to keep one run fast.

use arbitrary::{Result, Unstructured};

/// A small int in `0..n` (0 when `n == 0`).
pub fn small(u: &mut Unstructured<'_>, n: usize) -> Result<usize> {
    if n == 0 {
        return Ok(0);
    }
    Ok(u.int_in_range(0..=n - 1)?)
}

/// An i64 that is usually in `0..n` and sometimes anything (negative, huge).
pub fn id(u: &mut Unstructured<'_>, n: usize) -> Result<i64> {
    if u.ratio(1, 16)? {
        u.arbitrary()
    } else {
        Ok(small(u, n)? as i64)
    }
}

/// A parent array of `1..=max` nodes: valid (`0 <= parents[i] < i`) unless `raw`.
pub fn parents(u: &mut Unstructured<'_>, max: usize, raw: bool) -> Result<Vec<i64>> {
    let n = 1 + small(u, max)?;
    let mut p = vec![-1i64];
    for i in 1..n {
        p.push(if raw {
            id(u, i + 1)?.wrapping_sub(1)
        } else {
            small(u, i)? as i64
        });
    }
    Ok(p)
}

/// A float that is usually a plain weight in [0, 1) and sometimes anything (NaN, inf, < 0).
pub fn weight(u: &mut Unstructured<'_>) -> Result<f64> {
    if u.ratio(1, 32)? {
        u.arbitrary()
    } else {
        Ok(f64::from(u.arbitrary::<u16>()?) / 65536.0)
    }
}

/// `rows * v` probabilities: rows normalised to sum 1 unless `raw`.
pub fn prob_rows(u: &mut Unstructured<'_>, rows: usize, v: usize, raw: bool) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rows * v);
    for _ in 0..rows {
        let mut row: Vec<f64> = (0..v).map(|_| weight(u)).collect::<Result<_>>()?;
        let s: f64 = row.iter().sum();
        if !raw && s.is_finite() && s > 0.0 {
            row.iter_mut().for_each(|x| *x /= s);
        } else if !raw {
            row.iter_mut().for_each(|x| *x = 1.0 / v as f64);
        }
        out.extend(row);
    }
    Ok(out)
}

/// A byte from a small alphabet (letters, a digit, space, punctuation, an apostrophe and the
/// two bytes of "é"), so that tokens and data share prefixes and pre-tokenizer classes vary.
pub fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    const ALPHABET: &[u8] = b"ab1 !'\xc3\xa9";
    if u.ratio(1, 64)? {
        u.arbitrary()
    } else {
        Ok(ALPHABET[small(u, ALPHABET.len())?])
    }
}

/// Up to `max` bytes from [`byte`].
pub fn bytes(u: &mut Unstructured<'_>, max: usize) -> Result<Vec<u8>> {
    let n = small(u, max + 1)?;
    (0..n).map(|_| byte(u)).collect()
}

/// A BPE-like vocabulary: the distinct base bytes as tokens, then up to `max_merges` merges
/// of two existing tokens. Returns `(token_bytes, base symbols per token, merges)`.
#[allow(clippy::type_complexity)]
pub fn bpe_vocab(
    u: &mut Unstructured<'_>,
    max_merges: usize,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<u32>>, Vec<(u32, u32, u32)>)> {
    let mut toks: Vec<Vec<u8>> = Vec::new();
    for b in bytes(u, 6)? {
        if !toks.contains(&vec![b]) {
            toks.push(vec![b]);
        }
    }
    if toks.is_empty() {
        toks.push(b"a".to_vec());
    }
    let mut base: Vec<Vec<u32>> = (0..toks.len() as u32).map(|i| vec![i]).collect();
    let mut merges = Vec::new();
    for _ in 0..small(u, max_merges + 1)? {
        let (l, r) = (small(u, toks.len())?, small(u, toks.len())?);
        let mut s = toks[l].clone();
        s.extend_from_slice(&toks[r]);
        if s.len() > 8
            || toks.contains(&s)
            || merges
                .iter()
                .any(|&(a, b, _)| (a, b) == (l as u32, r as u32))
        {
            continue;
        }
        let mut syms = base[l].clone();
        syms.extend_from_slice(&base[r]);
        merges.push((l as u32, r as u32, toks.len() as u32));
        toks.push(s);
        base.push(syms);
    }
    Ok((toks, base, merges))
}
