use super::*;
use proptest::prelude::*;
use std::collections::HashMap as Map;

/// Brute force: occurrences of every substring of length <= depth over the documents.
fn brute_counts(docs: &[Vec<u32>], depth: usize) -> Map<Vec<u32>, u32> {
    let mut m = Map::new();
    for d in docs {
        for s in 0..d.len() {
            for e in s + 1..=d.len().min(s + depth) {
                *m.entry(d[s..e].to_vec()).or_insert(0) += 1;
            }
        }
    }
    m
}

fn trie_counts(t: &SuffixTrie) -> Map<Vec<u32>, u32> {
    let mut m = Map::new();
    let mut stack = vec![(0u32, Vec::new())];
    while let Some((n, path)) = stack.pop() {
        let mut c = t.nodes[n as usize].first_child;
        while c != NONE {
            let mut p = path.clone();
            p.push(t.nodes[c as usize].token);
            m.insert(p.clone(), t.nodes[c as usize].count);
            stack.push((c, p));
            c = t.nodes[c as usize].next_sibling;
        }
    }
    m
}

fn build(docs: &[Vec<u32>], depth: usize) -> SuffixTrie {
    let mut t = SuffixTrie::new(depth).unwrap();
    for d in docs {
        t.extend(&mut Cursor::default(), d);
    }
    t
}

#[test]
fn counts_and_speculate_small() {
    let t = build(&[vec![1, 2, 3, 1, 2, 4, 1, 2]], 4);
    let c = trie_counts(&t);
    assert_eq!(c[&vec![1, 2]], 3);
    assert_eq!(c[&vec![1, 2, 3]], 1);
    // context ends with 1 2: 1 2 -> {3: 1, 4: 1}
    let d = t.speculate(&[7, 1, 2], 3, 10, 0.0);
    assert_eq!(d.match_len, 2);
    // depth 4: 1 2 -> {3 -> 1, 4 -> 1}
    assert_eq!(d.tokens.len(), 4);
    assert_eq!(d.probs, vec![0.5, 0.5, 1.0, 1.0]);
    assert_eq!(d.parents, vec![-1, -1, 0, 1]);
    assert!(d.tokens.contains(&3) && d.tokens.contains(&4));
    // depth 4 allows 1 2 + 2 more tokens: "1 2 3 1", "1 2 4 1"; max_match 1 gives 2 -> {3, 4} then deeper
    let d = t.speculate(&[1, 2], 1, 10, 0.0);
    assert_eq!(d.match_len, 1);
    assert_eq!(d.tokens.len(), 6); // 2 -> {3 -> 1 -> 2, 4 -> 1 -> 2}
    assert!(t.speculate(&[9], 3, 10, 0.0).tokens.is_empty());
}

#[test]
fn cache_memory_bound_and_eviction() {
    let cfg = CacheConfig { max_depth: 8, max_bytes: 64 << 10, max_docs: None, vocab_size: None };
    let mut c = SuffixCache::new(cfg).unwrap();
    let mut state = 12345u64;
    for i in 0..200 {
        let doc: Vec<i64> = (0..50 + i % 30)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) % 500) as i64
            })
            .collect();
        c.insert(&doc).unwrap();
        assert!(c.memory_bytes() <= cfg.max_bytes, "{} > {}", c.memory_bytes(), cfg.max_bytes);
    }
    assert!(c.evicted() > 0);
    // What is left is exactly the trie of the kept documents.
    let kept: Vec<Vec<u32>> = c.docs().map(|d| d.to_vec()).collect();
    assert_eq!(trie_counts(c.trie()), brute_counts(&kept, 8));
    // A document larger than the cap keeps its tail.
    c.insert(&vec![3i64; 100_000]).unwrap();
    assert!(c.memory_bytes() <= cfg.max_bytes);
    assert!(c.num_tokens() < 100_000);
}

#[test]
fn max_docs_and_bytes_roundtrip() {
    let cfg = CacheConfig { max_depth: 6, max_bytes: 1 << 20, max_docs: Some(2), vocab_size: None };
    let mut c = SuffixCache::new(cfg).unwrap();
    for d in [vec![1i64, 2, 3], vec![4, 5, 6, 4, 5], vec![7, 8]] {
        c.insert(&d).unwrap();
    }
    assert_eq!(c.num_docs(), 2);
    let b = c.to_bytes();
    let c2 = SuffixCache::from_bytes(&b, cfg).unwrap();
    assert_eq!(c2.docs().map(|d| d.to_vec()).collect::<Vec<_>>(), vec![vec![4, 5, 6, 4, 5], vec![7, 8]]);
    assert_eq!(trie_counts(c2.trie()), trie_counts(c.trie()));
    for cut in 0..b.len() {
        assert!(SuffixCache::from_bytes(&b[..cut], cfg).is_err());
    }
    let mut bad = b.clone();
    bad[0] ^= 1;
    assert!(SuffixCache::from_bytes(&bad, cfg).is_err());
    let mut bad = b.clone();
    bad.push(0);
    assert!(SuffixCache::from_bytes(&bad, cfg).is_err());
}

#[test]
fn bad_input() {
    assert!(SuffixTrie::new(0).is_err());
    assert!(SuffixTrie::new(MAX_SUFFIX_DEPTH + 1).is_err());
    let cfg = CacheConfig { max_depth: 4, max_bytes: 10, max_docs: None, vocab_size: None };
    assert!(SuffixCache::new(cfg).is_err());
    let cfg = CacheConfig { max_depth: 4, max_bytes: 1 << 16, max_docs: Some(0), vocab_size: None };
    assert!(SuffixCache::new(cfg).is_err());
    let cfg = CacheConfig { max_depth: 4, max_bytes: 1 << 16, max_docs: None, vocab_size: None };
    let mut c = SuffixCache::new(cfg).unwrap();
    assert!(matches!(c.insert(&[1, -1]), Err(CoreError::Index { .. })));
    assert!(c.insert(&[1, 1 << 24]).is_err());
    assert_eq!(c.num_docs(), 0);
}

proptest! {
    #[test]
    fn insert_remove_matches_brute_force(
        docs in prop::collection::vec(prop::collection::vec(0u32..4, 0..12), 1..6),
        depth in 1usize..6,
        drop in 0usize..6,
    ) {
        let mut t = build(&docs, depth);
        prop_assert_eq!(trie_counts(&t), brute_counts(&docs, depth));
        let drop = drop.min(docs.len());
        for d in &docs[..drop] {
            t.remove(d).unwrap();
        }
        prop_assert_eq!(trie_counts(&t), brute_counts(&docs[drop..], depth));
        prop_assert_eq!(t.num_nodes(), brute_counts(&docs[drop..], depth).len() + 1);
    }

    #[test]
    fn speculate_is_a_tree_with_conditional_probs(
        doc in prop::collection::vec(0u32..3, 1..30),
        ctx in prop::collection::vec(0u32..3, 1..6),
        max_nodes in 1usize..12,
    ) {
        let t = build(&[doc.clone()], 6);
        let d = t.speculate(&ctx, 4, max_nodes, 0.0);
        prop_assert!(d.tokens.len() <= max_nodes);
        let counts = brute_counts(&[doc], 6);
        if d.match_len == 0 {
            prop_assert!(d.tokens.is_empty());
        }
        for i in 0..d.tokens.len() {
            prop_assert!(d.parents[i] < i as i64);
            // The node's substring = matched context + path; prob = count / sum of sibling counts.
            let mut path = vec![d.tokens[i] as u32];
            let mut p = d.parents[i];
            while p >= 0 {
                path.insert(0, d.tokens[p as usize] as u32);
                p = d.parents[p as usize];
            }
            let mut full = ctx[ctx.len() - d.match_len..].to_vec();
            let parent_ctx = full.clone();
            full.extend(&path);
            let mut pc = parent_ctx;
            pc.extend(&path[..path.len() - 1]);
            let total: u32 = (0..3).map(|x| { let mut q = pc.clone(); q.push(x); counts.get(&q).copied().unwrap_or(0) }).sum();
            prop_assert_eq!(d.probs[i], f64::from(counts[&full]) / f64::from(total));
            prop_assert_eq!(d.support[i], i64::from(total));
        }
    }
}

#[test]
fn memory_bound_over_configs() {
    for (depth, cap, vocab) in [(12usize, 256usize << 10, 300u64), (4, 16 << 10, 20), (24, 1 << 20, 5000), (64, 64 << 10, 3)] {
        let cfg = CacheConfig { max_depth: depth, max_bytes: cap, max_docs: None, vocab_size: None };
        let mut c = SuffixCache::new(cfg).unwrap();
        let mut state = depth as u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut all = Vec::new();
        for _ in 0..300 {
            let n = 1 + next() as usize % 250;
            let doc: Vec<i64> = (0..n).map(|_| (next() % vocab) as i64).collect();
            c.insert(&doc).unwrap();
            all.push(doc);
            assert!(c.memory_bytes() <= cap, "depth {depth}: {} > {cap}", c.memory_bytes());
        }
        assert!(c.evicted() > 0);
        let kept: Vec<Vec<u32>> = c.docs().map(|d| d.to_vec()).collect();
        assert_eq!(trie_counts(c.trie()), brute_counts(&kept, depth));
    }
}

#[test]
fn a_document_larger_than_the_cap_keeps_its_last_tokens() {
    // Found by the hostile-input review: depth 256 under the smallest cap kept nothing.
    for (depth, cap) in [(256usize, MIN_CACHE_BYTES), (24, MIN_CACHE_BYTES), (8, 64 << 10)] {
        let cfg = CacheConfig { max_depth: depth, max_bytes: cap, max_docs: None, vocab_size: None };
        let mut c = SuffixCache::new(cfg).unwrap();
        let doc: Vec<i64> = (0..5000).collect();
        c.insert(&doc).unwrap();
        let kept: Vec<u32> = c.docs().next().expect("some tokens kept").to_vec();
        assert!(!kept.is_empty() && kept.len() < doc.len(), "depth {depth}: kept {}", kept.len());
        let tail: Vec<u32> = doc[doc.len() - kept.len()..].iter().map(|&t| t as u32).collect();
        assert_eq!(kept, tail, "depth {depth}: the last tokens are kept");
        assert!(c.memory_bytes() <= cap);
        assert!(kept.len() >= 8, "depth {depth}: kept only {}", kept.len());
    }
}

#[test]
fn new_nodes_bound_is_tight_for_distinct_tokens() {
    for depth in [1usize, 3, 8] {
        for n in 0..20usize {
            let doc: Vec<u32> = (0..n as u32).collect();
            let t = build(&[doc], depth);
            assert_eq!(t.num_nodes() - 1, new_nodes_bound(n, depth), "n {n} depth {depth}");
        }
    }
}

#[test]
fn a_cache_made_for_a_vocabulary_holds_only_its_ids() {
    let cfg = CacheConfig { max_depth: 4, max_bytes: 1 << 16, max_docs: None, vocab_size: Some(10) };
    let mut c = SuffixCache::new(cfg).unwrap();
    assert!(matches!(c.insert(&[1, 10]), Err(CoreError::Index { bound: 10, .. })));
    assert_eq!((c.num_docs(), c.max_token()), (0, None));
    c.insert(&[3, 9, 2]).unwrap();
    assert_eq!(c.max_token(), Some(9));
    // Loading under a smaller vocabulary refuses the data (a ValueError, not a later panic).
    let b = c.to_bytes();
    let small = CacheConfig { vocab_size: Some(9), ..cfg };
    let err = SuffixCache::from_bytes(&b, small).unwrap_err().to_string();
    assert!(err.contains("token 9 is outside the vocabulary [0, 9)"), "{err}");
    assert_eq!(SuffixCache::from_bytes(&b, cfg).unwrap().max_token(), Some(9));
    assert!(SuffixCache::new(CacheConfig { vocab_size: Some(0), ..cfg }).is_err());
    assert!(SuffixCache::new(CacheConfig { vocab_size: Some((1 << 24) + 1), ..cfg }).is_err());
}
