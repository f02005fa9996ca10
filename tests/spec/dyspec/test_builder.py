"""DynamicTreeBuilder: parity with the pure-Python reference (hypothesis), the greedy optimum,
the statistics of sampled children (chi-square, seeded), bad input."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import tokenloom
from tokenloom import DynamicTreeBuilder

from tests.reference.dyspec import RefBuilder, brute_force_best, run, sequential_greedy


def make_row_fn(seed: int, width: int, vocab: int = 30, coarse: bool = False, full: bool = False):
    """A fake draft: a reproducible random row per path (top-`width` ids + probabilities, or a
    full row of `vocab` when `full`); rows sum to < 1; `coarse` makes ties likely."""
    cache = {}

    def row(path):
        if path not in cache:
            rng = random.Random(hash((seed,) + tuple(path)))
            ids = rng.sample(range(vocab), width)
            w = [float(rng.randint(1, 4)) if coarse else rng.random() + 1e-3 for _ in range(width)]
            total = sum(w) * (1.0 + rng.random())
            probs = [x / total for x in w]
            if full:
                dense = [0.0] * vocab
                for t, p in zip(ids, probs):
                    dense[t] = p
                ids, probs = list(range(vocab)), dense
            cache[path] = (ids, probs)
        return cache[path]

    return row


def rust_path_of(b: DynamicTreeBuilder):
    def path_of(n: int):
        out = []
        while n >= 0:
            tok, n, _ = b.node(n)
            out.append(tok)
        return tuple(reversed(out))

    return path_of


def ref_path_of(r: RefBuilder):
    def path_of(n: int):
        out = []
        while n >= 0:
            out.append(r.nodes[n][0])
            n = r.nodes[n][1]
        return tuple(reversed(out))

    return path_of


def as_lists(t) -> dict:
    return {f: getattr(t, f).tolist() for f in ("tokens", "parents", "depths", "scores", "draft_rows", "node_ids")}


# -- parity -----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    width=st.integers(1, 6),
    budget=st.integers(1, 40),
    max_depth=st.integers(1, 7),
    k=st.integers(1, 6),
    coarse=st.booleans(),
    cap=st.one_of(st.none(), st.integers(1, 6)),
    full=st.booleans(),
)
def test_deterministic_parity_with_reference(seed, width, budget, max_depth, k, coarse, cap, full):
    row_fn = make_row_fn(seed, width, coarse=coarse, full=full)
    b = DynamicTreeBuilder(budget, max_depth, k=k, max_frontier=cap, vocab_size=30)
    got = as_lists(run(b, 3, row_fn, rust_path_of(b)))
    r = RefBuilder(budget, max_depth, k=k, max_frontier=cap)
    want = run(r, 3, row_fn, ref_path_of(r))
    assert got == want


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    rng_seed=st.integers(0, 2**64 - 1),
    width=st.integers(1, 6),
    budget=st.integers(1, 30),
    max_depth=st.integers(1, 5),
    k=st.integers(1, 5),
    full=st.booleans(),
)
def test_sampled_parity_with_reference(seed, rng_seed, width, budget, max_depth, k, full):
    # The reference reimplements the counter-based RNG, so sampled trees match exactly too,
    # including the second tree of a builder (a new RNG stream).
    row_fn = make_row_fn(seed, width, full=full)
    b = DynamicTreeBuilder(budget, max_depth, k=k, sampled=True, seed=rng_seed)
    r = RefBuilder(budget, max_depth, k=k, sampled=True, seed=rng_seed)
    for root in (3, 4):
        got = as_lists(run(b, root, row_fn, rust_path_of(b)))
        assert got == run(r, root, row_fn, ref_path_of(r))


# -- optimality -------------------------------------------------------------------------------
def test_hand_made_example():
    rows = {
        (1,): ([10, 11, 12], [0.6, 0.3, 0.1]),
        (1, 10): ([20, 21, 22], [0.9, 0.05, 0.0]),
        (1, 11): ([30, 31, 32], [0.5, 0.5, 0.0]),
        (1, 11, 30): ([70, 71, 72], [0.9, 0.1, 0.0]),
        (1, 10, 20): ([40, 41, 42], [0.8, 0.2, 0.0]),
    }
    b = DynamicTreeBuilder(4, 3, k=2)
    t = run(b, 1, lambda p: rows[p], rust_path_of(b))
    # Greedy order: 10 (.6), 20 (.54), 40 (.432), 11 (.3).
    assert t.tokens.tolist() == [1, 10, 11, 20, 40]
    assert t.parents.tolist() == [-1, 0, 0, 1, 3]
    assert t.depths.tolist() == [0, 1, 1, 2, 3]
    np.testing.assert_allclose(t.scores, [1.0, 0.6, 0.3, 0.54, 0.432], rtol=1e-12)
    assert t.draft_rows.tolist() == [0, 1, 2, 3, -1]
    assert b.rows_seen == 5 and b.done
    seq = sequential_greedy(1, lambda p: rows[p], 4, 3, 2)
    assert [p for p, _ in seq] == [(1, 10), (1, 10, 20), (1, 10, 20, 40), (1, 11)]


def tree_paths(t):
    paths = []
    for i, (tok, par) in enumerate(zip(t.tokens.tolist(), t.parents.tolist())):
        paths.append((paths[par] if i else ()) + (tok,))
    return sorted(zip(paths[1:], t.scores.tolist()[1:]))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), width=st.integers(1, 5), budget=st.integers(1, 30),
       max_depth=st.integers(1, 6), k=st.integers(1, 4))
def test_same_set_as_sequential_greedy(seed, width, budget, max_depth, k):
    row_fn = make_row_fn(seed, width)  # continuous probabilities: no ties
    b = DynamicTreeBuilder(budget, max_depth, k=k)
    t = run(b, 3, row_fn, rust_path_of(b))
    want = sorted(sequential_greedy(3, row_fn, budget, max_depth, k))
    got = tree_paths(t)
    assert [p for p, _ in got] == [p for p, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), width=st.integers(1, 3), size=st.integers(1, 6),
       max_depth=st.integers(1, 3), coarse=st.booleans())
def test_optimal_among_closed_sets(seed, width, size, max_depth, coarse):
    row_fn = make_row_fn(seed, width, coarse=coarse)
    b = DynamicTreeBuilder(size, max_depth, k=2)
    t = run(b, 3, row_fn, rust_path_of(b))
    best = brute_force_best(3, row_fn, size, max_depth, 2)
    assert t.scores[1:].sum() == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_invariants_and_forward_count():
    row_fn = make_row_fn(7, 8)
    for budget, depth in [(1, 1), (5, 8), (32, 6), (80, 10)]:
        b = DynamicTreeBuilder(budget, depth, k=4)
        b.reset(3)
        forwards = 0
        while not b.done:
            f = b.frontier()
            assert len(set(f.depths.tolist())) == 1  # one depth per forward
            rows = [row_fn(rust_path_of(b)(int(n))) for n in f.ids]
            b.expand(f.ids, [r[0] for r in rows], [r[1] for r in rows])
            forwards += 1
        t = b.tree()
        assert forwards <= depth
        assert 1 <= t.size <= budget + 1
        assert t.parents[0] == -1 and all(0 <= t.parents[i] < i for i in range(1, t.size))
        assert t.depths.max() <= depth
        assert (t.depths[1:] == t.depths[t.parents[1:]] + 1).all()
        assert tokenloom.verify_greedy(t.parents, t.tokens, np.zeros(t.size, np.int64)).path[0] == 0


def test_draft_rows_index_the_expand_calls():
    row_fn = make_row_fn(11, 5)
    b = DynamicTreeBuilder(12, 4, k=3)
    b.reset(3)
    all_rows = []
    while not b.done:
        f = b.frontier()
        # Give the rows in reverse frontier order: the row index follows the call's order.
        order = f.ids[::-1]
        rows = [row_fn(rust_path_of(b)(int(n))) for n in order]
        b.expand(order, [r[0] for r in rows], [r[1] for r in rows])
        all_rows.extend(rows)
    t = b.tree()
    paths = {}
    for i in range(t.size):
        paths[i] = (paths[int(t.parents[i])] if i else ()) + (int(t.tokens[i]),)
    for i in range(t.size):
        r = int(t.draft_rows[i])
        if r >= 0:
            assert all_rows[r] == row_fn(paths[i])
        kids = [int(t.tokens[c]) for c in range(1, t.size) if t.parents[c] == i]
        if kids:
            assert set(kids) <= set(all_rows[r][0])


# -- sampled children -------------------------------------------------------------------------
def test_sampled_children_marginals():
    """First child ~ q; second child ~ sum_a q(a) q(b) / (1 - q(a)) (without replacement)."""
    q = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    ids = np.arange(100, 106)
    b = DynamicTreeBuilder(2, 1, k=2, sampled=True, seed=1234)
    n = 20000
    first = np.zeros(6)
    second = np.zeros(6)
    pairs = np.zeros((6, 6))
    for _ in range(n):
        b.reset(0)
        b.expand([0], ids[None], q[None])
        t = b.tree()
        a, c = int(t.tokens[1]) - 100, int(t.tokens[2]) - 100
        first[a] += 1
        second[c] += 1
        pairs[a, c] += 1
        # Keys: the second sibling is weighted by the mass left after the first.
        assert t.scores[1] == pytest.approx(q[a]) and t.scores[2] == pytest.approx(q[c])
    want_second = np.array([sum(q[a] * q[c] / (1 - q[a]) for a in range(6) if a != c) for c in range(6)])
    assert stats.chisquare(first, n * q).pvalue > 1e-3
    assert stats.chisquare(second, n * want_second).pvalue > 1e-3
    want_pairs = np.array([[q[a] * q[c] / (1 - q[a]) if a != c else 0 for c in range(6)] for a in range(6)])
    mask = want_pairs > 0
    assert stats.chisquare(pairs[mask], n * want_pairs[mask]).pvalue > 1e-3
    # The check has teeth: with-replacement marginals (second ~ q) are rejected.
    assert stats.chisquare(second, n * q).pvalue < 1e-6


def test_sampled_full_rows_marginals():
    rng = np.random.default_rng(5)
    q = rng.dirichlet(np.ones(50))
    b = DynamicTreeBuilder(3, 1, k=3, sampled=True, seed=99, vocab_size=50)
    n = 8000
    first = np.zeros(50)
    for _ in range(n):
        b.reset(0)
        b.expand_rows([0], q[None])
        t = b.tree()
        first[t.tokens[1]] += 1
        assert len(set(t.tokens[1:].tolist())) == 3
    # Pool the rare tokens so every expected count is >= 5.
    order = np.argsort(q)
    cut = np.searchsorted(np.cumsum(q[order]) * n, 40)
    obs = np.concatenate([[first[order[:cut]].sum()], first[order[cut:]]])
    exp = np.concatenate([[q[order[:cut]].sum()], q[order[cut:]]]) * n
    assert stats.chisquare(obs, exp).pvalue > 1e-3


def test_sampled_reproducible():
    row_fn = make_row_fn(1, 6)
    trees = []
    for _ in range(2):
        b = DynamicTreeBuilder(20, 5, k=3, sampled=True, seed=42)
        trees.append([as_lists(run(b, 3, row_fn, rust_path_of(b))) for _ in range(3)])
    assert trees[0] == trees[1]
    assert trees[0][0] != trees[0][1] or trees[0][1] != trees[0][2]  # new stream per tree
    b = DynamicTreeBuilder(20, 5, k=3, sampled=True)  # seed=None: random
    assert 0 <= b.seed < 2**64


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(budget=0, max_depth=3), "budget: expected an int >= 1, got 0"),
        (dict(budget=4, max_depth=0), "max_depth"),
        (dict(budget=4, max_depth=3, k=0), "k: expected"),
        (dict(budget=4, max_depth=3, max_frontier=0), "max_frontier"),
        (dict(budget=4, max_depth=3, vocab_size=0), "vocab_size"),
        (dict(budget=-1, max_depth=3), "budget"),
        (dict(budget=4, max_depth=3, seed=-1), "seed"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DynamicTreeBuilder(**kwargs)


@pytest.mark.parametrize(
    "node_ids, ids, probs, exc, match",
    [
        ([0], [[1, 2]], [[0.5, float("nan")]], ValueError, "expected a probability in"),
        ([0], [[1, 2]], [[0.5, -0.1]], ValueError, "expected a probability in"),
        ([0], [[1, 2]], [[1.5, 0.0]], ValueError, "sums to 1.5: expected at most 1"),
        ([0], [[1, 2]], [[0.7, 0.7]], ValueError, "sums to"),
        ([0], [[1, 100]], [[0.5, 0.5]], IndexError, "topk_ids: 100 is out of range"),
        ([0], [[1, -3]], [[0.5, 0.5]], IndexError, "topk_ids"),
        ([0], [[1, 1]], [[0.5, 0.5]], ValueError, "appears twice"),
        ([5], [[1, 2]], [[0.5, 0.5]], IndexError, "node_ids: 5 is out of range"),
        ([0, 0], [[1, 2], [1, 2]], [[0.5, 0.5], [0.5, 0.5]], ValueError, "already expanded"),
        ([], np.zeros((0, 2), np.int64), np.zeros((0, 2)), ValueError, "every frontier node"),
        ([0], [[1, 2, 3]], [[0.5, 0.5]], ValueError, "topk_probs: expected shape"),
        ([0], [[1, 2], [3, 4]], [[0.5, 0.5], [0.5, 0.5]], ValueError, "expected 1 rows"),
        ([0], [[1.5, 2]], [[0.5, 0.5]], ValueError, "integer ids"),
        ([0], [1, 2], [0.5, 0.5], ValueError, "2-D"),
    ],
)
def test_bad_expand(node_ids, ids, probs, exc, match):
    b = DynamicTreeBuilder(4, 3, k=2, vocab_size=100)
    b.reset(5)
    with pytest.raises(exc, match=match):
        b.expand(node_ids, ids, probs)
    # The builder is unchanged after a refused call.
    assert b.frontier().ids.tolist() == [0] and b.num_nodes == 1


def test_bad_state_and_rows():
    b = DynamicTreeBuilder(4, 3, k=2, vocab_size=10)
    with pytest.raises(ValueError, match="reset"):
        b.frontier()
    with pytest.raises(ValueError, match="reset"):
        b.tree()
    with pytest.raises(IndexError, match="root_token"):
        b.reset(10)
    b.reset(5)
    with pytest.raises(ValueError, match="10 columns"):
        b.expand_rows([0], np.full((1, 9), 0.1))
    with pytest.raises(ValueError, match="sums to"):
        b.expand_rows([0], np.full((1, 10), 0.2))
    with pytest.raises(ValueError, match="probability"):
        b.expand_rows([0], np.full((1, 10), np.nan))
    b.expand([0], [[1, 2]], [[0.5, 0.25]])
    with pytest.raises(ValueError, match="already expanded"):
        b.expand([0], [[1, 2]], [[0.5, 0.25]])
    with pytest.raises(ValueError, match="every frontier node"):
        b.expand([1], [[1, 2]], [[0.5, 0.25]])
    with pytest.raises(IndexError, match="node id"):
        b.node(99)


def test_torch_inputs_and_repr():
    import torch

    b = DynamicTreeBuilder(4, 2, k=2)
    b.reset(5)
    b.expand(torch.tensor([0]), torch.tensor([[7, 8]]), torch.tensor([[0.6, 0.3]], dtype=torch.float32))
    t = b.tree()
    assert t.tokens.tolist() == [5, 7, 8]
    assert "budget=4" in repr(b) and "max_frontier=None" in repr(b)
    assert (b.budget, b.max_depth, b.k, b.sampled, b.vocab_size, b.max_frontier) == (4, 2, 2, False, None, None)


def test_build_with_a_draft_object():
    row_fn = make_row_fn(3, 4)

    class Fake:
        def __init__(self, b):
            self.b = b

        def expand(self, f):
            rows = [row_fn(rust_path_of(self.b)(int(n))) for n in f.ids]
            return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])

    b = DynamicTreeBuilder(10, 4, k=3)
    t = b.build(3, Fake(b))
    r = RefBuilder(10, 4, k=3)
    assert as_lists(t) == run(r, 3, row_fn, ref_path_of(r))


def test_draft_probs_dense_matches_sampling_rows():
    from tokenloom.spec.dyspec.builder import draft_probs_dense

    row_fn = make_row_fn(9, 5)
    b = DynamicTreeBuilder(12, 3, k=3, sampled=True, seed=3)
    b.reset(3)
    rows = []
    while not b.done:
        f = b.frontier()
        rr = [row_fn(rust_path_of(b)(int(n))) for n in f.ids]
        ids, probs = np.array([r[0] for r in rr]), np.array([r[1] for r in rr])
        b.expand(f.ids, ids, probs)
        rows.append((ids, probs))
    t = b.tree()
    q = draft_probs_dense(t, rows, 30).numpy()
    flat = [(i, p) for ids, probs in rows for i, p in zip(ids, probs)]
    for n in range(t.size):
        r = int(t.draft_rows[n])
        if r < 0:
            assert not q[n].any()
            continue
        want = np.zeros(30)
        want[flat[r][0]] = flat[r][1] / flat[r][1].sum()
        np.testing.assert_allclose(q[n], want, rtol=1e-6, atol=1e-7)
        # Every child of n was drawn from that row's support.
        kids = t.tokens[1:][t.parents[1:] == n]
        assert (q[n][kids] > 0).all()
    with pytest.raises(ValueError, match="rows"):
        draft_probs_dense(t, rows[:1], 30)
