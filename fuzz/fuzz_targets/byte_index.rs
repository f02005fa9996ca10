//! `Canon::new`, `ByteIndex::new` and every query of the byte index on hostile input: raw
//! token bytes, specials, widths, base symbols, merges and code-point classes, then ids that
//! are often out of range (u32::MAX included, which must never mean "start of text").
#![no_main]

use std::collections::HashMap;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::bytes::canon::{gpt2_piece_starts, Canon, Pretok};
use tokenloom_core::bytes::index::ByteIndex;
use tokenloom_core::CoreError;
use tokenloom_fuzz::{bytes, small};

fn token(u: &mut Unstructured<'_>, v: usize) -> arbitrary::Result<u32> {
    Ok(match small(u, 8)? {
        0 => u.arbitrary()?,
        1 => u32::MAX,
        _ => small(u, v + 1)? as u32,
    })
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let v = 1 + small(u, 12)?;
    let toks: Vec<Vec<u8>> = (0..v)
        .map(|_| bytes(u, 5))
        .collect::<arbitrary::Result<_>>()?;
    let special: Vec<bool> = (0..v + usize::from(u.ratio(1, 16)?))
        .map(|_| u.ratio(1, 6))
        .collect::<arbitrary::Result<_>>()?;
    let width = if u.ratio(1, 16)? {
        u.arbitrary::<u32>()? as usize
    } else {
        v + small(u, 4)?
    };
    let mut classes = HashMap::new();
    for _ in 0..small(u, 4)? {
        let cp: u32 = if u.arbitrary()? { u.arbitrary()? } else { 0xe9 };
        classes.insert(cp, small(u, 5)? as u8);
    }
    let data = bytes(u, 24)?;
    let _ = gpt2_piece_starts(&data, &classes);
    let canon = if u.arbitrary()? {
        let base: Vec<Vec<u32>> = (0..v)
            .map(|_| (0..small(u, 4)?).map(|_| token(u, v)).collect())
            .collect::<arbitrary::Result<_>>()?;
        let merges: Vec<(u32, u32, u32)> = (0..small(u, 12)?)
            .map(|_| Ok((token(u, v)?, token(u, v)?, token(u, v)?)))
            .collect::<arbitrary::Result<_>>()?;
        let pretok = if u.arbitrary()? {
            Pretok::Gpt2 {
                classes: classes.clone(),
            }
        } else {
            Pretok::None
        };
        Canon::new(toks.clone(), &base, &merges, pretok).ok()
    } else {
        None
    };
    let Ok(idx) = ByteIndex::new(toks, special, width, canon) else {
        return Ok(());
    };
    if idx.width() > 1 << 12 {
        return Ok(()); // masks of this width are valid but slow to fuzz
    }
    let opt = |u: &mut Unstructured<'_>| -> arbitrary::Result<Option<u32>> {
        Ok(if u.ratio(1, 4)? {
            None
        } else {
            Some(token(u, v)?)
        })
    };
    for _ in 0..4 {
        let (a, b) = (token(u, v)?, token(u, v)?);
        let (pa, pb) = (opt(u)?, opt(u)?);
        let canonical: bool = u.arbitrary()?;
        for r in [
            idx.valid_pair(a, b),
            idx.first_ok(a),
            idx.valid_pair_before(a, b, &data),
            idx.first_ok_before(b, &data),
        ] {
            if let Err(CoreError::Index { index, bound, .. }) = r {
                assert!(index < 0 || index as u64 >= bound as u64);
            }
        }
        match idx.next_mask(pb, canonical) {
            Ok(m) => {
                assert_eq!(m.len(), idx.width());
                assert!(pb.is_none_or(|t| (t as usize) < idx.n_tokens()));
            }
            Err(CoreError::Index { .. }) => {
                assert!(pb.is_some_and(|t| t as usize >= idx.n_tokens()))
            }
            Err(_) => {}
        }
        let _ = idx.context_mask(pa, pb);
        let _ = idx.next_mask_after(pa, pb, canonical);
        let seq: Vec<u32> = (0..small(u, 6)?)
            .map(|_| token(u, v))
            .collect::<arbitrary::Result<_>>()?;
        let _ = idx.sequence_ok(&seq, canonical);
    }
    let _ = idx.trie.prefix_tokens(&data);
    let _ = idx.trie.tokens_with_prefix(&data);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
