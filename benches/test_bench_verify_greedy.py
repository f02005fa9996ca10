"""Greedy tree verification: Rust kernel vs the pure-Python reference vs a torch per-depth walk."""

from __future__ import annotations

import numpy as np
import pytest

import tokenloom

from tests.test_verify_greedy import ref_verify_greedy


def random_tree(n: int, vocab: int, seed: int):
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(0, i)) for i in range(1, n)], dtype=np.int64)
    tokens = rng.integers(0, vocab, n).astype(np.int64)
    # Make the target agree with a long path so the walk goes deep.
    argmax = rng.integers(0, vocab, n).astype(np.int64)
    for i in range(1, n):
        if rng.random() < 0.5:
            argmax[parents[i]] = tokens[i]
    return parents, tokens, argmax


def torch_walk(parents, tokens, argmax):
    """Per-depth torch walk in the style of reference implementations."""
    import torch

    path, out, cur = [0], [], 0
    while True:
        want = argmax[cur]
        hit = torch.nonzero((parents == cur) & (tokens == want))
        out.append(int(want))
        if hit.numel() == 0:
            return path, out
        cur = int(hit[0, 0])
        path.append(cur)


@pytest.mark.parametrize("n", [8, 32, 81, 256])
@pytest.mark.parametrize("impl", ["rust", "python", "torch"])
def test_verify_greedy(benchmark, n, impl):
    import torch

    p, t, a = random_tree(n, 50, seed=n)
    benchmark.group = f"verify_greedy T={n}"
    if impl == "rust":
        benchmark(tokenloom.verify_greedy, p, t, a)
    elif impl == "python":
        lp, lt, la = p.tolist(), t.tolist(), a.tolist()
        benchmark(ref_verify_greedy, lp, lt, la)
    else:
        tp, tt, ta = torch.from_numpy(p), torch.from_numpy(t), torch.from_numpy(a)
        benchmark(torch_walk, tp, tt, ta)
