//! `Template::from_paths` / `Template::named` on hostile rank paths and names, then a draft
//! from a recycler with just enough candidates: the tree is valid and ids stay in range.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::spec::recycling::TokenRecycler;
use tokenloom_core::spec::template::Template;
use tokenloom_core::tree::validate_parents;
use tokenloom_fuzz::{id, small};

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    if u.ratio(1, 8)? {
        let name: String = u.arbitrary()?;
        let _ = Template::named(&name);
    }
    let n = small(u, 40)?;
    let mut paths = Vec::with_capacity(n);
    for _ in 0..n {
        let depth = small(u, 6)?;
        paths.push(
            (0..depth)
                .map(|_| id(u, 4))
                .collect::<arbitrary::Result<Vec<i64>>>()?,
        );
    }
    let Ok(t) = Template::from_paths(&paths) else {
        return Ok(());
    };
    assert_eq!(t.num_nodes(), paths.len() + 1);
    validate_parents(t.parents()).unwrap();
    for i in 1..t.num_nodes() {
        assert_eq!(t.depths()[i], t.depths()[t.parents()[i] as usize] + 1);
    }
    let (bits, words) = t.ancestor_bits();
    assert_eq!(bits.len(), t.num_nodes() * words);
    let k = t.max_rank() as usize + 1;
    if k <= 64 {
        let vocab = 1 + small(u, 50)?;
        let mut rec = TokenRecycler::new(vocab, k).unwrap();
        let rows = small(u, 8)?;
        let tokens: Vec<i64> = (0..rows)
            .map(|_| small(u, vocab).map(|x| x as i64))
            .collect::<arbitrary::Result<_>>()?;
        let topk: Vec<i64> = (0..rows * k)
            .map(|_| small(u, vocab).map(|x| x as i64))
            .collect::<arbitrary::Result<_>>()?;
        rec.update(&tokens, &topk, k).unwrap();
        let d = rec.draft(small(u, vocab)? as i64, &t).unwrap();
        assert_eq!(d.parents, t.parents());
        assert!(d.tokens.iter().all(|&x| (0..vocab as i64).contains(&x)));
    } else {
        assert!(TokenRecycler::new(4, 1)
            .unwrap()
            .check_template(&t)
            .is_err());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
