"""tokenloom.treeattn: tree mask vs brute-force ancestors, tree forward == plain forward over
each node's root path, cache compaction (both cache layouts), position ids."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import cache_kv, cache_length, compact_cache
from tokenloom.runtime.treeattn import (
    ancestor_matrix,
    tree_attention_mask,
    tree_forward,
    tree_position_ids,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@st.composite
def parent_arrays(draw, max_nodes=30):
    n = draw(st.integers(1, max_nodes))
    return [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]


def brute_ancestors(parents, i):
    out = set()
    while i != -1:
        out.add(i)
        i = parents[i]
    return out


@settings(max_examples=150, deadline=None)
@given(parent_arrays(), st.integers(0, 5))
def test_mask_matches_brute_force(parents, past):
    import torch

    mask = tree_attention_mask(parents, past, torch.float32)
    t = len(parents)
    assert mask.shape == (1, 1, t, past + t)
    lo = torch.finfo(torch.float32).min
    for i in range(t):
        anc = brute_ancestors(parents, i)
        assert (mask[0, 0, i, :past] == 0).all()
        for j in range(t):
            assert mask[0, 0, i, past + j].item() == (0.0 if j in anc else lo)
    assert ancestor_matrix(parents).sum() == sum(len(brute_ancestors(parents, i)) for i in range(t))


def test_position_ids_and_bad_parents():
    import torch

    assert tree_position_ids([0, 1, 1, 2], 7).tolist() == [[7, 8, 8, 9]]
    assert tree_position_ids(torch.tensor([0, 1]), 0).dtype == torch.long
    for bad, match in [([], "non-empty"), ([0, 0], r"parents\[0\] must be -1"), ([-1, 1], "topologically")]:
        with pytest.raises(ValueError, match=match):
            tree_attention_mask(bad, 0)
    with pytest.raises(ValueError, match="past_len"):
        tree_attention_mask([-1], -1)
    mask = tree_attention_mask([-1, 0], 2, torch.float16)
    assert mask.dtype == torch.float16 and mask[0, 0, 0, 3].item() == torch.finfo(torch.float16).min


def _plain_logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 6, 0]


def test_tree_forward_equals_plain_forward_per_path(tiny_llama):
    import torch
    from transformers import DynamicCache

    rng = np.random.default_rng(1)
    prefix = rng.integers(3, 49152, 11).tolist()
    tokens = rng.integers(3, 49152, len(PARENTS)).tolist()
    with torch.inference_mode():
        cache = DynamicCache()
        tiny_llama(input_ids=torch.tensor([prefix]), **cache_arg(tiny_llama, cache))
        logits = tree_forward(tiny_llama, cache, tokens, PARENTS)
    assert logits.shape == (len(PARENTS), 49152)
    assert cache_length(cache) == len(prefix) + len(PARENTS)
    for i in range(len(PARENTS)):
        path = sorted(brute_ancestors(PARENTS, i))
        ref = _plain_logits(tiny_llama, prefix + [tokens[j] for j in path])[-1]
        torch.testing.assert_close(logits[i], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_root_only_tree_is_the_models_own_step(tiny_llama, dtype):
    """A root-only tree runs without a mask: bit for bit the logits and cache entry of the
    model's one-token step (what plain decoding and HF's generate run)."""
    import copy

    import torch
    from transformers import DynamicCache

    model = copy.deepcopy(tiny_llama).to(getattr(torch, dtype))
    prefix = torch.tensor([np.random.default_rng(2).integers(3, 49152, 13).tolist()])
    with torch.inference_mode():
        a, b = DynamicCache(), DynamicCache()
        for c in (a, b):
            model(input_ids=prefix, **cache_arg(model, c))
        got = tree_forward(model, a, [77], [-1], past_len=13)
        want = model(input_ids=torch.tensor([[77]]), **cache_arg(model, b)).logits[0].float()
    assert torch.equal(got, want)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(cache_kv(a), cache_kv(b)))


@pytest.mark.parametrize("keep", [[0], [0, 1], [0, 1, 3, 6, 8], [0, 9], [0, 2, 5]])
def test_compact_cache_equals_plain_cache(tiny_llama, keep):
    """After compaction the cache holds exactly what a plain forward over prefix + path holds,
    and the next forward gives the same logits."""
    import torch
    from transformers import DynamicCache

    rng = np.random.default_rng(2)
    prefix = rng.integers(3, 49152, 6).tolist()
    tokens = rng.integers(3, 49152, len(PARENTS)).tolist()
    assert all(PARENTS[b] == a for a, b in zip(keep, keep[1:])), "keep is a root path"
    with torch.inference_mode():
        cache = DynamicCache()
        tiny_llama(input_ids=torch.tensor([prefix]), **cache_arg(tiny_llama, cache))
        tree_forward(tiny_llama, cache, tokens, PARENTS)
        compact_cache(cache, len(prefix), keep)
        seq = prefix + [tokens[j] for j in keep]
        assert cache_length(cache) == len(seq)
        ref = DynamicCache()
        tiny_llama(input_ids=torch.tensor([seq]), **cache_arg(tiny_llama, ref))
        for (k, v), (rk, rv) in zip(cache_kv(cache), cache_kv(ref)):
            torch.testing.assert_close(k, rk, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v, rv, atol=1e-4, rtol=1e-4)
        nxt = tiny_llama(input_ids=torch.tensor([[5]]), **cache_arg(tiny_llama, cache)).logits[0, -1]
    torch.testing.assert_close(nxt, _plain_logits(tiny_llama, seq + [5])[-1], atol=1e-4, rtol=1e-4)


class OldStyleCache:
    """The pre-4.56 DynamicCache layout: key_cache / value_cache lists of [B, H, S, D]."""

    def __init__(self, keys, values):
        self.key_cache = list(keys)
        self.value_cache = list(values)


def test_compact_cache_old_layout_and_errors():
    import torch

    k = torch.arange(2 * 1 * 2 * 7 * 3, dtype=torch.float32).view(2, 1, 2, 7, 3)
    cache = OldStyleCache([k[0].clone(), k[1].clone()], [k[0].clone() + 1, k[1].clone() + 1])
    assert cache_length(cache) == 7
    compact_cache(cache, 3, [0, 2, 3])  # keep positions 0,1,2 then 3,5,6
    assert cache_length(cache) == 6
    for layer in range(2):
        want = k[layer][:, :, [0, 1, 2, 3, 5, 6]]
        assert torch.equal(cache.key_cache[layer], want)
        assert torch.equal(cache.value_cache[layer], want + 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        compact_cache(cache, 3, [1, 0])
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        compact_cache(cache, 3, [0, 3])
    with pytest.raises(ValueError, match="past_len"):
        compact_cache(cache, 9, [0])
    with pytest.raises(TypeError, match="unsupported cache"):
        compact_cache(object(), 0, [0])


def test_tree_forward_bad_shapes(tiny_llama):
    import torch
    from transformers import DynamicCache

    with torch.inference_mode():
        cache = DynamicCache()
        tiny_llama(input_ids=torch.tensor([[5, 6]]), **cache_arg(tiny_llama, cache))
        with pytest.raises(ValueError, match=r"tokens: expected shape \[3\]"):
            tree_forward(tiny_llama, cache, [1, 2], [-1, 0, 0])
        with pytest.raises(ValueError, match=r"depths: expected shape \[2\]"):
            tree_forward(tiny_llama, cache, [1, 2], [-1, 0], [0, 1, 1])
