"""ByteLM's KV slots on the shared runtime: slot_attention_mask against a reference, keep_slots /
crop_cache against index_select, the per-token KV size, and a KVSlots forward of tree rows (in
any slot order, ancestors in the same forward) against plain causal forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenloom.bytelevel.slots import KVSlots
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import cache_kv, cache_length, cache_nbytes, crop_cache, keep_slots, kv_bytes_per_token
from tokenloom.runtime.treeattn import prefix_tree_mask, slot_attention_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_slot_attention_mask_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(20):
        prefix, past, q = int(rng.integers(0, 4)), 0, int(rng.integers(1, 6))
        past = prefix + int(rng.integers(0, 6))
        visible = [sorted(set(rng.integers(prefix, past + j, size=3).tolist())) if past + j > prefix else [] for j in range(q)]
        got = slot_attention_mask(prefix, past, visible)
        want = torch.full((q, past + q), torch.finfo(torch.float32).min)
        for j in range(q):
            want[j, :prefix] = 0
            want[j, visible[j]] = 0
            want[j, past + j] = 0
        assert got.shape == (1, 1, q, past + q) and torch.equal(got[0, 0], want)
        if all(c < past for v in visible for c in v):
            assert torch.equal(prefix_tree_mask(prefix, past, visible), got)
    with pytest.raises(ValueError, match="slots must lie"):
        slot_attention_mask(1, 3, [[], [4]])  # row 1 may see slot 3 (row 0), not 4 (itself is 4)
    with pytest.raises(ValueError, match="positions must lie"):
        prefix_tree_mask(1, 3, [[], [3]])  # the stricter check of prefix_tree_mask stays
    with pytest.raises(ValueError, match="prefix_len"):
        slot_attention_mask(4, 3, [[]])


def _filled_cache(model, n=7):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(torch.arange(5, 5 + n).view(1, -1), **cache_arg(model, cache), use_cache=True)
    return cache


def test_keep_slots_and_crop(tiny_llama):
    cache = _filled_cache(tiny_llama)
    before = [(k.clone(), v.clone()) for k, v in cache_kv(cache)]
    assert cache_nbytes(cache) == 7 * kv_bytes_per_token(tiny_llama) > 0
    keep = [0, 1, 3, 6]
    keep_slots(cache, keep)
    assert cache_length(cache) == 4
    idx = torch.tensor(keep)
    for (k, v), (k0, v0) in zip(cache_kv(cache), before):
        assert torch.equal(k, k0.index_select(2, idx)) and torch.equal(v, v0.index_select(2, idx))
    crop_cache(cache, 2)
    assert cache_length(cache) == 2
    with pytest.raises(ValueError):
        keep_slots(cache, [1, 0])
    with pytest.raises(ValueError):
        crop_cache(cache, 3)


def test_kvslots_tree_rows_match_plain_forwards(tiny_llama):
    """Context [1], then two forwards of a token tree fed out of order: each row's logits equal a
    plain forward of its path."""
    kv = KVSlots(tiny_llama, pack=False)
    ctx = [1]
    kv.forward_context(ctx)
    # forward 1: path A = [10, 11] (row 1 sees row 0 = slot 1), path B = [20]
    l1 = kv.forward([10, 20, 11], [1, 1, 2], [[], [], [1]], prefix_len=1)
    # forward 2: A + [12] (sees slots 1, 3), B + [21] (sees slot 2), C = [30] + [31] (row-to-row)
    l2 = kv.forward([12, 21, 30, 31], [3, 2, 1, 2], [[1, 3], [2], [], [6]], prefix_len=1)
    assert kv.n == 8 and cache_length(kv.cache) == 8 and kv.bytes_per_slot == kv_bytes_per_token(tiny_llama)

    def plain(path):
        with torch.no_grad():
            return tiny_llama(torch.tensor([ctx + path])).logits[0, -1].float()

    rows = [(l1[0], [10]), (l1[1], [20]), (l1[2], [10, 11]), (l2[0], [10, 11, 12]), (l2[1], [20, 21]), (l2[2], [30]), (l2[3], [30, 31])]
    for got, path in rows:
        assert torch.allclose(got, plain(path), atol=1e-4), path
    kv.keep([0, 1, 3, 4])  # context, A's slots, A+12
    l3 = kv.forward([13], [4], [[1, 2, 3]], prefix_len=1)
    assert torch.allclose(l3[0], plain([10, 11, 12, 13]), atol=1e-4)
