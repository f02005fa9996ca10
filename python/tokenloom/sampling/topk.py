"""The ``k`` best token ids after each position: what a Token Recycling row keeps; and the
best one, what greedy verification and greedy decoding take.

:func:`top_k_ids` is the one place drafters (and the step-cost calibration, which must time
what they do) take the top-k of logit rows, and :func:`argmax_ids` the one place the loops
take the argmax. On the CPU both run the Rust one-pass kernel (``_core.top_k_rows``: ties to
the lower id, NaN above every number, as ``torch.topk`` and ``torch.argmax`` rank; float32,
float64 and bfloat16 rows, the last as their bits); on an accelerator torch runs where the
logits are and only the ids travel.

Why not ``torch.argmax`` on the CPU: with torch on one thread (as during a tiles step) it
reads a 49152-wide row at ~75 us in float32 and ~185 us in bfloat16. Measured on the 2-core
Intel Xeon (``python -m pytest benches/kernels/test_bench_topk.py -k argmax``, medians): 17
rows 1.27 ms -> 0.25 ms in float32 and 3.17 ms -> 0.45 ms in bfloat16 (its rows widened to
float32 first); one row 85 -> 22 us and 183 -> 29 us, Python's call included.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_int
from tokenloom.device import is_accelerator

__all__ = ["argmax_ids", "top_k_ids"]


def top_k_ids(logits: Any, k: int) -> np.ndarray:
    """The ``k`` best ids of each row, best first.

    Args:
        logits: float [n, V], a torch tensor (any device, any float dtype) or a numpy array
            (float32 / float64, other float dtypes by value); integer rows are refused, from
            numpy and torch alike.
        k: ids per row, in ``[1, V]``.

    Returns:
        np.ndarray int64 [n, k].

    Raises:
        ValueError: ``k`` outside ``[1, V]``, ``logits`` not 2-D or not floats.
        TypeError: ``k`` is not an int.
    """
    if hasattr(logits, "detach"):  # torch
        import torch

        if logits.dim() != 2:
            raise ValueError(f"logits: expected [n, V], got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():  # as the numpy path: logits are float rows
            raise ValueError(f"logits: expected a float tensor [n, V], got dtype {logits.dtype}")
        if not is_accelerator(logits) and logits.dtype == torch.bfloat16:
            bits = logits.detach().contiguous().view(torch.int16).numpy()
            return _core.top_k_rows(bits, k, bf16=True)
        if is_accelerator(logits) or logits.dtype not in (torch.float32, torch.float64):
            k = as_int(k, "k")
            if not 1 <= k <= logits.shape[-1]:
                raise ValueError(f"top-k: k must be in [1, {logits.shape[-1]}] (the row length), got {k}")
            return logits.topk(k, dim=-1).indices.cpu().numpy().astype(np.int64, copy=False)
        logits = logits.detach().contiguous().numpy()
    return _core.top_k_rows(np.ascontiguousarray(logits), k)


def argmax_ids(logits: Any) -> np.ndarray:
    """The best id of each row of ``logits`` [..., V] (a torch tensor, any device and float
    dtype), as ``logits.argmax(-1)`` (the first of tied values; NaN above every number), on the
    host: np.ndarray int64 [...]. On the CPU float32 / float64 / bfloat16 rows run the Rust
    kernel (:func:`top_k_ids` with k = 1); anything else runs ``torch.argmax``."""
    import torch

    if is_accelerator(logits) or logits.dtype not in (torch.float32, torch.float64, torch.bfloat16) or logits.shape[-1] == 0:
        return logits.argmax(-1).cpu().numpy()
    lead = tuple(logits.shape[:-1])
    rows = logits.reshape(-1, logits.shape[-1])
    if rows.shape[0] == 0:
        return np.zeros(lead, dtype=np.int64)
    return top_k_ids(rows, 1).reshape(lead)
