"""Token Recycling kernels: per-step draft + update in Rust vs a NumPy and a torch per-depth
reference of the same logic (the reference implementation gathers per depth in torch), and the
whole kernel overhead of a step (draft + update + greedy verify, no forward) next to one model
tree step of the embedded model, so their ratio comes from one run."""

from __future__ import annotations

import numpy as np
import pytest

import tokenloom
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.templates import compile_template, template_parents, template_paths

VOCAB, K = 49152, 8


def _levels(template):
    """Per depth: (parent node indices, ranks) of the canonical template."""
    paths = template_paths(template)
    parents = template_parents(template)
    depth = np.array([0] + [len(p) for p in paths])
    ranks = np.array([0] + [p[-1] for p in paths])
    return [(parents[depth == d], ranks[depth == d]) for d in range(1, depth.max() + 1)]


def numpy_draft_update(adj, levels, root, tokens_prev, topk_prev):
    adj[tokens_prev] = topk_prev  # numpy fancy assignment: the last duplicate wins
    tokens = [np.array([root])]
    flat = np.array([root])
    for par, rk in levels:
        nxt = adj[flat[par], rk]
        flat = np.concatenate([flat, nxt])
    return flat


def torch_draft_update(adj, levels, root, tokens_prev, topk_prev):
    import torch

    adj[tokens_prev] = topk_prev
    flat = torch.tensor([root])
    for par, rk in levels:
        flat = torch.cat([flat, adj[flat[par], rk]])
    return flat


@pytest.fixture(scope="module")
def state():
    rng = np.random.default_rng(0)
    adj = rng.integers(0, VOCAB, (VOCAB, K)).astype(np.int64)
    return adj, rng


@pytest.mark.parametrize("template", ["2.2.2-16", "2.2.2"])
@pytest.mark.parametrize("impl", ["rust", "numpy", "torch"])
def test_draft_update(benchmark, state, template, impl):
    import torch

    adj, rng = state
    rec = TokenRecycler(VOCAB, K)
    compiled = compile_template(template)
    rec.update(np.arange(VOCAB), adj)
    t = len(template_paths(template)) + 1
    tokens = rng.integers(0, VOCAB, t).astype(np.int64)
    topk = rng.integers(0, VOCAB, (t, K)).astype(np.int64)
    benchmark.group = f"recycling draft+update {template} (T={t})"
    if impl == "rust":
        def step():
            rec.update(tokens, topk)
            return rec.draft(int(tokens[0]), compiled)
        benchmark(step)
    elif impl == "numpy":
        a = adj.copy()
        lv = _levels(template)
        benchmark(numpy_draft_update, a, lv, int(tokens[0]), tokens, topk)
    else:
        a = torch.from_numpy(adj.copy())
        lv = [(torch.from_numpy(p), torch.from_numpy(r)) for p, r in _levels(template)]
        benchmark(torch_draft_update, a, lv, int(tokens[0]), torch.from_numpy(tokens), torch.from_numpy(topk))


@pytest.fixture(scope="module")
def smollm_model():
    try:
        from tokenloom.integrations.hf.models import load_default

        return load_default()[0]
    except FileNotFoundError as e:  # pragma: no cover - the embedded model is not installed
        pytest.skip(str(e))


@pytest.mark.parametrize("part", ["kernels", "model_step"])
def test_step_overhead(benchmark, state, smollm_model, part):
    """kernels: draft + verify_greedy + ranks_of + update of a 17-token tree, with the argmax /
    top-k already computed; model_step: one embedded-model tree forward of the same tree after
    a 256-token cache (cropped back each round)."""
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.compat import cache_arg
    from tokenloom.runtime.treeattn import tree_forward

    adj, rng = state
    rec = TokenRecycler(VOCAB, K)
    compiled = compile_template("2.2.2-16")
    rec.update(np.arange(VOCAB), adj)
    benchmark.group = "recycling step: kernels vs model forward (T=17)"
    d = rec.draft(5, compiled)
    argmax = rng.integers(0, VOCAB, len(d)).astype(np.int64)
    argmax[0] = d.tokens[1]
    topk = rng.integers(0, VOCAB, (len(d), K)).astype(np.int64)
    if part == "kernels":
        def step():
            dr = rec.draft(5, compiled)
            r = tokenloom.verify_greedy(dr.parents, dr.tokens, argmax)
            rec.ranks_of(dr.tokens[r.path], r.tokens)
            rec.update(dr.tokens, topk)
        benchmark(step)
    else:
        cache = DynamicCache()
        with torch.inference_mode():
            smollm_model(input_ids=torch.randint(0, VOCAB, (1, 256)), **cache_arg(smollm_model, cache))

        def fwd():
            with torch.inference_mode():
                tree_forward(smollm_model, cache, torch.from_numpy(d.tokens), d.parents, d.depths, past_len=256)
            cache.crop(256)
        benchmark.pedantic(fwd, rounds=10, warmup_rounds=1)
