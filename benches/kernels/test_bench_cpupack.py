"""Packed oneDNN CPU linears (tokenloom.cpupack) vs PyTorch's default nn.Linear: one tree step
(forward + argmax + top-8) of the embedded model for T = 1, 9, 17 and 33 tree tokens after a
128-token prefix, both in one run, so "packed / default" per T is the ratio to read. Each runs
through transformers' module forward and through tokenloom's lean step forward
(tokenloom.runtime.leanforward, bit-equal logits: tests/runtime/test_leanforward.py), so
"lean / module" per T is the other ratio.

    python -m pytest benches/kernels/test_bench_cpupack.py --benchmark-group-by=group
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def smollm():
    from tokenloom.integrations.hf.models import load_default

    return load_default()


@pytest.mark.model
@pytest.mark.parametrize("forward", ["module", "lean"])
@pytest.mark.parametrize("packed", [False, True], ids=["default", "packed"])
@pytest.mark.parametrize("t", [1, 9, 17, 33])
def test_tree_step(benchmark, smollm, t, packed, forward):
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.compat import cache_arg
    from tokenloom.runtime.cpupack import pack_available, packed_linears
    from tokenloom.runtime.kvcache import compact_cache
    from tokenloom.runtime.leanforward import lean_enabled, set_lean_forward
    from tokenloom.runtime.treeattn import tree_forward

    if packed and not pack_available():
        pytest.skip("no oneDNN packed linear in this torch build")
    model, _ = smollm
    benchmark.group = f"tree step, T={t} tokens after 128 cached"
    gen = torch.Generator().manual_seed(t)
    prefix = torch.randint(0, 40000, (1, 128), generator=gen)
    toks = torch.randint(0, 40000, (t,), generator=gen)
    parents = np.arange(-1, t - 1, dtype=np.int64)
    was = lean_enabled()
    set_lean_forward(forward == "lean")
    try:
        with torch.inference_mode(), packed_linears(model, packed):
            cache = DynamicCache()
            model(input_ids=prefix, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))

            def step():
                logits = tree_forward(model, cache, toks, parents, past_len=128)
                logits.argmax(-1)
                logits.topk(8, dim=-1)
                compact_cache(cache, 128, [])

            benchmark.pedantic(step, rounds=8, iterations=1, warmup_rounds=2)
    finally:
        set_lean_forward(was)
