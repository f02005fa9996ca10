//! Every verifier (greedy, tree with deterministic or sampled drafts, chain, and their batch
//! forms) on hostile trees, ids and probability rows: an error or a result whose path is a
//! chain of the tree and whose tokens are in range; never a panic.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::rng::Stream;
use tokenloom_core::verify::{self, Rows, VerifyResult};
use tokenloom_fuzz::{id, parents, prob_rows, small};

fn check_path(r: &VerifyResult, parents: &[i64], tokens: &[i64], v: usize) {
    assert_eq!(r.path[0], 0);
    assert_eq!(r.tokens.len(), r.path.len());
    for w in r.path.windows(2) {
        assert_eq!(parents[w[1] as usize], w[0]);
    }
    for (k, &node) in r.path.iter().enumerate().skip(1) {
        assert_eq!(tokens[node as usize], r.tokens[k - 1]);
    }
    assert!(r.tokens.iter().all(|&x| (0..v as i64).contains(&x)));
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let raw = u.ratio(1, 8)?;
    let p = parents(u, 24, raw)?;
    let t = p.len();
    let v = 1 + small(u, 12)?;
    let tokens: Vec<i64> = (0..t).map(|_| id(u, v)).collect::<arbitrary::Result<_>>()?;
    let argmax: Vec<i64> = (0..t).map(|_| id(u, v)).collect::<arbitrary::Result<_>>()?;
    if let Ok(r) = verify::verify_greedy(&p, &tokens, &argmax) {
        assert_eq!(r.tokens.len(), r.path.len());
    }
    let rows_raw = u.ratio(1, 8)?;
    let target = prob_rows(u, t, v, rows_raw)?;
    let draft_raw = rows_raw && u.arbitrary()?;
    let draft = prob_rows(u, t, v, draft_raw)?;
    let seed: u64 = u.arbitrary()?;
    let replacement: bool = u.arbitrary()?;
    let tr = Rows::new("target_probs", &target, t, v).unwrap();
    let dr = Rows::new("draft_probs", &draft, t, v).unwrap();
    for d in [None, Some(dr)] {
        if let Ok(r) = verify::verify_tree(&p, &tokens, tr, d, Stream::new(seed, 0), replacement) {
            check_path(&r, &p, &tokens, v);
        }
    }
    // The same tree twice as a padded batch (row 1 shortened).
    let len1 = 1 + small(u, t)?;
    let pp: Vec<i64> = p.iter().chain(&p).copied().collect();
    let tt: Vec<i64> = tokens.iter().chain(&tokens).copied().collect();
    let blocks = [target.as_slice(), target.as_slice()];
    let lengths = [t as i64, if raw { id(u, t + 2)? } else { len1 as i64 }];
    let _ = verify::verify_tree_batch(
        &pp,
        &tt,
        t,
        &blocks,
        Some(&blocks),
        v,
        &lengths,
        seed,
        replacement,
    );
    let _ = verify::verify_greedy_batch(&pp, &tt, &tt, &lengths, t);
    // A chain: n drafts, n draft rows, n + 1 target rows.
    let n = t - 1;
    let drafts = &tokens[1..];
    let cd = Rows::new("draft_probs", &draft[..n * v], n, v).unwrap();
    if let Ok(r) = verify::verify_chain(drafts, cd, tr, Stream::new(seed, 1)) {
        assert_eq!(r.path, (0..r.path.len() as i64).collect::<Vec<_>>());
        assert!(r.tokens.iter().all(|&x| (0..v as i64).contains(&x)));
    }
    let cblocks = [&draft[..n * v], &draft[..n * v]];
    let clen = [n as i64, id(u, n + 1)?];
    let _ = verify::verify_chain_batch(
        &[drafts, drafts].concat(),
        n,
        &cblocks,
        &blocks,
        v,
        &clen,
        seed,
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
