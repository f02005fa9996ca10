"""Suffix trie kernels (``tokenloom.spec.suffix.store``, Rust) vs the pure-Python reference of
their parity tests (``tests/reference/suffix.py``), on tokenloom's own source tokenized with the
embedded tokenizer: one 2,048-token request (``SuffixIndex.extend``; ``speculate`` at the end of
8 prefixes of it) and a cross-request cache of 20 earlier requests of at most 512 tokens
(``SuffixCache.insert``; ``speculate`` after 256 tokens of 8 new requests). Every row checks
its output against the reference's, so both sides do the same work."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference.suffix import check_against_reference, ref_counts, ref_speculate
from tokenloom.spec.suffix.store import DEFAULT_MAX_DEPTH, SuffixCache, SuffixIndex

DEPTH, MAX_MATCH, MAX_NODES = DEFAULT_MAX_DEPTH, 16, 16
HISTORY, POINTS, EARLIER, REQUEST_LEN, NEW_AFTER = 2048, 8, 20, 512, 256


@pytest.fixture(scope="module")
def request_case(source_tokens):
    """The request (its first HISTORY tokens) and POINTS prefix lengths of it."""
    hist = np.concatenate(source_tokens)[:HISTORY]
    return hist, np.linspace(HISTORY // 2, HISTORY, POINTS).astype(int).tolist()


@pytest.fixture(scope="module")
def cache_case(source_tokens):
    """EARLIER requests for the cache and the contexts of POINTS new ones (other files)."""
    docs = [d[:REQUEST_LEN] for d in source_tokens[40:40 + EARLIER]]
    contexts = [d[:NEW_AFTER][-MAX_MATCH:] for d in source_tokens[60:60 + POINTS]]
    return docs, contexts


def check_drafts(counts, contexts, drafts, refs):
    for ctx, got, ref in zip(contexts, drafts, refs):
        check_against_reference(counts, DEPTH, ctx.tolist(), MAX_MATCH, MAX_NODES, got, ref)


def build_index(tokens):
    idx = SuffixIndex(DEPTH)
    idx.extend(tokens)
    return idx


def build_cache(docs):
    cache = SuffixCache(DEPTH)
    for d in docs:
        cache.insert(d)
    return cache


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_index_extend(benchmark, request_case, impl):
    hist, _ = request_case
    benchmark.group = f"suffix index: extend with a {HISTORY}-token request (depth {DEPTH})"
    if impl == "rust":
        idx = benchmark(build_index, hist)
        counts = ref_counts([hist.tolist()], DEPTH)
    else:
        counts = benchmark.pedantic(ref_counts, ([hist.tolist()], DEPTH), rounds=3, iterations=1)
        idx = build_index(hist)
    assert idx.num_nodes == len(counts) + 1, "one trie node per distinct substring (and the root)"
    ctx = hist[-MAX_MATCH:]
    check_drafts(counts, [ctx], [idx.speculate(ctx, MAX_MATCH, MAX_NODES)], [None])


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_index_speculate(benchmark, request_case, impl):
    hist, ends = request_case
    benchmark.group = f"suffix index: speculate at the end of {POINTS} prefixes of a {HISTORY}-token request"
    indexes = [build_index(hist[:e]) for e in ends]
    counts = [ref_counts([hist[:e].tolist()], DEPTH) for e in ends]
    contexts = [hist[e - MAX_MATCH:e] for e in ends]

    def rust():
        return [i.speculate(c, MAX_MATCH, MAX_NODES) for i, c in zip(indexes, contexts)]

    def python():
        return [ref_speculate(n, DEPTH, c.tolist(), MAX_MATCH) for n, c in zip(counts, contexts)]

    if impl == "rust":
        drafts, refs = benchmark(rust), python()
    else:
        drafts, refs = rust(), benchmark.pedantic(python, rounds=3, iterations=1)
    for n, c, d, r in zip(counts, contexts, drafts, refs):
        check_drafts(n, [c], [d], [r])


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_cache_insert(benchmark, cache_case, impl):
    docs, contexts = cache_case
    benchmark.group = f"suffix cache: insert {EARLIER} requests ({sum(map(len, docs))} tokens, depth {DEPTH})"
    lists = [d.tolist() for d in docs]
    if impl == "rust":
        cache = benchmark(build_cache, docs)
        counts = ref_counts(lists, DEPTH)
    else:
        counts = benchmark.pedantic(ref_counts, (lists, DEPTH), rounds=3, iterations=1)
        cache = build_cache(docs)
    assert len(cache) == EARLIER and cache.evicted == 0
    check_drafts(counts, contexts[:1], [cache.speculate(contexts[0], MAX_MATCH, MAX_NODES)], [None])


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_cache_speculate(benchmark, cache_case, impl):
    docs, contexts = cache_case
    benchmark.group = f"suffix cache: speculate for {POINTS} new requests over {EARLIER} cached ones"
    cache = build_cache(docs)
    counts = ref_counts([d.tolist() for d in docs], DEPTH)

    def rust():
        return [cache.speculate(c, MAX_MATCH, MAX_NODES) for c in contexts]

    def python():
        return [ref_speculate(counts, DEPTH, c.tolist(), MAX_MATCH) for c in contexts]

    if impl == "rust":
        drafts, refs = benchmark(rust), python()
    else:
        drafts, refs = rust(), benchmark.pedantic(python, rounds=1, iterations=1)
    check_drafts(counts, contexts, drafts, refs)


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_merged_grow(benchmark, cache_case, impl):
    """One step of the merged drafter's tree (budget 16; the whole grown tree, before any cut):
    ``_core.grow_merged`` vs its Python form (``grow_reference``), for a request 256 tokens
    into a source file, with the cross-request cache of EARLIER requests and a recycler whose
    rows hold the source's next tokens. Both give the same tree."""
    from tests.reference.suffix import grow_core, grow_reference
    from tokenloom.spec.recycling.recycler import TokenRecycler
    from tokenloom.spec.merged.drafter import MergedDrafter

    docs, contexts = cache_case
    benchmark.group = "merged drafter: one step's tree (budget 16) vs its Python form"
    vocab = int(max(max(d.max() for d in docs), max(c.max() for c in contexts))) + 1
    rec = TokenRecycler(vocab, 8)
    seen = np.concatenate(docs)
    rec.update(seen[:-8], np.stack([seen[j + 1 : len(seen) - 7 + j] for j in range(8)], axis=1))
    d = MergedDrafter(recycler=rec, cache=build_cache(docs), budget=MAX_NODES, seed_prefill=False)
    d.begin(contexts[0].tolist(), len(contexts[0]) // 2)
    root = d.seq[-1]
    if impl == "rust":
        (tokens, parents, *_), _, _ = benchmark(grow_core, d)
        ref = grow_reference(d, root)
    else:
        ref = benchmark(grow_reference, d, root)
        (tokens, parents, *_), _, _ = grow_core(d)
    assert tokens.tolist() == ref["tokens"].tolist() and parents.tolist() == ref["parents"].tolist()
    assert len(tokens) > 1
