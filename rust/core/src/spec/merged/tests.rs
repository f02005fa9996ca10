use super::*;
use crate::spec::dyntree::BuilderConfig;

/// The classes of `tokenloom.spec.suffix.calibration`.
fn class_map() -> ClassMap {
    ClassMap::new(
        vec![1, 2, 3, 5, 8, 12, 1 << 30],
        vec![0.2, 0.4, 0.6, 0.8, 0.999, 1.0],
        vec![1, 3, 1 << 62],
        2,
        8,
    )
    .unwrap()
}

#[test]
fn numpy_sum_order() {
    // Below 8 elements: left to right.
    assert_eq!(numpy_sum(&[0.1, 0.2, 0.3]), (0.1 + 0.2) + 0.3);
    // 8..=128: eight interleaved partial sums, then the tail.
    let x: Vec<f64> = (0..11).map(|i| 1.0 / (i as f64 + 3.0)).collect();
    let r = &x[..8];
    let want =
        ((((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))) + x[8]) + x[9] + x[10];
    assert_eq!(numpy_sum(&x), want);
    assert_eq!(numpy_sum(&[]), 0.0);
    let big: Vec<f64> = (0..300).map(|i| (i % 7) as f64).collect();
    assert_eq!(numpy_sum(&big), big.iter().sum::<f64>()); // exact integers
}

#[test]
fn cap_rows_keeps_the_largest() {
    let mut p = vec![0.3, 0.95, 0.2, 0.1, 0.6, 0.2, 0.6, 0.0, 0.1, 0.2, 0.3, 0.0];
    cap_rows(&mut p, 4);
    let want = [
        0.025,
        0.95,
        1.0 / 60.0,
        1.0 / 120.0,
        0.5,
        0.0,
        0.5,
        0.0,
        0.1,
        0.2,
        0.3,
        0.0,
    ];
    for (g, w) in p.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{p:?}");
    }
}

#[test]
fn classes() {
    let c = class_map();
    assert_eq!(c.n_suffix(), 2 * 7 * 6 * 3);
    assert_eq!(c.num_classes(8), c.n_suffix() + 64);
    assert_eq!(c.suffix_class(0, 1, 0.1, 1), 0);
    assert_eq!(c.suffix_class(0, 1, 0.2, 1), 3); // 0.2 opens the second bucket
    assert_eq!(c.suffix_class(0, 1, 0.999, 2), 5 * 3 + 1);
    assert_eq!(c.suffix_class(1, 40, 1.0, 9), ((7 + 6) * 6 + 5) * 3 + 2);
    assert_eq!(c.recycle_class(2, 30), c.n_suffix() + 2 * 8 + 7);
    assert!(ClassMap::new(vec![2, 1], vec![0.5, 1.0], vec![1], 2, 8).is_err());
    assert!(ClassMap::new(vec![1], vec![1.0], vec![1], 2, 8).is_err());
    assert!(ClassMap::new(vec![1], vec![0.5, 1.0], vec![1], 2, 0).is_err());
}

fn draft(
    tokens: Vec<i64>,
    parents: Vec<i64>,
    probs: Vec<f64>,
    support: Vec<i64>,
    m: usize,
) -> SuffixDraft {
    SuffixDraft {
        tokens,
        parents,
        probs,
        support,
        match_len: m,
    }
}

#[test]
fn suffix_chain_and_recycled_candidates_share_a_tree() {
    let cm = class_map();
    let mut rec = TokenRecycler::new(64, 2).unwrap();
    rec.update(&[5], &[40, 41], 2).unwrap();
    let mut est = vec![0.9; cm.num_classes(2)];
    est[cm.n_suffix()..].fill(0.3);
    let drafts = vec![(
        0,
        draft(vec![6, 7], vec![-1, 0], vec![1.0, 1.0], vec![3, 3], 4),
    )];
    let input = MergedInput {
        root: 5,
        drafts: &drafts,
        recycler: Some(&rec),
        est: &est,
        classes: &cm,
        cut: Cut::Whole,
    };
    let mut b = DynamicTreeBuilder::new(BuilderConfig::new(3, 4, 8)).unwrap();
    let out = grow_merged(&mut b, &input).unwrap();
    // Root row: 6 (suffix, 0.9), 40, 41 (recycled, 0.3), capped to [0.9, 0.05, 0.05]; then
    // 6's row: 7 (suffix, 0.9) and row 6 of the recycler (never written: nothing).
    assert_eq!(out.tree.tokens, vec![5, 6, 40, 7]);
    assert_eq!(out.matched, vec![true, false]);
    assert_eq!(out.row_nodes[..2], [0, 1]);
    assert_eq!(out.offered_tokens[..4], [6, 40, 41, 7]);
    assert_eq!(out.row_offsets[..3], [0, 3, 4]);
    assert_eq!(out.offered_classes[1] as usize, cm.recycle_class(0, 0));
    assert_eq!(out.row_offsets.len(), out.row_nodes.len() + 1);
    // Wrong est length, a bad source: clear errors.
    let short = MergedInput {
        est: &est[1..],
        ..input
    };
    assert!(matches!(
        grow_merged(&mut b, &short),
        Err(CoreError::Shape { .. })
    ));
    let bad = vec![(2, draft(vec![], vec![], vec![], vec![], 0))];
    assert!(grow_merged(
        &mut b,
        &MergedInput {
            drafts: &bad,
            ..input
        }
    )
    .is_err());
}

#[test]
fn nothing_to_offer_is_a_root_only_tree() {
    let cm = class_map();
    let est = vec![0.5; cm.num_classes(0)];
    let input = MergedInput {
        root: 3,
        drafts: &[],
        recycler: None,
        est: &est,
        classes: &cm,
        cut: Cut::Whole,
    };
    let mut b = DynamicTreeBuilder::new(BuilderConfig::new(4, 4, 8)).unwrap();
    let out = grow_merged(&mut b, &input).unwrap();
    assert_eq!(out.tree.tokens, vec![3]);
    assert_eq!(out.row_offsets, vec![0, 0]);
}

#[test]
fn interp_is_numpys() {
    let (xp, fp) = ([1.0, 2.0, 5.0], [1.0, 1.5, 3.0]);
    assert_eq!(interp(0.0, &xp, &fp), 1.0);
    assert_eq!(interp(2.0, &xp, &fp), 1.5);
    assert_eq!(interp(4.0, &xp, &fp), 0.5 * (4.0 - 2.0) + 1.5);
    assert_eq!(interp(9.0, &xp, &fp), 3.0);
    assert_eq!(interp(3.0, &[3.0], &[7.0]), 7.0);
}

#[test]
fn best_nodes_keeps_what_pays() {
    // Flat cost: every node pays; steep cost: none does.
    let scores = [1.0, 0.5, 0.5, 0.2];
    let depths = [0, 1, 1, 2];
    assert_eq!(
        best_nodes(&scores, &depths, &[1.0, 4.0], &[1.0, 1.0]),
        vec![0, 1, 2, 3]
    );
    assert_eq!(
        best_nodes(&scores, &depths, &[1.0, 2.0], &[1.0, 100.0]),
        vec![0]
    );
    // cost(2) = 1.6: 1.5 / 1.6 < 1; cost(3) = 1.7: 2 / 1.7 > 1 (ties: the lower index first).
    assert_eq!(
        best_nodes(
            &scores,
            &depths,
            &[1.0, 2.0, 3.0, 4.0],
            &[1.0, 1.6, 1.7, 9.0]
        ),
        vec![0, 1, 2]
    );
    assert!(check_cost(&[1.0, 1.0], &[1.0, 2.0]).is_err());
    assert!(check_cost(&[1.0], &[0.0]).is_err());
    assert!(check_cost(&[1.0, 2.0], &[1.0]).is_err());
}

#[test]
fn top_path_is_the_best_chain() {
    // 0 -> 1 (0.9) -> 3 (0.8); 0 -> 2 (0.95): the deeper path gains more unless tokens cost.
    let (scores, parents) = ([1.0, 0.9, 0.95, 0.8], [-1, 0, 0, 1]);
    assert_eq!(top_path(&scores, &parents, 0.0), vec![0, 1, 3]);
    assert_eq!(top_path(&scores, &parents, 0.85), vec![0, 2]);
    assert_eq!(top_path(&scores, &parents, 1.0), vec![0]);
    assert_eq!(top_path(&[1.0], &[-1], 0.0), vec![0]);
}
