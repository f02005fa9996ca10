"""Verification kernels: Rust vs the NumPy / pure-Python reference vs a torch implementation.

    python -m pytest benches/kernels/test_bench_verify.py --benchmark-json bench-results/verify.json

Groups: ``<verifier> T=<nodes> V=<vocab> B=<batch>``, each holding ``rust``, ``numpy`` (the
pure-Python reference for greedy) and ``torch`` (transformers' ``_speculative_sampling`` style
for chains, a per-depth walk with ``torch.multinomial`` for trees). Trees are random with
parents drawn among the previous 8 nodes (depth ~T/4); each target row puts half its mass on
the token of the node's first child, so walks go a few levels deep, as in real use. Batches of
16 share one [T, V] array (a broadcast view: no 16x memory).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tokenloom

from tests.reference.verify import ref_verify_greedy

pytestmark = pytest.mark.benchmark(max_time=0.25, min_rounds=3, warmup=False)

SIZES = [8, 32, 81, 256]
VOCABS = [32000, 49152, 128256]
BATCHES = [1, 16]
IMPLS = ["rust", "numpy", "torch"]


@functools.lru_cache(maxsize=1)
def tree256(seed: int = 0):
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(max(0, i - 8), i)) for i in range(1, 256)], dtype=np.int64)
    return parents, rng


@functools.lru_cache(maxsize=1)
def data(vocab: int):
    """parents, tokens [256]; target p and draft q [257, V] float32 (row 256: a chain's bonus row)."""
    parents, _ = tree256()
    rng = np.random.default_rng(vocab)
    tokens = rng.integers(0, vocab, 256).astype(np.int64)
    first_child = np.full(257, -1)
    for i in range(255, 0, -1):
        first_child[parents[i]] = i
    peak = np.where(first_child >= 0, tokens[np.maximum(first_child, 0)], 0)
    base_p = rng.random(vocab, dtype=np.float32)
    base_q = rng.random(vocab, dtype=np.float32)
    p = np.empty((257, vocab), dtype=np.float32)
    q = np.empty((257, vocab), dtype=np.float32)
    p[:] = 0.5 * base_p / base_p.sum()
    q[:] = 0.4 * base_q / base_q.sum()
    p[np.arange(257), peak] += 0.5
    q[np.arange(257), peak] += 0.6
    return parents, tokens, p, q


def batched(x: np.ndarray, b: int) -> np.ndarray:
    return np.broadcast_to(x, (b,) + x.shape)


# --- references ---------------------------------------------------------------------------

def np_sample(row, rng):
    cdf = np.cumsum(row, dtype=np.float64)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(row) - 1))


def np_tree(parents, tokens, p, q, rng):
    """NumPy reference: deterministic drafts (q None) or SpecInfer with replacement."""
    kids = [[] for _ in parents]
    for i in range(1, len(parents)):
        kids[parents[i]].append(i)
    path, out, cur = [0], [], 0
    while True:
        r = p[cur].astype(np.float64)
        nxt = None
        if q is None:
            y = np_sample(r, rng)
            nxt = next((c for c in kids[cur] if tokens[c] == y), None)
            if nxt is None:
                return path, out + [y]
        else:
            qq = q[cur].astype(np.float64)
            for c in kids[cur]:
                x = tokens[c]
                if rng.random() * qq[x] < r[x]:
                    nxt = c
                    break
                r = np.maximum(r - qq, 0)
                r /= r.sum()
            if nxt is None:
                return path, out + [np_sample(r, rng)]
        path.append(nxt)
        out.append(int(tokens[nxt]))
        cur = nxt


def np_chain(x, q, p, rng):
    out = []
    for i, xi in enumerate(x):
        if rng.random() * q[i, xi] < p[i, xi]:
            out.append(int(xi))
            continue
        r = np.maximum(p[i].astype(np.float64) - q[i], 0)
        return out + [np_sample(r / r.sum(), rng)]
    return out + [np_sample(p[len(x)], rng)]


def torch_tree(parents, tokens, p, q, gen):
    """Per-depth torch walk: torch.multinomial at each visited node, residuals with torch."""
    import torch

    path, out, cur = [0], [], 0
    while True:
        r = p[cur].double()
        kids = torch.nonzero(parents == cur).flatten()
        nxt = None
        if q is None:
            y = int(torch.multinomial(r, 1, generator=gen))
            hit = kids[tokens[kids] == y]
            if hit.numel() == 0:
                return path, out + [y]
            nxt = int(hit[0])
        else:
            qq = q[cur].double()
            u = torch.rand(len(kids), generator=gen, dtype=torch.float64)
            for k, c in enumerate(kids.tolist()):
                x = int(tokens[c])
                if float(u[k] * qq[x]) < float(r[x]):
                    nxt = c
                    break
                r = (r - qq).clamp_min(0)
                r = r / r.sum()
            if nxt is None:
                return path, out + [int(torch.multinomial(r, 1, generator=gen))]
        path.append(nxt)
        out.append(int(tokens[nxt]))
        cur = nxt


def torch_chain(x, q, p, gen):
    """transformers' ``_speculative_sampling`` style: vectorised ratios, one residual draw."""
    import torch

    n = len(x)
    ar = torch.arange(n)
    ratio = p[ar, x] / q[ar, x]
    u = torch.rand(n, generator=gen)
    rejected = ~(u <= ratio)
    k = int(rejected.int().argmax()) if bool(rejected.any()) else n
    if k < n:
        r = (p[k] - q[k]).clamp_min(0)
        y = torch.multinomial(r / r.sum(), 1, generator=gen)
    else:
        y = torch.multinomial(p[n], 1, generator=gen)
    return torch.cat([x[:k], y])


# --- benchmarks ---------------------------------------------------------------------------

@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["rust", "python", "torch"])
def test_verify_greedy(benchmark, impl, n, b):
    import torch

    parents, tokens, p, _ = data(32000)
    par, tok = parents[:n].copy(), tokens[:n].copy()
    argmax = p[:n].argmax(1).astype(np.int64)
    benchmark.group = f"verify_greedy T={n} B={b}"
    if impl == "rust":
        if b == 1:
            benchmark(tokenloom.verify_greedy, par, tok, argmax)
        else:
            pb, tb, ab = (np.ascontiguousarray(batched(a, b)) for a in (par, tok, argmax))
            benchmark(tokenloom.verify_greedy_batch, pb, tb, ab, np.full(b, n))
    elif impl == "python":
        lp, lt, la = par.tolist(), tok.tolist(), argmax.tolist()
        benchmark(lambda: [ref_verify_greedy(lp, lt, la) for _ in range(b)])
    else:
        tp, tt, ta = (torch.from_numpy(a) for a in (par, tok, argmax))
        benchmark(lambda: [_torch_greedy(tp, tt, ta) for _ in range(b)])


def _torch_greedy(parents, tokens, argmax):
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


@pytest.mark.parametrize("b", BATCHES)
@pytest.mark.parametrize("v", VOCABS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["tree_det", "tree_sampled", "chain"])
def test_verify_stochastic(benchmark, kind, impl, n, v, b):
    import torch

    parents, tokens, p, q = data(v)
    par, tok = parents[:n].copy(), tokens[:n].copy()
    benchmark.group = f"verify_{kind} T={n} V={v // 1000}k B={b}"
    if kind == "chain":
        x = p[:n].argmax(1).astype(np.int64)  # tokens both models like: runs get accepted
        qc, pc = q[:n], p[: n + 1]
    if impl == "rust":
        if kind == "chain":
            if b == 1:
                benchmark(tokenloom.verify_chain, x, qc, pc, seed=1)
            else:
                xb = np.ascontiguousarray(batched(x, b))
                benchmark(tokenloom.verify_chain_batch, xb, batched(qc, b), batched(pc, b), seed=1)
        else:
            d = None if kind == "tree_det" else q[:n]
            if b == 1:
                benchmark(tokenloom.verify_tree, par, tok, p[:n], d, seed=1)
            else:
                pb, tb = (np.ascontiguousarray(batched(a, b)) for a in (par, tok))
                db = None if d is None else batched(d, b)
                benchmark(tokenloom.verify_tree_batch, pb, tb, batched(p[:n], b), db, seed=1)
    elif impl == "numpy":
        rng = np.random.default_rng(0)
        if kind == "chain":
            benchmark(lambda: [np_chain(x, qc, pc, rng) for _ in range(b)])
        else:
            d = None if kind == "tree_det" else q[:n]
            benchmark(lambda: [np_tree(par, tok, p[:n], d, rng) for _ in range(b)])
    else:
        gen = torch.Generator().manual_seed(0)
        if kind == "chain":
            tx, tq, tp = torch.from_numpy(x), torch.from_numpy(qc), torch.from_numpy(pc)
            benchmark(lambda: [torch_chain(tx, tq, tp, gen) for _ in range(b)])
        else:
            tpar, ttok, tp = torch.from_numpy(par), torch.from_numpy(tok), torch.from_numpy(p[:n])
            tq = None if kind == "tree_det" else torch.from_numpy(q[:n])
            benchmark(lambda: [torch_tree(tpar, ttok, tp, tq, gen) for _ in range(b)])
