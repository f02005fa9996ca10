"""Torch mirrors of the Rust kernels' vocabulary-wide steps, for tensors on an accelerator.

Each function follows the definition in ``rust/core/src/sampling.rs`` (transforms, row checks,
inverse CDF) in float64, with uniforms from the same counter-based generator, so a seed gives
the same result as the Rust path up to floating-point rounding at a CDF boundary. Tests run
them on CPU tensors against the Rust path. Torch is imported by the callers' callers lazily:
importing this module imports torch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from tokenloom import _core

PROB_TOL = 1e-4
RESIDUAL_FLOOR = 1e-9


def counter(node: int, slot: int) -> int:
    """The counter of draw ``slot`` at node/step ``node`` (``node << 32 | slot``)."""
    return (node << 32) | slot


def uniforms(seed: int, streams: Sequence[int], counters: Sequence[int]) -> np.ndarray:
    """float64 uniforms ``u(seed, streams[i], counters[i])`` of the Rust generator."""
    return _core.uniforms(seed, np.asarray(streams, dtype=np.uint64), np.asarray(counters, dtype=np.uint64))


def uniform(seed: int, stream: int, c: int) -> float:
    return float(uniforms(seed, [stream], [c])[0])


def check_rows(rows: "torch.Tensor", name: str, index: Optional[Sequence[int]] = None) -> "torch.Tensor":
    """Checks probability rows [N, V] on their device (one host sync); returns their f64 sums.
    ``index``: the rows' numbers in the caller's array, for the message (default ``0..N-1``)."""
    x = rows.double()
    bad = ~torch.isfinite(x) | (x < 0)
    sums = x.sum(-1)
    off = (sums - 1.0).abs() > PROB_TOL
    if bool(bad.any() | off.any()):
        b = bad.nonzero()
        if b.numel():
            i, j = (int(v) for v in b[0])
            row = i if index is None else index[i]
            raise ValueError(f"{name}[{row}, {j}] = {float(x[i, j])}: probabilities must be finite and >= 0")
        i = int(off.nonzero()[0, 0])
        row = i if index is None else index[i]
        raise ValueError(f"{name}[{row}] sums to {float(sums[i])}: expected 1 within {PROB_TOL}")
    return sums


def inverse_cdf(rows: "torch.Tensor", u: "torch.Tensor") -> "torch.Tensor":
    """Per row, the smallest j with ``cumsum(row)[j] > u * sum(row)`` (rows [N, V] >= 0, u [N]);
    past the end (rounding) the last positive entry, as the Rust kernel does."""
    x = rows.double()
    cdf = x.cumsum(-1)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    v = x.shape[-1]
    last_pos = v - 1 - (x > 0).flip(-1).int().argmax(-1)
    return torch.where(idx >= v, last_pos, idx)


def check_logits(x: "torch.Tensor") -> None:
    if bool((torch.isnan(x) | (x == float("inf"))).any()):
        i, j = (int(v) for v in (torch.isnan(x) | (x == float("inf"))).nonzero()[0])
        raise ValueError(
            f"logits[{i}, {j}] = {float(x[i, j])}: NaN and +inf logits are not allowed (use -inf to mask a token)"
        )
    dead = (x == float("-inf")).all(-1)
    if bool(dead.any()):
        raise ValueError(f"logits[{int(dead.nonzero()[0, 0])}]: every logit is -inf (nothing to sample)")


def probs(
    logits: "torch.Tensor", temperature: float, top_k: Optional[int], top_p: Optional[float], min_p: Optional[float]
) -> "torch.Tensor":
    """Probabilities [B, V] (float64) after temperature -> top-k -> top-p -> min-p."""
    x = logits.double()
    check_logits(x)
    if temperature == 0:
        out = torch.zeros_like(x)
        out.scatter_(-1, x.argmax(-1, keepdim=True), 1.0)
        return out
    top = x.max(-1, keepdim=True).values
    w = ((x - top) / temperature).exp()
    v = x.shape[-1]
    if top_k is not None and top_k < v:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        w = torch.where(x < kth, torch.zeros_like(w), w)
    if top_p is not None and top_p < 1.0:
        mass = w.sum(-1, keepdim=True)
        srt = w.sort(-1, descending=True).values
        cum = srt.cumsum(-1)
        m = (cum < top_p * mass).sum(-1, keepdim=True)
        npos = (srt > 0).sum(-1, keepdim=True)
        tau = srt.gather(-1, torch.minimum(m, npos - 1))
        w = torch.where(w < tau, torch.zeros_like(w), w)
    if min_p is not None and min_p > 0:
        cut = min_p * w.max(-1, keepdim=True).values
        w = torch.where(w < cut, torch.zeros_like(w), w)
    return w / w.sum(-1, keepdim=True)


def sample(logits: "torch.Tensor", temperature: float, top_k: Any, top_p: Any, min_p: Any, seed: int, count: int) -> "torch.Tensor":
    """One id per row on the logits' device; row r uses ``u(seed, r, count)``."""
    p = probs(logits, temperature, top_k, top_p, min_p)
    if temperature == 0:
        return p.argmax(-1)
    b = p.shape[0]
    u = torch.from_numpy(uniforms(seed, range(b), [count] * b)).to(p.device)
    return inverse_cdf(p, u)
