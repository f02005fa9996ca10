"""The ``k`` best token ids after each position: what a Token Recycling row keeps.

:func:`top_k_ids` is the one place drafters (and the step-cost calibration, which must time
what they do) take the top-k of logit rows. On the CPU it runs the Rust one-pass kernel
(``_core.top_k_rows``: ties to the lower id, NaN above every number, as ``torch.topk`` on
values); on an accelerator ``torch.topk`` runs where the logits are and only the ids travel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_int
from tokenloom.device import is_accelerator

__all__ = ["top_k_ids"]


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
        if is_accelerator(logits) or logits.dtype not in (torch.float32, torch.float64):
            k = as_int(k, "k")
            if not 1 <= k <= logits.shape[-1]:
                raise ValueError(f"top-k: k must be in [1, {logits.shape[-1]}] (the row length), got {k}")
            return logits.topk(k, dim=-1).indices.cpu().numpy().astype(np.int64, copy=False)
        logits = logits.detach().contiguous().numpy()
    return _core.top_k_rows(np.ascontiguousarray(logits), k)
