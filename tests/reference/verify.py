"""Shared fixtures of the statistical verification tests: a small "language model" whose next
token distribution depends on the path (depth and last token), random trees with duplicate
siblings, chi-square checks, and pure-Python references of the verifiers."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from tokenloom import _core
from tokenloom.eval.exactness import chi2_pvalue

P_MIN = 1e-3  # every chi-square check must pass at this level (fixed seeds: deterministic)


class CondModel:
    """Next-token tables ``table[d, t]`` (a distribution over V) for the token after a node of
    depth ``d`` carrying token ``t``; depths beyond the table reuse its last layer."""

    def __init__(self, vocab: int, depth: int, seed: int, alpha: float = 1.0):
        rng = np.random.default_rng(seed)
        self.vocab = vocab
        self.table = rng.dirichlet(np.full(vocab, alpha), size=(depth, vocab))

    def row(self, depth: np.ndarray, token: np.ndarray) -> np.ndarray:
        d = np.minimum(depth, self.table.shape[0] - 1)
        return self.table[d, token]


def depths(parents: Sequence[int]) -> np.ndarray:
    d = np.zeros(len(parents), dtype=np.int64)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def random_tree(n: int, vocab: int, seed: int, min_depth: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """A random tree of ``n`` nodes with a chain of depth ``min_depth`` and duplicate siblings."""
    rng = np.random.default_rng(seed)
    parents = [-1] + list(range(min_depth))  # 0 -> 1 -> 2 -> ... (depth >= min_depth)
    while len(parents) < n:
        parents.append(int(rng.integers(0, len(parents))))
    tokens = rng.integers(0, vocab, n)
    # Duplicate siblings: give the second child of the root (and of node 1) the token of the first.
    par = np.array(parents)
    for node in (0, 1):
        kids = np.nonzero(par == node)[0]
        if len(kids) < 2:
            parents.append(node)
            tokens = np.append(tokens, 0)
            par = np.array(parents)
            kids = np.nonzero(par == node)[0]
        tokens[kids[1]] = tokens[kids[0]]
    out = np.array(parents, dtype=np.int64), tokens.astype(np.int64)
    assert depths(out[0]).max() >= min_depth
    return out


def children(parents: np.ndarray) -> List[List[int]]:
    kids: List[List[int]] = [[] for _ in parents]
    for i in range(1, len(parents)):
        kids[int(parents[i])].append(i)
    return kids


def sample_rows(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One inverse-CDF draw per row of ``rows`` [N, V]."""
    cdf = rows.cumsum(-1)
    u = rng.random(len(rows))[:, None] * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(-1), rows.shape[1] - 1)


def draw_children(parents: np.ndarray, root_token: int, q: CondModel, n: int, seed: int, replacement: bool) -> np.ndarray:
    """Tokens [n, T] of n trees whose children were drawn from the draft model q: with
    replacement (independent draws) or without (Gumbel-top-k, in decreasing key order)."""
    rng = np.random.default_rng(seed)
    t = len(parents)
    d = depths(parents)
    tok = np.zeros((n, t), dtype=np.int64)
    tok[:, 0] = root_token
    for node, kids in enumerate(children(parents)):
        if not kids:
            continue
        rows = q.row(np.full(n, d[node]), tok[:, node])
        if replacement:
            for c in kids:
                tok[:, c] = sample_rows(rows, rng)
        else:
            keys = np.log(rows) + rng.gumbel(size=rows.shape)
            order = np.argsort(-keys, axis=1, kind="stable")
            tok[:, kids] = order[:, : len(kids)]
    return tok


def node_rows(model: CondModel, parents: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """[n, T, V] rows: the model's distribution after each node of each tree (tokens [n, T])."""
    d = depths(parents)
    return model.row(np.broadcast_to(d, tokens.shape), tokens)


def prefixes(results, model: CondModel, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """First emitted token and two-token prefix (as a*V + b) of each result; a result with one
    token is extended by plain sampling from the target, as a decoding loop would."""
    rng = np.random.default_rng(seed)
    first = np.array([int(r.tokens[0]) for r in results])
    second = np.array([int(r.tokens[1]) if len(r.tokens) > 1 else -1 for r in results])
    short = second < 0
    if short.any():
        rows = model.row(np.ones(short.sum(), dtype=np.int64), first[short])
        second[short] = sample_rows(rows, rng)
    return first, first * model.vocab + second


def expected(model: CondModel, root_token: int) -> Tuple[np.ndarray, np.ndarray]:
    """Target law of the first token and of the two-token prefix after the root."""
    p1 = model.table[0, root_token]
    p2 = (p1[:, None] * model.table[min(1, len(model.table) - 1)]).ravel()
    return p1, p2


def chisq_p(samples: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value of integer ``samples`` against ``probs`` (bins with
    expected count < 5 are pooled: :func:`tokenloom.eval.exactness.chi2_pvalue`, the one
    chi-square of the project); a sample of a zero-probability outcome fails at once."""
    counts = np.bincount(samples, minlength=len(probs))
    assert counts[np.asarray(probs) == 0].sum() == 0, "a zero-probability outcome was emitted"
    return chi2_pvalue({(i,): float(q) for i, q in enumerate(probs)}, {(i,): int(c) for i, c in enumerate(counts) if c})


# --- pure-Python references of the Rust kernels (same generator, same rules) ---------------

def uniform(seed: int, stream: int, c: int) -> float:
    return float(_core.uniforms(seed, np.array([stream], np.uint64), np.array([c], np.uint64))[0])


def icdf(row: Sequence[float], u: float) -> int:
    target = u * sum(row)
    cum = 0.0
    for j, x in enumerate(row):
        cum += x
        if cum > target:
            return j
    return max(j for j, x in enumerate(row) if x > 0)


def _norm(row: Sequence[float]) -> List[float]:
    """Rows are used as given (the kernels check that they sum to 1 within 1e-4)."""
    return [float(x) for x in row]


def _reject(r: List[float], q: List[float]) -> List[float]:
    res = [max(0.0, a - b) for a, b in zip(r, q)]
    m = sum(res)
    if m <= 1e-9:
        return r
    inv = 1.0 / m
    return [x * inv for x in res]


def ref_verify_tree(parents, tokens, target, draft=None, seed=0, stream=0, replacement=True):
    """Pure-Python reference of tokenloom.verify_tree (lists in, (path, tokens) out)."""
    kids = children(np.asarray(parents))
    path, out, cur = [0], [], 0
    while True:
        r = _norm(target[cur])
        accepted: Optional[int] = None
        if draft is None:
            y = icdf(r, uniform(seed, stream, cur << 32))
            accepted = next((c for c in kids[cur] if tokens[c] == y), None)
            if accepted is None:
                return path, out + [y]
        elif kids[cur]:
            q = _norm(draft[cur])
            for k, c in enumerate(kids[cur]):
                x = tokens[c]
                if uniform(seed, stream, (cur << 32) | (k + 1)) * q[x] < r[x]:
                    accepted = c
                    break
                r = _reject(r, q)
                if not replacement:
                    qx = q[x]
                    q = list(q)
                    q[x] = 0.0
                    if 1.0 - qx > 1e-9:
                        inv = 1.0 / (1.0 - qx)
                        q = [v * inv for v in q]
        if accepted is None:
            return path, out + [icdf(r, uniform(seed, stream, cur << 32))]
        path.append(accepted)
        out.append(int(tokens[accepted]))
        cur = accepted


def ref_verify_chain(draft_tokens, draft, target, seed=0, stream=0):
    """Pure-Python reference of tokenloom.verify_chain."""
    out = []
    for i, x in enumerate(draft_tokens):
        p, q = _norm(target[i]), _norm(draft[i])
        if uniform(seed, stream, (i << 32) | 1) * q[x] < p[x]:
            out.append(int(x))
            continue
        return list(range(i + 1)), out + [icdf(_reject(p, q), uniform(seed, stream, i << 32))]
    n = len(draft_tokens)
    return list(range(n + 1)), out + [icdf(_norm(target[n]), uniform(seed, stream, n << 32))]


def ref_verify_greedy(parents, tokens, argmax):
    """Pure-Python reference: follow the argmax; lowest-index duplicate sibling wins."""
    path, out, cur = [0], [], 0
    while True:
        want = argmax[cur]
        nxt = next((i for i in range(len(parents)) if parents[i] == cur and tokens[i] == want), None)
        out.append(want)
        if nxt is None:
            return path, out
        path.append(nxt)
        cur = nxt
