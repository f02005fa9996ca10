"""Grouped-query attention without repeat_kv: the same outputs as transformers' sdpa function, and
the override is installed and removed exactly."""

import pytest

from tokenloom.runtime.gqa import grouped_attention, grouped_sdpa


class Attn:
    def __init__(self, groups, training=False):
        self.num_key_value_groups = groups
        self.training = training
        self.is_causal = True


def _inputs(b, h, kv, t, s, d=8, mask="float", mask_rows=None, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g)
    k = torch.randn(b, kv, s, d, generator=g)
    v = torch.randn(b, kv, s, d, generator=g)
    keep = torch.rand(mask_rows or b, 1, t, s, generator=g) > 0.4
    keep[..., -1] = True  # every query sees at least one slot
    if mask == "bool":
        m = keep
    else:
        m = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    return q, k, v, m


@pytest.mark.parametrize("b,h,kv,t,s,mask,rows", [
    (2, 6, 2, 5, 11, "float", None),
    (3, 9, 3, 1, 7, "float", None),
    (2, 4, 2, 3, 9, "bool", None),
    (2, 4, 1, 4, 6, "float", 1),   # a mask shared by the rows
    (1, 4, 4, 3, 5, "float", None),  # no grouping: transformers' own path
])
def test_grouped_equals_transformers_sdpa(b, h, kv, t, s, mask, rows):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, m = _inputs(b, h, kv, t, s, mask=mask, mask_rows=rows)
    module = Attn(h // kv)
    got, none = grouped_sdpa(module, q, k, v, m, scaling=0.3)
    ref, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.3)
    assert none is None and got.shape == (b, t, h, q.shape[-1])
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    if h == kv:
        return
    # a longer mask is cut to the keys
    wide = torch.cat([m, m[..., :2]], dim=-1)
    torch.testing.assert_close(grouped_sdpa(module, q, k, v, wide, scaling=0.3)[0], ref, atol=1e-5, rtol=1e-5)


def test_unhandled_calls_go_to_transformers():
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v, m = _inputs(2, 6, 2, 4, 9)
    module = Attn(3)
    for mask in (None, m.expand(2, 6, 4, 9).contiguous()):  # no mask; a mask per head
        got, _ = grouped_sdpa(module, q, k, v, mask)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)


def test_override_installed_and_removed():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    before = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with grouped_attention():
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is grouped_sdpa
        with grouped_attention():
            assert ALL_ATTENTION_FUNCTIONS["sdpa"] is grouped_sdpa
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is grouped_sdpa
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before
    with pytest.raises(RuntimeError):
        with grouped_attention():
            raise RuntimeError("boom")
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is before


def test_a_callers_own_override_is_kept_and_called():
    import torch

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    calls = []

    def mine(module, query, key, value, attention_mask, **kw):
        calls.append(query.shape)
        return torch.zeros(query.shape[0], query.shape[2], query.shape[1], query.shape[3]), None

    ALL_ATTENTION_FUNCTIONS["sdpa"] = mine
    try:
        with grouped_attention():
            q, k, v, _ = _inputs(1, 4, 2, 2, 5)
            grouped_sdpa(Attn(2), q, k, v, None)  # not handled: the caller's function runs
            assert len(calls) == 1
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is mine
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]


def test_model_logits_unchanged(tiny_llama):
    """A masked forward of the tiny Llama (4 query heads on 2 key/value heads) gives the same
    logits inside and outside the block."""
    import torch

    ids = torch.tensor([[5, 9, 300, 4000, 7, 8]])
    mask = torch.zeros(1, 1, 6, 6).masked_fill(torch.ones(6, 6).triu(1).bool(), torch.finfo(torch.float32).min)
    mask[..., 3, 1] = torch.finfo(torch.float32).min  # not causal-only: a tree-like mask
    with torch.inference_mode():
        ref = tiny_llama(input_ids=ids, attention_mask=mask).logits
        with grouped_attention():
            got = tiny_llama(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_one_forward_repeats_each_mask_once():
    """Within one forward the grouped mask is made once per mask tensor and slice; a different
    mask, a different slice or a call outside the block gets its own copy, with the same output."""
    import torch

    from tokenloom.runtime import gqa

    q, k, v, m = _inputs(1, 6, 2, 5, 9, seed=3)
    q2, _, _, m2 = _inputs(1, 6, 2, 5, 9, seed=4)
    module = Attn(3)
    ref = grouped_sdpa(module, q, k, v, m)[0]
    ref2 = grouped_sdpa(module, q2, k, v, m2)[0]
    made = []
    real = gqa._grouped_mask

    def counting(source, mask, groups):
        before = dict(gqa._STEP.made or {})
        out = real(source, mask, groups)
        made.append(all(out is not v for v in before.values()))
        return out

    gqa._grouped_mask = counting
    try:
        with gqa.one_forward():
            for _ in range(3):  # the layers of one forward
                assert torch.equal(grouped_sdpa(module, q, k, v, m)[0], ref)
            assert torch.equal(grouped_sdpa(module, q2, k, v, m2)[0], ref2)  # another mask
            short = grouped_sdpa(module, q, k[:, :, :7], v[:, :, :7], m)[0]  # another slice
            with gqa.one_forward():  # nested: the same scope
                assert torch.equal(grouped_sdpa(module, q, k[:, :, :7], v[:, :, :7], m)[0], short)
        assert gqa._STEP.source is None and gqa._STEP.made is None  # dropped on exit
        assert torch.equal(grouped_sdpa(module, q, k, v, m)[0], ref)  # outside: no reuse
        assert torch.equal(grouped_sdpa(module, q, k, v, m)[0], ref)
    finally:
        gqa._grouped_mask = real
    assert made == [True, False, False, True, True, False, True, True]


def _tree_rows_vs_steps(model, parents, tokens, past):
    """Each node's tree-step logits and the logits of its own one-token steps (its ancestors
    fed one by one after the same prefix)."""
    import numpy as np
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.compat import cache_arg
    from tokenloom.runtime.kvcache import crop_cache
    from tokenloom.runtime.treeattn import tree_forward

    cache = DynamicCache()
    model(input_ids=past, use_cache=True, **cache_arg(model, cache))
    p = int(past.shape[1])
    tree = tree_forward(model, cache, tokens, parents, past_len=p).clone()
    crop_cache(cache, p)
    steps = []
    for i in range(len(parents)):
        path = [i]
        while parents[path[-1]] >= 0:
            path.append(int(parents[path[-1]]))
        for j, node in enumerate(reversed(path)):
            last = tree_forward(model, cache, tokens[node : node + 1], np.array([-1]), past_len=p + j)[0]
        steps.append(last)
        crop_cache(cache, p)
    return tree, steps


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_exact_rows_tree_logits_equal_the_one_token_steps_bit_for_bit(dtype):
    """Under exact_rows (and row-invariant linears: tiles), every node of random branching trees
    gets exactly the logits of its own one-token greedy steps; each multi-token step runs the
    per-token attention (counted), and a prompt's prefill does not."""
    import numpy as np
    import torch

    from tokenloom.integrations.hf.models import make_tiny_llama
    from tokenloom.runtime import gqa
    from tokenloom.runtime.cpupack import packed_linears, row_invariant_pack

    model = make_tiny_llama(vocab_size=256, layers=2, seed=1).to(getattr(torch, dtype))
    rng = np.random.default_rng(7)
    calls = []
    real = gqa._exact_rows_attention

    def counting(*a, **k):
        calls.append(a[1].shape[2])
        return real(*a, **k)

    gqa._exact_rows_attention = counting
    try:
        with torch.inference_mode(), packed_linears(model, row_invariant_pack(model)), gqa.exact_rows():
            assert gqa.exact_rows_active()
            for trial in range(4):
                t = int(rng.integers(2, 12))
                parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, t)])
                tokens = torch.as_tensor(rng.integers(0, 256, t))
                past = torch.as_tensor(rng.integers(0, 256, (1, 9 + trial)))
                tree, steps = _tree_rows_vs_steps(model, parents, tokens, past)
                for i, s in enumerate(steps):
                    assert torch.equal(tree[i], s), (dtype, trial, i)
    finally:
        gqa._exact_rows_attention = real
    assert not gqa.exact_rows_active()
    # one call per layer of every multi-token tree step, none for the prefills / one-token steps
    assert calls and all(c > 1 for c in calls) and len(calls) % 2 == 0


def test_exact_rows_plan_reads_see_and_hide_only():
    """The per-row plan: a prefix of slots is a slice, other sets are gathered in order; a mask
    with other values (a bias) or a row that sees nothing keeps the batched attention."""
    import torch

    from tokenloom.runtime.gqa import _row_plan

    lo = torch.finfo(torch.float32).min
    m = torch.tensor([[0.0, 0.0, lo, lo], [0.0, lo, 0.0, lo], [0.0, 0.0, 0.0, 0.0]]).view(1, 1, 3, 4)
    plan = _row_plan(m, 4)
    assert plan[0][0] == 2 and plan[0][2] == 4 and plan[0][1].tolist() == [0, 2]
    assert _row_plan(m, 3)[0][2] == 3  # cut to the keys
    assert _row_plan(m == 0, 4)[0][1].tolist() == [0, 2]  # a bool mask (True: see)
    assert _row_plan(m + 0.5 * (m == 0), 4) is None  # a bias: not see / hide
    assert _row_plan(torch.full((1, 1, 1, 4), lo), 4) is None  # sees nothing
