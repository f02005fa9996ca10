"""Hardware-aware tree sizing: cost curve fitting, acceptance estimates, template choice,
calibration caching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom.spec.templates import NESTED_SIZES, template_paths
from tokenloom.spec.sizing import (
    AcceptanceStats,
    StepCost,
    calibrate_step_cost,
    choose_template,
    clear_step_cost_cache,
    monotone,
    order_by_probability,
)

PATHS = template_paths("2.2.2")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12))
def test_monotone_is_isotonic(values):
    fit = monotone(values)
    assert len(fit) == len(values)
    assert all(a <= b + 1e-12 for a, b in zip(fit, fit[1:]))
    assert sum(fit) == pytest.approx(sum(values))
    if all(a <= b for a, b in zip(values, values[1:])):
        assert fit == pytest.approx(values)
    # No non-decreasing sequence on a coarse grid fits better (least squares).
    err = sum((f - v) ** 2 for f, v in zip(fit, values))
    rng = np.random.default_rng(len(values))
    for _ in range(50):
        cand = np.sort(rng.uniform(0, 10, len(values)))
        assert err <= float(((cand - np.array(values)) ** 2).sum()) + 1e-9


def test_acceptance_stats_recover_rates():
    rng = np.random.default_rng(0)
    k, truth = 4, np.array([[0.5, 0.2, 0.1, 0.05], [0.6, 0.1, 0.05, 0.0], [0.7, 0.1, 0.0, 0.0]])
    stats = AcceptanceStats(k=k, decay=1.0, prior_weight=1.0)
    for _ in range(6000):
        ranks = []
        for d in range(3):
            r = rng.choice(k + 1, p=np.append(truth[d], 1 - truth[d].sum()))
            ranks.append(int(r) if r < k else -1)
            if r == k:
                break
        stats.observe(ranks)
    est = stats.rates()[:3]
    np.testing.assert_allclose(est, truth, atol=0.03)
    p = stats.path_probabilities([[0], [0, 0], [1, 0, 0], [0, 3]])
    c = stats.rates()
    np.testing.assert_allclose(p, [c[0, 0], c[0, 0] * c[1, 0], c[0, 1] * c[1, 0] * c[2, 0], c[0, 0] * c[1, 3]])
    assert len(stats.depth_acceptance()) >= 3


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=8, max_size=8), st.integers(0, 40))
def test_probability_order_prefixes_are_closed(rates, obs):
    stats = AcceptanceStats(k=8)
    for i in range(obs):
        stats.observe([int(np.argmax(rates)) if i % 3 else -1])
    ordered = order_by_probability(PATHS, stats.path_probabilities(PATHS))
    seen = set()
    for p in ordered:
        assert len(p) == 1 or tuple(p[:-1]) in seen
        seen.add(tuple(p))


def _typical_stats():
    stats = AcceptanceStats(k=8, decay=1.0)
    rng = np.random.default_rng(1)
    for _ in range(500):
        ranks = []
        for d in range(6):
            r = int(rng.choice(9, p=[0.45, 0.1, 0.05, 0.03, 0.02, 0.02, 0.01, 0.01, 0.31]))
            ranks.append(r if r < 8 else -1)
            if r != 0:
                break
        stats.observe(ranks)
    return stats


def test_choice_follows_the_cost_curve():
    stats = _typical_stats()
    cpu = StepCost((1, 17, 33, 81), (0.041, 0.063, 0.091, 0.169))  # this machine
    gpu = StepCost((1, 81), (0.020, 0.021))  # a big accelerator: 81 tokens almost free
    small, info_cpu = choose_template(PATHS, stats, cpu, NESTED_SIZES)
    big, info_gpu = choose_template(PATHS, stats, gpu, NESTED_SIZES)
    assert len(small) <= 16 < len(big) == 80
    assert info_cpu["tokens_per_second"] > 1.0 / 0.041  # beats plain decoding
    assert info_gpu["expected_tokens"] > info_cpu["expected_tokens"]
    # the choice is the argmax over the nested sizes
    probs = np.sort(stats.path_probabilities(PATHS))[::-1]
    rates = [(1 + probs[:n].sum()) / cpu(n + 1) for n in NESTED_SIZES]
    assert len(small) == NESTED_SIZES[int(np.argmax(rates))]


def test_calibration_is_cached(tiny_llama, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TOKENLOOM_CACHE_DIR", str(tmp_path))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clear_step_cost_cache()
        # injected clock and load average: the rules, not this machine's timings, are tested
        def timer(kernel, t, run):
            run()
            return 0.001 * (10 + t)

        cost = calibrate_step_cost(tiny_llama, tokens=(1, 5, 17), past_len=16, repeats=1, force=True,
                                   timer=timer, loadavg=lambda: 0.0)
        assert cost.tokens == (1, 5, 17) and all(s > 0 for s in cost.seconds)
        assert list(cost.seconds) == sorted(cost.seconds)
        files = list((tmp_path / "state").glob("*-stepcost.bin"))
        assert len(files) == 1 and cost.key in files[0].name
        clear_step_cost_cache()
        again = calibrate_step_cost(tiny_llama, tokens=(1, 5, 17), timer=timer)  # read back from disk (probe agrees)
        assert again == cost
        assert calibrate_step_cost(tiny_llama, tokens=(1, 17)) is again  # in-process cache (covers the sizes asked)
        assert cost(3) == pytest.approx((cost.seconds[0] + cost.seconds[1]) / 2)
    finally:
        clear_step_cost_cache()
        torch.set_num_threads(old)


def test_no_draft_when_trees_never_pay(tiny_llama, monkeypatch):
    """With a cost curve where any tree costs far more than a plain step, auto sizing chooses
    no draft, and the output is still HF greedy's."""
    import torch

    import tokenloom
    import tokenloom.spec.recycling.drafter as loop
    import tokenloom.spec.recycling.method as method
    from tokenloom.spec.recycling.recycler import TokenRecycler

    steep = StepCost((1, 2, 81), (0.01, 1.0, 2.0))
    stats = _typical_stats()
    paths, info = choose_template(PATHS, stats, steep, loop.AUTO_SIZES)
    assert paths == [] and info["n"] == 0 and info["expected_tokens"] == 1.0
    monkeypatch.setattr(method, "calibrate_step_cost", lambda model, k=8: steep)
    ids = torch.randint(3, 49152, (1, 10), generator=torch.Generator().manual_seed(3))
    rec = TokenRecycler(49152)
    out = tokenloom.generate(tiny_llama, ids, method="recycling", recycler=rec, max_new_tokens=20, eos_token_id=[])
    hf = tiny_llama.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                             eos_token_id=None, pad_token_id=0)
    assert out.sequences.tolist() == hf.tolist()
    assert out.stats.extra["tree_sizes"] == {0: out.stats.steps - 1}
    assert rec.adjacency()[out.sequences[0, -3:]].any(), "rows are still learned"


def test_sizing_memory_hands_statistics_to_the_next_request(tiny_llama):
    """tree="auto": a request's drafter starts from what the last request on the same recycler
    published; each request owns a copy (no live object is shared)."""
    import torch

    import tokenloom
    from tokenloom.spec.recycling.method import SIZING_MEMORY
    from tokenloom.spec.recycling.recycler import TokenRecycler
    from tokenloom.spec.sizing import AcceptanceStats, StatsMemory

    rec = TokenRecycler(49152)
    assert SIZING_MEMORY.load(rec, rec.k).observations == 0
    ids = torch.randint(3, 49152, (1, 10), generator=torch.Generator().manual_seed(5))
    tokenloom.generate(tiny_llama, ids, method="recycling", recycler=rec, max_new_tokens=40, eos_token_id=[],
                       resize_every=2)
    first = SIZING_MEMORY.load(rec, rec.k)
    assert first.observations > 0
    first.observe([0, 0])  # a copy: the memory does not change
    assert SIZING_MEMORY.load(rec, rec.k).observations == first.observations - 1
    other = TokenRecycler(49152)
    assert SIZING_MEMORY.load(other, other.k).observations == 0, "per recycler"
    mem = StatsMemory()
    s = AcceptanceStats(k=8)
    s.observe([1])
    mem.save(rec, s)
    assert mem.load(rec, 4).observations == 0, "statistics of another k are not reused"
    assert np.array_equal(mem.load(rec, 8).counts, s.counts)
