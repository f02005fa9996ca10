"""The batch draft budget: the allocation against a brute-force oracle (every allocation of
small cases enumerated), the per-row acceptance estimates, the argument check, DraftTree.prefix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokenloom.spec.base import DraftTree
from tokenloom.spec.batchbudget import BatchBudget, RowAcceptance, allocate, check_batch_budget, sibling_ranks


def random_gains(rng, rows):
    """Per row, non-decreasing expected tokens for 1..T_b nodes (T_b in 1..5)."""
    out = []
    for _ in range(rows):
        t = int(rng.integers(1, 6))
        p = rng.random(t) * (rng.random(t) < 0.7)
        p[0] = 1.0
        out.append(np.cumsum(p))
    return out


def oracle(gains, cost, limit):
    """The best objective over every allocation (k_b in 1..T_b)."""
    best = -np.inf
    for k in itertools.product(*[range(1, len(g) + 1) for g in gains]):
        tokens = sum(g[x - 1] for g, x in zip(gains, k))
        if limit is None:
            best = max(best, tokens / cost(max(k)))
        elif sum(k) - len(k) <= limit:
            best = max(best, tokens)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_allocate_matches_the_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    gains = random_gains(rng, int(rng.integers(1, 5)))
    steps = np.cumsum(rng.random(6) * 0.5) + 1.0  # a non-decreasing cost of widths 1..6
    cost = lambda w: float(steps[w - 1])  # noqa: E731
    k, info = allocate(gains, cost)
    assert all(1 <= x <= len(g) for x, g in zip(k, gains))
    got = sum(g[x - 1] for g, x in zip(gains, k)) / cost(max(k))
    assert got == pytest.approx(oracle(gains, cost, None), rel=1e-12)
    assert info["width"] == max(k) and info["expected_tokens"] == pytest.approx(sum(g[x - 1] for g, x in zip(gains, k)))
    for limit in (0, 1, 2, 3, 7):
        k, info = allocate(gains, None, limit)
        assert sum(k) - len(k) <= limit and all(1 <= x <= len(g) for x, g in zip(k, gains))
        assert sum(g[x - 1] for g, x in zip(gains, k)) == pytest.approx(oracle(gains, None, limit), rel=1e-12)


def test_allocate_edges():
    gains = [np.array([1.0, 1.9, 2.0]), np.array([1.0, 1.1])]
    assert allocate(gains, None, 0)[0] == [1, 1]  # budget 0: every row sends its root alone
    assert allocate(gains, None, 1)[0] == [2, 1]  # the one node goes to the row most likely to accept it
    assert allocate(gains, lambda w: float(w), None)[0] == [1, 1]  # costs grow faster than gains: plain
    assert allocate(gains, lambda w: 1.0, None)[0] == [3, 2]  # free width: every node
    with pytest.raises(ValueError, match="step cost"):
        allocate(gains)
    with pytest.raises(ValueError, match="non-empty"):
        allocate([], lambda w: 1.0)


def chain(n):
    return np.arange(-1, n - 1, dtype=np.int64), np.arange(n, dtype=np.int64)


def test_sibling_ranks():
    assert sibling_ranks(np.array([-1, 0, 0, 1, 0, 1, 3])).tolist() == [0, 0, 1, 0, 2, 1, 0]


def test_row_acceptance_learns_per_row():
    acc = RowAcceptance(2)
    parents, depths = chain(4)
    p0 = acc.probabilities(0, parents, depths)
    assert p0[0] == 1.0 and list(p0) == sorted(p0, reverse=True) and p0[1] < 0.6  # the prior
    star = np.array([-1, 0, 0, 0], dtype=np.int64)
    assert acc.probabilities(0, star, np.array([0, 1, 1, 1]))[1:].tolist() == pytest.approx(
        [p0[1], acc.stats[0].rates()[0, 1], acc.stats[0].rates()[0, 2]])  # siblings: the rank rates
    for _ in range(40):
        acc.observe(0, parents, [0, 1, 2])  # row 0 follows the first child twice, then stops
        acc.observe(1, parents, [0])  # row 1 never goes on
    p_good, p_bad = acc.probabilities(0, parents, depths), acc.probabilities(1, parents, depths)
    assert p_good[1] > 0.8 and p_bad[1] < 0.2 and p_good[3] > p_bad[3]
    cut = np.array([-1, 0], dtype=np.int64)  # a cut tree accepted to its edge: not a miss
    before = acc.stats[1].reached.sum()
    acc.observe(1, cut, [0, 1])
    assert acc.stats[1].reached.sum() == pytest.approx(before * acc.stats[1].decay + 1)


def test_batch_budget_steps_and_stats():
    budget = BatchBudget(3, limit=2)
    trees = [DraftTree(np.arange(t, dtype=np.int64), *chain(t)) for t in (5, 4)]
    k = budget.widths([0, 2], trees)
    assert sum(k) - len(k) <= 2 and all(x >= 1 for x in k)
    budget.observe(0, trees[0].prefix(k[0]), [0])
    assert budget.stats() == {"batch_budget": 2, "step_offset_ms": 0.0, "draft_nodes_proposed": 7,
                              "draft_nodes_sent": sum(k) - 2, "budget_steps": 1}
    seen = []
    auto = BatchBudget(4, cost=lambda t: seen.append(t) or 1.0 + t / 100)
    assert auto.widths([1], [trees[0].prefix(3)]) == [3]
    assert sorted(set(seen)) == [0.25, 0.5, 0.75]  # one live row of four: the curve read at the same total tokens
    with pytest.raises(ValueError, match="auto"):
        BatchBudget(2)


def test_measured_steps_shift_the_choice():
    """A step that costs more than the curve says (an additive overhead: attention over long
    caches) makes a draft node relatively cheaper: the budget learns the offset and drafts."""
    from tokenloom.spec.batchbudget import OFFSET_RATE

    budget = BatchBudget(1, cost=lambda w: 1.0 if w <= 1 else 2.5)
    tree = DraftTree(np.arange(2, dtype=np.int64), *chain(2))
    for _ in range(60):
        budget.observe(0, tree, [0, 1])  # row 0 accepts its draft: ~1.9 expected tokens with 2 nodes
    assert budget.widths([0], [tree]) == [1]  # 1 token / 1 s beats 1.9 / 2.5 s
    budget.timed(3.0)  # the root-only step took 3 s where the curve said 1 s
    assert budget.offset == pytest.approx(OFFSET_RATE * 2.0)
    budget.timed(9.0)  # no choice since the last timing: ignored
    assert budget.offset == pytest.approx(OFFSET_RATE * 2.0)
    for _ in range(40):
        budget.widths([0], [tree])
        budget.timed(6.0 if budget._predicted == 1.0 else 7.5)
    assert budget.offset == pytest.approx(5.0, rel=0.05)
    assert budget.widths([0], [tree]) == [2]  # 1 / 6 s loses to 1.9 / 7.5 s
    limited = BatchBudget(1, limit=0)
    limited.widths([0], [tree])
    limited.timed(4.0)  # a fixed budget has no curve: nothing learnt
    assert limited.offset == 0.0


@pytest.mark.parametrize("value", ["auto", None, 0, 5, np.int64(3)])
def test_check_batch_budget_accepts(value):
    assert check_batch_budget(value) == value


@pytest.mark.parametrize("value", ["Auto", -1, 1.5, True, [2]])
def test_check_batch_budget_refuses(value):
    with pytest.raises(ValueError, match="batch_budget"):
        check_batch_budget(value)


def test_draft_tree_prefix():
    probs = np.arange(12, dtype=np.float64).reshape(4, 3)
    tree = DraftTree(np.array([5, 6, 7, 8]), np.array([-1, 0, 0, 1]), np.array([0, 1, 1, 2]), probs, False)
    cut = tree.prefix(2)
    assert cut.tokens.tolist() == [5, 6] and cut.parents.tolist() == [-1, 0] and cut.depths.tolist() == [0, 1]
    assert cut.draft_probs.tolist() == probs[:2].tolist() and cut.replacement is False
    assert tree.prefix(9) is tree and tree.prefix(1).size == 1
    with pytest.raises(ValueError, match="k >= 1"):
        tree.prefix(0)
