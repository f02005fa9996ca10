"""The accelerator path on a real CUDA device (skipped without one): the same results as the
Rust path for trees, chains and the Sampler. The same code runs on CPU tensors in
test_verify_tree.py / test_verify_chain.py / test_sampling.py."""

from __future__ import annotations

import numpy as np
import pytest

import tokenloom

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _rows(rng, n, v):
    return rng.dirichlet(np.ones(v), size=n)


def test_tree_and_chain_on_cuda_match_cpu():
    rng = np.random.default_rng(0)
    for seed in range(20):
        n, v = 12, 9
        parents = [-1] + [int(rng.integers(0, i)) for i in range(1, n)]
        tokens = [0] + rng.integers(0, v, n - 1).tolist()
        p, q = _rows(rng, n, v), _rows(rng, n, v)
        for d in (None, q):
            cpu = tokenloom.verify_tree(parents, tokens, p, d, seed=seed)
            gpu = tokenloom.verify_tree(
                parents, tokens, torch.from_numpy(p).cuda(), None if d is None else torch.from_numpy(d).cuda(), seed=seed
            )
            assert cpu.tokens.tolist() == gpu.tokens.tolist()
        x = rng.integers(0, v, 4)
        cpu = tokenloom.verify_chain(x, q[:4], p[:5], seed=seed)
        gpu = tokenloom.verify_chain(x, torch.from_numpy(q[:4]).cuda(), torch.from_numpy(p[:5]).cuda(), seed=seed)
        assert cpu.tokens.tolist() == gpu.tokens.tolist()


def test_sampler_on_cuda_matches_cpu():
    logits = torch.randn(64, 1000) * 3
    for kw in (dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.8, min_p=0.05), dict(temperature=0.0)):
        cpu = tokenloom.Sampler(seed=5, **kw)(logits)
        gpu = tokenloom.Sampler(seed=5, **kw)(logits.cuda())
        assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu()), kw
