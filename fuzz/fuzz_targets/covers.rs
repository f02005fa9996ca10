//! Cover enumeration (all covers, and canonical covers of a BPE-like vocabulary) and the
//! incremental cover tree on hostile byte strings: each cover decodes to a string that starts
//! with the data, canonical covers pass `sequence_ok`, the limit is honoured, and the walk
//! neither recurses nor explodes on dead ends.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::bytes::canon::{Canon, Pretok};
use tokenloom_core::bytes::cover::{enumerate_covers, CoverTree};
use tokenloom_core::bytes::index::ByteIndex;
use tokenloom_fuzz::{bpe_vocab, bytes, small};

fn decode(idx: &ByteIndex, c: &[u32]) -> Vec<u8> {
    c.iter()
        .flat_map(|&t| idx.trie.token_bytes(t).to_vec())
        .collect()
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let (toks, base, merges) = bpe_vocab(u, 10)?;
    let v = toks.len();
    let pretok = if u.arbitrary()? {
        Pretok::Gpt2 {
            classes: Default::default(),
        }
    } else {
        Pretok::None
    };
    let canon = Canon::new(toks.clone(), &base, &merges, pretok).unwrap();
    let mut special = vec![false; v];
    special.push(true);
    let mut all = toks.clone();
    all.push(Vec::new());
    let mut cbase = base.clone();
    cbase.push(Vec::new());
    let canon = Canon::new(all.clone(), &cbase, &merges, canon_pretok(&canon)).unwrap();
    let idx = ByteIndex::new(all, special, v + 1 + small(u, 3)?, Some(canon)).unwrap();
    // Long runs of one byte now and then: deep walks.
    let data = if u.ratio(1, 16)? {
        vec![toks[0][0]; 2000 + small(u, 4000)?]
    } else {
        bytes(u, 40)?
    };
    let limit = small(u, 300)?;
    for canonical in [false, true] {
        match enumerate_covers(&idx, &data, canonical, limit) {
            Ok(cs) => {
                assert!(cs.len() <= limit.max(1));
                for c in cs.iter() {
                    let d = decode(&idx, c);
                    assert!(d.starts_with(&data));
                    if !c.is_empty() {
                        let head = decode(&idx, &c[..c.len() - 1]);
                        assert!(head.len() < data.len() && data.starts_with(&head));
                    }
                    if canonical {
                        assert!(idx.sequence_ok(c, true).unwrap());
                    }
                }
            }
            Err(e) => assert!(e.to_string().contains("covers"), "{e}"),
        }
    }
    // The incremental tree on a prefix of the data.
    let mut tree = CoverTree::new(&idx, u.arbitrary()?).unwrap();
    tree.expand(&idx, 0).unwrap();
    for &b in data.iter().take(40) {
        for n in tree.push(&idx, b).unwrap() {
            if u.arbitrary()? {
                tree.expand(&idx, n).unwrap();
            }
        }
    }
    for &n in tree.active() {
        let node = *tree.node(n).unwrap();
        let path = tree.path(n).unwrap();
        assert_eq!(
            decode(&idx, &path),
            tree.prefix()[..node.end as usize].to_vec()
        );
    }
    Ok(())
}

fn canon_pretok(c: &Canon) -> Pretok {
    if c.context_sensitive() {
        Pretok::Gpt2 {
            classes: Default::default(),
        }
    } else {
        Pretok::None
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
