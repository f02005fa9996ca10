"""Device path of :mod:`tokenloom.verify` (tensors on an accelerator): the same rules as the
Rust kernels, with vocabulary-wide work on the device and only ids / scalars on the host.

- Deterministic drafts: the per-node samples ``y_i ~ target_probs[i]`` are drawn on the device
  for all nodes at once (inverse CDF with the Rust generator's uniforms, counter ``i << 32``),
  then the Rust greedy walk matches them against the tree: exactly the CPU rule.
- Sampled drafts: a host-driven walk over the visited nodes; each acceptance test reads two
  scalars, each rejection updates the residual on the device.
- Chains: the gathers ``p_i(x_i)``, ``q_i(x_i)`` for all steps at once, the acceptance on the
  host, one residual (or bonus) sample on the device.
"""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch

from tokenloom import _core
from tokenloom._arrays import as_array
from tokenloom.sampling.torch_ops import RESIDUAL_FLOOR, check_rows, counter, inverse_cdf, uniform, uniforms
from tokenloom.verify.result import VerifyResult

_I64 = np.int64


def _tensor(x: Any, device: "torch.device") -> "torch.Tensor":
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), device=device)


def _check_tree(par: np.ndarray, tok: np.ndarray, target: "torch.Tensor", draft: Optional["torch.Tensor"]) -> None:
    t = len(par)
    if len(tok) != t:
        raise ValueError(f"tokens: expected length {t} (= len(parents)), got {len(tok)}")
    if target.dim() != 2 or target.shape[0] != t:
        raise ValueError(f"target_probs: expected {t} rows (one per node), got shape {list(target.shape)}")
    if draft is not None and draft.shape != target.shape:
        raise ValueError(f"draft_probs: expected {list(target.shape)} (the shape of target_probs), got {list(draft.shape)}")
    v = target.shape[1]
    bad = (tok[1:] < 0) | (tok[1:] >= v)
    if bad.any():
        raise IndexError(f"tokens: {int(tok[1:][bad][0])} is out of range [0, {v})")


def verify_tree_torch(
    parents: Any, tokens: Any, target_probs: Any, draft_probs: Any, seed: int, stream: int, replacement: bool
) -> VerifyResult:
    """One tree on the device of ``target_probs``; uses ``stream`` of ``seed``."""
    par = as_array(parents, _I64, "parents", 1)
    tok = as_array(tokens, _I64, "tokens", 1)
    dev = target_probs.device if isinstance(target_probs, torch.Tensor) else draft_probs.device
    target = _tensor(target_probs, dev)
    draft = None if draft_probs is None else _tensor(draft_probs, dev)
    _check_tree(par, tok, target, draft)
    _core.verify_greedy(par, tok, np.zeros(len(par), dtype=_I64))  # validates the parent array
    if draft is None:
        check_rows(target, "target_probs")
        u = uniforms(seed, [stream] * len(par), [counter(i, 0) for i in range(len(par))])
        y = inverse_cdf(target, torch.from_numpy(u).to(dev)).cpu().numpy().astype(_I64)
        path, toks = _core.verify_greedy(par, tok, y)
        return VerifyResult(path, toks)
    check_rows(target, "target_probs")
    inner = np.unique(par[1:]).tolist()  # only the rows children were drawn from are read, as on the CPU
    if inner:
        check_rows(draft[torch.tensor(inner, device=dev)], "draft_probs", inner)
    return _walk_sampled(par, tok, target, draft, seed, stream, replacement)


def _walk_sampled(
    par: np.ndarray, tok: np.ndarray, p: "torch.Tensor", q: "torch.Tensor", seed: int, stream: int, replacement: bool
) -> VerifyResult:
    kids: List[List[int]] = [[] for _ in par]
    for i in range(1, len(par)):
        kids[int(par[i])].append(i)
    path, out, cur = [0], [], 0
    while True:
        r = p[cur].double()  # rows are used as given (checked to sum to 1 within 1e-4)
        accepted = None
        if kids[cur]:
            qq = q[cur].double()
            for k, c in enumerate(kids[cur]):
                x = int(tok[c])
                rx, qx = float(r[x]), float(qq[x])
                if uniform(seed, stream, counter(cur, k + 1)) * qx < rx:
                    accepted = c
                    break
                res = (r - qq).clamp_min(0.0)
                mass = float(res.sum())
                if mass > RESIDUAL_FLOOR:
                    r = res / mass
                if not replacement:
                    qq = qq.clone()
                    qq[x] = 0.0
                    if 1.0 - qx > RESIDUAL_FLOOR:
                        qq = qq / (1.0 - qx)
        if accepted is None:
            u = torch.tensor([uniform(seed, stream, counter(cur, 0))], dtype=torch.float64, device=r.device)
            out.append(int(inverse_cdf(r.unsqueeze(0), u)[0]))
            return VerifyResult(np.array(path, dtype=_I64), np.array(out, dtype=_I64))
        path.append(accepted)
        out.append(int(tok[accepted]))
        cur = accepted


def verify_chain_torch(draft_tokens: Any, draft_probs: Any, target_probs: Any, seed: int, stream: int) -> VerifyResult:
    """One chain on the device of ``target_probs``; uses ``stream`` of ``seed``."""
    x = as_array(draft_tokens, _I64, "draft_tokens", 1)
    dev = target_probs.device if isinstance(target_probs, torch.Tensor) else draft_probs.device
    p = _tensor(target_probs, dev)
    q = _tensor(draft_probs, dev)
    n = len(x)
    if q.dim() != 2 or q.shape[0] != n or q.shape[1] != p.shape[-1]:
        raise ValueError(f"draft_probs: expected [{n}, {p.shape[-1]}] (one row per draft token), got {list(q.shape)}")
    if p.dim() != 2 or p.shape[0] != n + 1:
        raise ValueError(f"target_probs: expected {n + 1} rows (n + 1, bonus row included), got shape {list(p.shape)}")
    v = p.shape[1]
    bad = (x < 0) | (x >= v)
    if bad.any():
        raise IndexError(f"draft_tokens: {int(x[bad][0])} is out of range [0, {v})")
    check_rows(p, "target_probs")
    if n:
        check_rows(q, "draft_probs")
    xs = torch.from_numpy(x).to(dev)
    ar = torch.arange(n, device=dev)
    px = p[ar, xs].double().cpu().numpy()  # rows are used as given (checked to sum to 1)
    qx = q[ar, xs].double().cpu().numpy()
    u = uniforms(seed, [stream] * n, [counter(i, 1) for i in range(n)])
    rejected = np.nonzero(~(u * qx < px))[0]
    k = int(rejected[0]) if len(rejected) else n
    if k < n:
        r = p[k].double()
        res = (r - q[k].double()).clamp_min(0.0)
        mass = float(res.sum())
        row = res / mass if mass > RESIDUAL_FLOOR else r
    else:
        row = p[n].double()
    uk = torch.tensor([uniform(seed, stream, counter(k, 0))], dtype=torch.float64, device=dev)
    y = int(inverse_cdf(row.unsqueeze(0), uk)[0])
    return VerifyResult(np.arange(k + 1, dtype=_I64), np.append(x[:k], y).astype(_I64))


def _lengths(lengths: Any, b: int, full: int) -> np.ndarray:
    if lengths is None:
        return np.full(b, full, dtype=_I64)
    return as_array(lengths, _I64, "lengths", 1)


def verify_tree_batch_torch(
    parents: Any, tokens: Any, target_probs: Any, draft_probs: Any, lengths: Any, seed: int, replacement: bool
) -> List[VerifyResult]:
    par = as_array(parents, _I64, "parents", 2)
    tok = as_array(tokens, _I64, "tokens", 2)
    lens = _lengths(lengths, par.shape[0], par.shape[1])
    out = []
    for b, n in enumerate(lens.tolist()):
        if not 0 <= n <= par.shape[1]:
            raise IndexError(f"lengths: {n} is out of range [0, {par.shape[1] + 1})")
        d = None if draft_probs is None else draft_probs[b, :n]
        out.append(verify_tree_torch(par[b, :n], tok[b, :n], target_probs[b, :n], d, seed, b, replacement))
    return out


def verify_chain_batch_torch(
    draft_tokens: Any, draft_probs: Any, target_probs: Any, lengths: Any, seed: int
) -> List[VerifyResult]:
    x = as_array(draft_tokens, _I64, "draft_tokens", 2)
    lens = _lengths(lengths, x.shape[0], x.shape[1])
    out = []
    for b, n in enumerate(lens.tolist()):
        if not 0 <= n <= x.shape[1]:
            raise IndexError(f"lengths: {n} is out of range [0, {x.shape[1] + 1})")
        out.append(verify_chain_torch(x[b, :n], draft_probs[b, :n], target_probs[b, : n + 1], seed, b))
    return out
