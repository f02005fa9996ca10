//! The DySpec builder driven by hostile calls: configurations, root tokens, node ids and
//! draft rows (top-k or full rows, raw or normalised). Refused calls change nothing; accepted
//! ones keep the tree valid: parents first, at most `budget` nodes below the root, no node
//! deeper than `max_depth`.
#![no_main]

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use tokenloom_core::spec::dyntree::{BuilderConfig, DynamicTreeBuilder};
use tokenloom_core::tree::validate_parents;
use tokenloom_fuzz::{id, prob_rows, small};

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let cfg = BuilderConfig {
        budget: small(u, 24)?,
        max_depth: small(u, 6)?,
        k: small(u, 5)?,
        sampled: u.arbitrary()?,
        seed: u.arbitrary()?,
        vocab_size: small(u, 30)?,
        max_frontier: if u.arbitrary()? {
            Some(small(u, 5)?)
        } else {
            None
        },
    };
    let Ok(mut b) = DynamicTreeBuilder::new(cfg) else {
        return Ok(());
    };
    let vocab = if cfg.vocab_size > 0 {
        cfg.vocab_size
    } else {
        30
    };
    let _ = b.reset(id(u, vocab)?);
    for _ in 0..8 {
        let Ok(f) = b.frontier() else { break };
        let mut nodes: Vec<i64> = f.iter().map(|&x| x as i64).collect();
        if u.ratio(1, 8)? {
            nodes.push(id(u, b.num_nodes() + 1)?);
        }
        let n = nodes.len();
        let before = (b.num_nodes(), b.rows_seen());
        let raw = u.ratio(1, 8)?;
        let ok = if u.arbitrary()? {
            let width = 1 + small(u, 6)?;
            let ids: Vec<i64> = (0..n * width)
                .map(|_| id(u, vocab))
                .collect::<arbitrary::Result<_>>()?;
            let mut probs = prob_rows(u, n, width, raw)?;
            if !raw {
                probs.iter_mut().for_each(|x| *x *= 0.9);
            }
            b.expand_topk(&nodes, &ids, &probs, width).is_ok()
        } else {
            let probs = prob_rows(u, n, vocab, raw)?;
            b.expand_rows(&nodes, &probs, vocab).is_ok()
        };
        if !ok {
            assert_eq!(
                (b.num_nodes(), b.rows_seen()),
                before,
                "a refused call changed the builder"
            );
        }
        if let Ok(t) = b.tree() {
            validate_parents(&t.parents).unwrap();
            assert!(t.tokens.len() <= cfg.budget + 1);
            assert!(t.depths.iter().all(|&d| d as usize <= cfg.max_depth));
            for i in 1..t.tokens.len() {
                assert_eq!(t.depths[i], t.depths[t.parents[i] as usize] + 1);
            }
        }
        if b.is_done() {
            break;
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
