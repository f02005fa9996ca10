"""The grouped prefill of a batch: the grouping is the least-cost partition (brute-force oracle),
and the stacked cache and logits are those of each row's own prefill."""

import numpy as np
import pytest

from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import cache_kv, stack_rows
from tokenloom.runtime.prefill import batch_prefill, call_tokens, prefill_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cost(groups, lengths, c):
    return sum(c + len(g) * max(lengths[b] for b in g) for g in groups)


def _partitions(items):
    """Every set partition of ``items`` (a list)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1 :]
        yield [[first]] + part


@pytest.mark.parametrize("seed", range(12))
def test_groups_are_the_least_cost_partition(seed):
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 7))
    lengths = rng.integers(1, 120, rows).tolist()
    c = int(rng.choice([0, 5, 32, 100, 1000]))
    groups = prefill_groups(lengths, c)
    assert sorted(b for g in groups for b in g) == list(range(rows))
    assert all(g == sorted(g) for g in groups)
    best = min(_cost(p, lengths, c) for p in _partitions(list(range(rows))))
    assert _cost(groups, lengths, c) == best


def test_groups_extremes_and_errors():
    assert prefill_groups([40, 660, 50, 45], 10**6) == [[0, 1, 2, 3]]
    assert prefill_groups([40, 660, 50, 45], 0) == [[0], [3], [2], [1]]
    assert prefill_groups([7, 7, 7], 0) == [[0, 1, 2]]  # ties: fewer calls
    assert prefill_groups([40, 660, 50, 45], 32) == [[0, 2, 3], [1]]
    for bad in ([], [0, 3], [[1, 2]]):
        with pytest.raises(ValueError):
            prefill_groups(bad, 4)
    with pytest.raises(ValueError):
        prefill_groups([3, 4], -1)
    assert call_tokens("cpu") > 0


def _left_pad(rows):
    import torch

    n = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


@pytest.mark.parametrize("tokens_per_call", [0, 3, 10**6])
def test_batch_prefill_equals_each_rows_own(tiny_llama, tokens_per_call):
    import torch
    from transformers import DynamicCache

    rng = np.random.default_rng(tokens_per_call)
    rows = [rng.integers(3, 49152, m).tolist() for m in (5, 9, 2, 9, 6)]
    ids, mask = _left_pad(rows)
    n = ids.shape[1]
    keep = [1, 3, 2, 1, 4]
    with torch.inference_mode():
        cache, logits = batch_prefill(tiny_llama, ids, mask, keep, tokens_per_call)
        kv = cache_kv(cache)
        for b, r in enumerate(rows):
            own = DynamicCache()
            ref = tiny_llama(input_ids=torch.tensor([r]), **cache_arg(tiny_llama, own)).logits[0].float()
            torch.testing.assert_close(logits[b], ref[-keep[b] :], atol=1e-4, rtol=1e-4)
            assert logits[b].shape == (keep[b], ref.shape[-1])
            for (k, v), (rk, rv) in zip(kv, cache_kv(own)):
                assert k.shape[2] == n
                torch.testing.assert_close(k[b : b + 1, :, n - len(r) :], rk, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(v[b : b + 1, :, n - len(r) :], rv, atol=1e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="keep"):
            batch_prefill(tiny_llama, ids, mask, [1, 1, 3, 1, 1], tokens_per_call)  # row 2 holds 2


def test_stack_rows_places_groups_and_refuses_bad_rows():
    import torch

    class Cache:  # the pre-4.56 layout: key_cache / value_cache lists of [B, H, S, D]
        def __init__(self, k):
            self.key_cache, self.value_cache = [k], [k + 100]

    a = Cache(torch.ones(2, 1, 3, 2))
    b = Cache(torch.full((1, 1, 5, 2), 7.0))
    out = stack_rows([a, b], [[0, 2], [1]], 5)
    (k, v), = cache_kv(out)
    assert k.shape == (3, 1, 5, 2)
    assert torch.equal(k[0, 0, :2], torch.zeros(2, 2)) and torch.equal(k[0, 0, 2:], torch.ones(3, 2))
    assert torch.equal(k[1], torch.full((1, 5, 2), 7.0)) and torch.equal(v[2, 0, 2:], torch.full((3, 2), 101.0))
    whole = Cache(torch.ones(2, 1, 3, 2))
    keys = whole.key_cache[0]
    assert stack_rows([whole], [[0, 1]], 3) is whole and whole.key_cache[0] is keys  # already the layout: no copy
    (k1, _), = cache_kv(stack_rows([Cache(torch.ones(2, 1, 3, 2))], [[0, 1]], 4))  # narrower: padded
    assert k1.shape == (2, 1, 4, 2) and torch.equal(k1[:, :, 0], torch.zeros(2, 1, 2))
    for groups, width in (([[0, 2], [2]], 5), ([[0], [1, 2]], 5), ([[0, 2], [1]], 4), ([[0], [1], [2]], 5)):
        with pytest.raises(ValueError):
            stack_rows([Cache(torch.ones(2, 1, 3, 2)), Cache(torch.ones(1, 1, 5, 2))], groups, width)
