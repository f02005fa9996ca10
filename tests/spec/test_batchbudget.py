"""The batch draft budget: the allocation against a brute-force oracle (every allocation of
small cases enumerated), the acceptance counts, the argument check, DraftTree.prefix."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tokenloom.spec.base import DraftTree
from tokenloom.spec.batchbudget import BatchBudget, NodeAcceptance, allocate, check_batch_budget, prior_rate


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


def test_node_acceptance_learns_and_forgets():
    acc = NodeAcceptance(2, max_nodes=4)
    p0 = acc.probabilities([0, 1], 6)
    assert p0.shape == (2, 6) and p0[:, 0].tolist() == [1.0, 1.0]
    assert p0[0, 1:4].tolist() == pytest.approx(prior_rate(4)[1:].tolist())
    for _ in range(30):
        acc.observe(0, 3, [0, 1, 2])  # row 0 accepts nodes 1 and 2 every step
        acc.observe(1, 3, [0])  # row 1 never
    p = acc.probabilities([0, 1], 3)
    assert p[0, 1] > 0.9 and p[1, 1] < 0.4 and p[0, 2] > p[1, 2]
    for _ in range(200):  # row 0 stops sending: its estimate drifts back to the pooled rate
        acc.observe(0, 1, [0])
    assert acc.probabilities([0], 3)[0, 1] < p[0, 1]


def test_batch_budget_steps_and_stats():
    budget = BatchBudget(3, limit=2)
    k = budget.widths([0, 2], [5, 4])
    assert sum(k) - len(k) <= 2 and all(x >= 1 for x in k)
    budget.observe(0, k[0], [0])
    assert budget.stats() == {"batch_budget": 2, "draft_nodes_proposed": 7, "draft_nodes_sent": sum(k) - 2, "budget_steps": 1}
    seen = []
    auto = BatchBudget(4, cost=lambda t: seen.append(t) or 1.0 + t / 100)
    assert auto.widths([1], [3]) == [3]
    assert sorted(set(seen)) == [0.25, 0.5, 0.75]  # one live row of four: the curve read at the same total tokens
    with pytest.raises(ValueError, match="auto"):
        BatchBudget(2)


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
