"""Suffix drafting and the merged drafter: the Rust suffix trie against a pure-Python reference
(hypothesis and seeded cases), the cross-request cache's memory bound, eviction and bytes, bad
input, the merged tree (a union of both sources, cut best-first), greedy == HF greedy, exact
sampling through the deterministic-draft tree rule, and the cross-request cache at work."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenloom
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.sizing import StepCost
from tokenloom.spec.merged.calibration import Calibration
from tokenloom.spec.merged.drafter import MergedDrafter, best_nodes, cap_rows, subtree
from tokenloom.spec.suffix.store import SuffixCache, SuffixIndex

from tests.reference.greedy import count_same_as_hf, hf_greedy
from tests.reference.spec import joint_chi2, prompt_ids
from tests.reference.suffix import cap_reference, check_against_reference, paths_of, ref_counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the suffix trie against a pure-Python reference (tests/reference/suffix.py) ----------------


@settings(max_examples=150, deadline=None)
@given(
    doc=st.lists(st.integers(0, 3), min_size=1, max_size=40),
    ctx_len=st.integers(1, 8),
    depth=st.integers(2, 7),
    max_match=st.integers(1, 6),
    max_nodes=st.integers(1, 20),
)
def test_index_matches_reference(doc, ctx_len, depth, max_match, max_nodes):
    idx = SuffixIndex(depth)
    idx.extend(np.array(doc[: len(doc) // 2], dtype=np.int64))
    idx.extend(np.array(doc[len(doc) // 2:], dtype=np.int64))  # appending in pieces = one document
    assert len(idx) == len(doc)
    context = doc[-ctx_len:]
    got = idx.speculate(np.array(context), max_match, max_nodes)
    check_against_reference(ref_counts([doc], depth), depth, context, max_match, max_nodes, got)


@settings(max_examples=80, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=15), min_size=1, max_size=5),
    context=st.lists(st.integers(0, 3), min_size=1, max_size=6),
)
def test_cache_matches_reference(docs, context):
    cache = SuffixCache(max_depth=5, max_bytes=1 << 20)
    for d in docs:
        cache.insert(np.array(d, dtype=np.int64))
    check_against_reference(ref_counts(docs, 5), 5, context, 4, 12, cache.speculate(np.array(context), 4, 12))


def test_speculate_small_example():
    idx = SuffixIndex(4)
    idx.extend(np.array([1, 2, 3, 1, 2, 4, 1, 2]))
    toks, pars, probs, support, m = idx.speculate(np.array([1, 2]), 3, 10)
    assert m == 2
    assert sorted(paths_of(toks, pars)) == [(3,), (3, 1), (4,), (4, 1)]
    assert probs.tolist() == [0.5, 0.5, 1.0, 1.0] and support.tolist() == [2, 2, 1, 1]
    toks, pars, probs, support, m = idx.speculate(np.array([9]), 3, 10)
    assert m == 0 and toks.size == 0


# --- the cross-request cache --------------------------------------------------------------------


def test_cache_memory_bound_and_eviction():
    """Filled far past its cap, the cache never holds more than max_bytes, evicts the oldest
    sequences first, and what it keeps drafts exactly like a fresh cache of those sequences."""
    rng = np.random.default_rng(0)
    cap = 256 << 10
    cache = SuffixCache(max_depth=12, max_bytes=cap)
    docs = [rng.integers(0, 300, size=int(rng.integers(20, 200))) for _ in range(300)]
    for d in docs:
        cache.insert(d)
        assert cache.memory_bytes <= cap
    assert cache.evicted > 0 and len(cache) + cache.evicted == len(docs)
    kept = cache.sequences()
    for a, b in zip(kept, docs[-len(kept):]):  # the newest survive, in order
        assert a.tolist() == b.tolist()
    fresh = SuffixCache(max_depth=12, max_bytes=1 << 26)
    for d in kept:
        fresh.insert(d)
    for d in docs[-5:]:
        ctx = d[:7]
        for x, y in zip(cache.speculate(ctx, 6, 20), fresh.speculate(ctx, 6, 20)):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    # one sequence larger than the cap keeps its last tokens
    cache.insert(np.arange(100_000) % 1000)
    assert cache.memory_bytes <= cap and cache.num_tokens < 100_000


def test_cache_max_requests_and_bytes_roundtrip():
    cache = SuffixCache(max_depth=6, max_bytes=1 << 20, max_requests=2)
    for d in ([1, 2, 3], [4, 5, 6, 4, 5], [7, 8]):
        cache.insert(np.array(d))
    assert [s.tolist() for s in cache.sequences()] == [[4, 5, 6, 4, 5], [7, 8]]
    data = cache.to_bytes()
    back = SuffixCache.from_bytes(data, max_requests=5)
    assert [s.tolist() for s in back.sequences()] == [[4, 5, 6, 4, 5], [7, 8]] and back.max_depth == 6
    assert [np.asarray(x).tolist() for x in back.speculate(np.array([4]), 3, 9)] == \
        [np.asarray(x).tolist() for x in cache.speculate(np.array([4]), 3, 9)]
    for bad in (b"", data[:-1], b"X" + data[1:], data + b"\0", data[:12] + b"\0\0\0\0" + data[16:]):
        with pytest.raises(ValueError, match="suffix cache bytes"):
            SuffixCache.from_bytes(bad)
    with pytest.raises(TypeError):
        SuffixCache.from_bytes("not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call, err",
    [
        (lambda: SuffixIndex(0), ValueError),
        (lambda: SuffixIndex(257), ValueError),
        (lambda: SuffixIndex(2.5), TypeError),
        (lambda: SuffixCache(max_bytes=100), ValueError),
        (lambda: SuffixCache(max_requests=0), ValueError),
        (lambda: SuffixIndex(4).extend(np.array([1, -1])), IndexError),
        (lambda: SuffixIndex(4).extend(np.array([1.5])), ValueError),
        (lambda: SuffixIndex(4).extend(np.array([[1]])), ValueError),
        (lambda: SuffixIndex(4).speculate(np.array([1]), 0), ValueError),
        (lambda: SuffixIndex(4).speculate(np.array([1]), 2, 0), ValueError),
        (lambda: SuffixIndex(4).speculate(np.array([1]), 2, 2, 1.5), ValueError),
        (lambda: SuffixIndex(4).speculate(np.array([1 << 24]), 2, 2), IndexError),
        (lambda: SuffixCache().insert(np.array([1, 1 << 24])), IndexError),
        (lambda: Calibration(k=-1), ValueError),
        (lambda: Calibration(decay=0.0), ValueError),
        (lambda: MergedDrafter(budget="big"), ValueError),
        (lambda: MergedDrafter(budget="auto"), ValueError),
        (lambda: MergedDrafter(budget=0), ValueError),
        (lambda: MergedDrafter(recycler="r"), TypeError),
        (lambda: MergedDrafter(cache="c"), TypeError),
        (lambda: MergedDrafter(recycler=TokenRecycler(64, 8), calibration=Calibration(k=4)), ValueError),
    ],
)
def test_bad_input(call, err):
    with pytest.raises(err):
        call()


# --- the merged tree -----------------------------------------------------------------------------


def brute_best(scores, depths, parents, cost):
    """Best subtree-closed node set by exhaustive search over every size and subset."""
    t = len(scores)
    best = None
    for n in range(t):
        for sub in itertools.combinations(range(1, t), n):
            s = set(sub) | {0}
            if any(parents[i] not in s for i in sub):
                continue
            rate = (1 + sum(scores[i] for i in sub)) / cost(n + 1)
            if best is None or rate > best[0] + 1e-12:
                best = (rate, n)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_best_nodes_is_optimal(seed):
    """best_nodes keeps the size and set maximising expected tokens per second (exhaustive
    search on small random trees whose scores never rise from a parent to a child)."""
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 9))
    parents = [-1] + [int(rng.integers(0, i)) for i in range(1, t)]
    depths = [0] * t
    scores = [1.0] * t
    for i in range(1, t):
        depths[i] = depths[parents[i]] + 1
        scores[i] = scores[parents[i]] * float(rng.choice([rng.random(), 1.0]))
    cost = StepCost((1, 2, 5, 9), tuple(sorted(rng.random(4) + 1.0)))
    keep = best_nodes(np.array(scores), np.array(depths), cost)
    rate, n = brute_best(scores, depths, parents, cost)
    assert keep[0] == 0 and len(keep) == n + 1
    assert (1 + sum(scores[i] for i in keep[1:])) / cost(len(keep)) == pytest.approx(rate)
    tree = subtree(keep, np.arange(t, dtype=np.int64) + 100, np.array(parents, dtype=np.int64), np.array(depths, dtype=np.int64))
    assert all(tree.parents[i] < i for i in range(1, tree.size))


@given(st.lists(st.lists(st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 0.6, 1.0]), min_size=1, max_size=6), min_size=1, max_size=4))
@settings(max_examples=300, deadline=None)
def test_cap_rows_matches_reference(rows):
    """cap_rows (2-D and 1-D) against the element-wise reference; rows become
    sub-distributions, keep their largest estimate when it is unique, and do not depend on order."""
    width = max(len(r) for r in rows)
    p = np.zeros((len(rows), width))
    for i, r in enumerate(rows):
        p[i, : len(r)] = r
    got = cap_rows(p)
    for i in range(len(rows)):
        row = [float(x) for x in p[i]]
        assert got[i].tolist() == pytest.approx(cap_reference(row), abs=1e-12)
        assert cap_rows(np.array(row)).tolist() == pytest.approx(cap_reference(row), abs=1e-12)
        assert got[i].sum() <= 1.0 + 1e-9
        if row.count(max(row)) == 1:
            assert got[i].max() == max(row)
        assert sorted(cap_rows(np.array(row[::-1]))) == pytest.approx(sorted(cap_rows(np.array(row))), abs=1e-12)
    assert np.allclose(cap_rows(p[0]), got[0])


def test_cap_rows_keeps_a_confident_candidate():
    """A near-certain suffix candidate beside recycled ones keeps its estimate (proportional
    scaling would have shrunk it to 0.95 / 1.55); the others share 0.05 in proportion; two
    tied at 0.6 share the row equally."""
    assert cap_rows(np.array([0.3, 0.95, 0.2, 0.1])).tolist() == pytest.approx([0.025, 0.95, 1 / 60, 1 / 120])
    assert cap_rows(np.array([0.6, 0.2, 0.6])).tolist() == pytest.approx([0.5, 0.0, 0.5])


def test_merged_tree_is_a_union_of_both_sources():
    """A suffix match and recycled rows share one tree: the suffix chain is there (deep), the
    recycled candidates of the root too; calibration learns from the accepted path."""
    import torch

    rec = TokenRecycler(64, 8)
    rec.update(np.array([5]), np.array([[40, 41, 42, 43, 44, 45, 46, 47]]))
    d = MergedDrafter(recycler=rec, cache=None, budget=12, seed_prefill=False)
    prompt = [5, 6, 7, 8, 9, 10, 11, 1, 2, 3, 5]
    d.prefill(torch.tensor([prompt[:-1]]), prompt[-1], None, None)
    tree = d.propose(5, len(prompt) - 1)
    paths = paths_of(tree.tokens[1:], np.where(tree.parents[1:] > 0, tree.parents[1:] - 1, -1))
    assert (6, 7, 8) in paths  # the suffix continuation of 5: 6 7 8 9 ...
    assert (40,) in paths  # the recycled rank-0 candidate of the root
    assert tree.size == 13
    before = d.calibration.offers.sum()
    from tokenloom.verify.result import VerifyResult

    node6 = paths.index((6,)) + 1
    result = VerifyResult(np.array([0, node6], dtype=np.int64), np.array([6, 7], dtype=np.int64))
    d.accept(tree, result, torch.randn(tree.size, 64))
    assert d.calibration.offers.sum() > before and d.calibration.hits.sum() > 0
    assert d.seq[-2:] == [6, 7]


# --- generate: greedy == HF greedy, exact sampling, the cross-request cache ----------------------


@pytest.mark.parametrize("method, kw", [
    ("suffix", {}), ("suffix", {"budget": 6, "cache": False}),
    ("merged", {}), ("merged", {"budget": 8}), ("merged", {"budget": 3, "max_depth": 2}),
])
def test_equals_hf_greedy_tiny(tiny_llama, method, kw):
    for seed in range(3):
        ids = prompt_ids(seed + 70)
        ref = hf_greedy(tiny_llama, ids, 24)
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=24, eos_token_id=[], **kw)
        assert out.sequences.tolist() == ref.tolist(), (method, kw, seed)
        assert out.stats.spec.drafter == method


@pytest.mark.parametrize("method", ["suffix", "merged"])
def test_sampling_exact(tiny_llama, method):
    """Drafts on a repetitive prompt are accepted often; the samples follow the exact joint law
    of the first two tokens (temperature 2, top-k 3)."""
    import torch

    base = prompt_ids(7, n=4)[0].tolist()
    ids = torch.tensor([base * 4])
    cache = SuffixCache(max_bytes=1 << 20)

    def run(i):
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=2, temperature=2.0, top_k=3,
                                 seed=i, eos_token_id=[], budget=6, cache=cache)
        return out.sequences[0, ids.shape[1]:].tolist(), out.stats.spec.accepted > 0

    pvalue, accepted = joint_chi2(tiny_llama, ids, 2.0, 3, 2, 1200, run)
    assert pvalue > 1e-3
    assert accepted > 0  # some drafts were accepted: the test exercises verification


def test_cross_request_cache_raises_acceptance(tiny_llama):
    """The same request twice: the second drafts from the first's output in the cache."""
    ids = prompt_ids(91)
    cache = SuffixCache(max_bytes=1 << 20)
    first = tokenloom.generate(tiny_llama, ids, method="suffix", max_new_tokens=40, eos_token_id=[], budget=8, cache=cache)
    assert len(cache) == 1 and cache.sequences()[0].tolist() == first.sequences[0, ids.shape[1]:].tolist()
    second = tokenloom.generate(tiny_llama, ids, method="suffix", max_new_tokens=40, eos_token_id=[], budget=8, cache=cache)
    assert second.sequences.tolist() == first.sequences.tolist()
    assert second.stats.steps < first.stats.steps
    assert second.stats.extra["suffix_cache_matched"] > 0
    none = tokenloom.generate(tiny_llama, ids, method="suffix", max_new_tokens=40, eos_token_id=[], budget=8, cache=False)
    assert none.stats.extra["suffix_cache_matched"] == 0
    fresh = SuffixCache(max_bytes=1 << 20)
    for method in ("suffix", "merged"):  # cache_output=False: drafts from the cache, never grows it
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=40, eos_token_id=[], budget=8, cache=fresh, cache_output=False)
        assert out.sequences.tolist() == first.sequences.tolist() and len(fresh) == 0


@pytest.mark.parametrize("kw, err", [
    ({"budget": "x"}, ValueError), ({"budget": 0}, ValueError), ({"cache": 3}, TypeError),
    ({"recycler": 3}, TypeError), ({"max_match": 0}, ValueError), ({"nope": 1}, TypeError),
    ({"cache_output": "no"}, TypeError),
])
def test_generate_bad_keywords(tiny_llama, kw, err):
    with pytest.raises(err):
        tokenloom.generate(tiny_llama, prompt_ids(1), method="merged", max_new_tokens=4, eos_token_id=[], **kw)


PROMPTS = [
    "Repeat exactly: the cat sat on the mat, the cat sat on the mat.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List the days of the week.",
]


@pytest.mark.model
@pytest.mark.parametrize("method", ["suffix", "merged"])
def test_equals_hf_greedy_embedded(smollm, method):
    model, tok = smollm
    same, out = count_same_as_hf(model, tok, PROMPTS, 48, method=method, cache=SuffixCache(max_bytes=1 << 22))
    assert same >= len(PROMPTS) - 1
    assert out.stats.spec.drafter == method


def test_default_cache_persisted_across_processes(tiny_llama):
    """generate(method="suffix") with the per-model default cache saves it through
    tokenloom.spec.persist; a fresh start (the in-process defaults forgotten) loads the same
    sequences; persist=False starts cold; a corrupted file is one warning and a cold start."""
    import warnings

    from tokenloom.spec import persist
    from tokenloom.spec.suffix.store import STATE_NAME, STATE_VERSION, default_suffix_cache, reset_default_suffix_caches

    reset_default_suffix_caches()
    ids = prompt_ids(5)
    out = tokenloom.generate(tiny_llama, ids, method="suffix", max_new_tokens=12, eos_token_id=[], budget=4)
    cache = default_suffix_cache(49152, model=tiny_llama)
    assert [s.tolist() for s in cache.sequences()] == [out.sequences[0, ids.shape[1]:].tolist()]
    persist.flush_all()
    reset_default_suffix_caches()
    loaded = default_suffix_cache(49152, model=tiny_llama)
    assert loaded is not cache and [s.tolist() for s in loaded.sequences()] == [s.tolist() for s in cache.sequences()]
    reset_default_suffix_caches()
    assert len(default_suffix_cache(49152, model=tiny_llama, persist=False)) == 0
    reset_default_suffix_caches()
    path = persist.state_path(persist.model_key(tiny_llama), STATE_NAME)
    path.write_bytes(path.read_bytes()[:-3] + b"xyz")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(default_suffix_cache(49152, model=tiny_llama)) == 0
    assert sum(issubclass(w.category, persist.PersistWarning) for w in caught) == 1
    assert persist.load_state(persist.model_key(tiny_llama), STATE_NAME, STATE_VERSION) is None
    reset_default_suffix_caches()
