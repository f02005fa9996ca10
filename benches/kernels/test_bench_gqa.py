"""Masked grouped-query attention at the embedded model's shapes (9 query heads on 3 key/value
heads, head size 64, 30 layers): transformers' ``sdpa`` function (``repeat_kv`` then SDPA, its
path whenever a mask is given) against tokenloom's :func:`~tokenloom.runtime.gqa.grouped_sdpa`
(keys and values read once), for a batch of B rows with S cached slots and trees of T nodes.
"grouped / transformers" per group is the ratio to read.

    python -m pytest benches/kernels/test_bench_gqa.py --benchmark-group-by=group
"""

from __future__ import annotations

import pytest

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 9, 3, 64, 30


class _Attn:
    num_key_value_groups = HEADS // KV_HEADS
    training = False
    is_causal = True


@pytest.mark.parametrize("impl", ["transformers", "grouped"])
@pytest.mark.parametrize("rows,slots,t", [(1, 200, 17), (8, 700, 2), (8, 700, 5)])
def test_masked_attention(benchmark, impl, rows, slots, t):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from tokenloom.runtime.gqa import grouped_sdpa

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(rows, HEADS, t, HEAD_DIM, generator=gen)
    k = torch.randn(rows, KV_HEADS, slots + t, HEAD_DIM, generator=gen)
    v = torch.randn(rows, KV_HEADS, slots + t, HEAD_DIM, generator=gen)
    mask = torch.zeros(rows, 1, t, slots + t)
    mask[..., : slots // 10] = torch.finfo(torch.float32).min  # some left padding
    fn = grouped_sdpa if impl == "grouped" else sdpa_attention_forward
    module = _Attn()
    benchmark.group = f"masked attention x {LAYERS} layers, B={rows} S={slots} T={t}"
    torch.testing.assert_close(grouped_sdpa(module, q, k, v, mask)[0], sdpa_attention_forward(module, q, k, v, mask)[0],
                               atol=1e-5, rtol=1e-5)

    def layers():
        for _ in range(LAYERS):
            fn(module, q, k, v, mask)

    with torch.inference_mode():
        benchmark.pedantic(layers, rounds=8, iterations=1, warmup_rounds=1)
