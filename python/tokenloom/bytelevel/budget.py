"""The memory bound of a ByteLM: estimate what a forward would allocate, refuse it beforehand.

``max_paths`` bounds live exact paths, not memory: in all-covers mode a prefix like
``b"    for i in range(len(s"`` creates thousands of paths per byte, each needing a distribution
(a float32 vocabulary row on the host) and a KV slot, and one batched forward over thousands
of rows also allocates logits and attention scores of ``rows x slots``. :class:`MemoryBudget`
estimates, in bytes,

- held: ``kv_slots * kv_bytes_per_slot + distributions * width * 4 + tree_nodes * NODE_BYTES``
  (distributions: those in the ``DistCache`` plus those the cover state holds, an upper bound
  since the two share most arrays);
- one forward of ``r`` rows after ``n`` slots: ``r * kv_bytes_per_slot`` (new KV) +
  ``(n + r) * kv_bytes_per_slot / layers`` (a layer's concatenation copy) +
  ``r * width * (logit_bytes + copy + 8)`` (the logits, their float32 copy when the model
  is not float32 -- ``copy`` = 4, else 0 --, the distribution and the masked row it is
  computed from) + ``r * (n + r) * (mask_bytes + 8 * heads)`` (the mask and one
  layer's attention scores and weights, float32),

and raises :class:`MemoryBoundError` *before* a forward whose held + forward estimate exceeds
``max_memory_bytes``. Not counted: the model's weights, its per-layer activations of size
``rows x hidden`` and the vocabulary's shared mask cache (``ByteVocab``).

The default bound (:func:`default_max_memory`) is a quarter of the machine's memory, at most
4 GiB: far above what canonical mode needs (tens of MiB on the embedded 135M model), well below
what makes a process die on an allocation.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from tokenloom.bytelevel.covers import NODE_BYTES
from tokenloom.runtime.model import model_dtype_device

__all__ = ["DEFAULT_MAX_MEMORY_CAP", "MemoryBoundError", "MemoryBudget", "default_max_memory"]

#: The default bound never exceeds this (bytes).
DEFAULT_MAX_MEMORY_CAP = 4 << 30
_MIB = 1 << 20


class MemoryBoundError(MemoryError, ValueError):
    """A ByteLM refused work whose estimated memory exceeds ``max_memory_bytes`` (nothing was
    allocated for it). Both a MemoryError and a ValueError (like the ``max_paths`` refusal)."""


def default_max_memory() -> int:
    """A quarter of the physical memory, at most :data:`DEFAULT_MAX_MEMORY_CAP` (the cap when
    the memory size is unknown)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return DEFAULT_MAX_MEMORY_CAP
    return int(min(DEFAULT_MAX_MEMORY_CAP, total // 4)) if total > 0 else DEFAULT_MAX_MEMORY_CAP


def _config_int(model: Any, name: str, default: int) -> int:
    cfg: Any = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    v = getattr(cfg, name, None)
    return int(v) if isinstance(v, int) and v > 0 else default


class MemoryBudget:
    """Byte estimates of a ByteLM's state and forwards against a limit (module docstring).

    Args:
        model: the HF causal LM (its config gives layers and heads, its dtype the logits size).
        width: logits width.
        max_memory_bytes: the bound (None: :func:`default_max_memory`).

    Raises:
        ValueError: max_memory_bytes is not a positive int.
    """

    def __init__(self, model: Any, width: int, max_memory_bytes: Optional[int] = None) -> None:
        if max_memory_bytes is None:
            max_memory_bytes = default_max_memory()
        if isinstance(max_memory_bytes, bool) or not isinstance(max_memory_bytes, int) or max_memory_bytes <= 0:
            raise ValueError(f"max_memory_bytes must be a positive int (bytes) or None, got {max_memory_bytes!r}")
        import torch

        dtype, _ = model_dtype_device(model)
        elt = torch.empty((), dtype=dtype).element_size()
        self.limit = max_memory_bytes
        self.width = int(width)
        self.dist_bytes = 4 * self.width
        self.row_bytes = self.width * (elt + (0 if elt == 4 else 4) + 8)
        self.layers = _config_int(model, "num_hidden_layers", 1)
        self.pair_bytes = elt + 8 * _config_int(model, "num_attention_heads", 1)

    def held(self, kv_slots: int, kv_bytes_per_slot: int, dists: int, nodes: int) -> int:
        """Bytes held by ``kv_slots`` KV slots, ``dists`` distributions and ``nodes`` tree nodes."""
        return kv_slots * kv_bytes_per_slot + dists * self.dist_bytes + nodes * NODE_BYTES

    def forward_cost(self, rows: int, kv_slots: int, kv_bytes_per_slot: int) -> int:
        """Bytes one forward of ``rows`` rows after ``kv_slots`` cached slots allocates."""
        total = kv_slots + rows
        return (
            rows * kv_bytes_per_slot
            + total * kv_bytes_per_slot // self.layers
            + rows * self.row_bytes
            + rows * total * self.pair_bytes
        )

    def affordable_rows(self, held: int, rows: int, extra: int, kv_slots: int, kv_bytes_per_slot: int) -> int:
        """How many of ``extra`` optional rows (look-ahead) fit next to ``rows`` required ones."""
        lo, hi = 0, extra
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if held + self.forward_cost(rows + mid, kv_slots, kv_bytes_per_slot) <= self.limit:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def check(self, held: int, rows: int, kv_slots: int, kv_bytes_per_slot: int, what: str) -> None:
        """Raise :class:`MemoryBoundError` when ``held`` + a forward of ``rows`` rows would
        exceed the bound; ``what`` says what the work is for (e.g. "12 live paths, canonical mode")."""
        need = self.forward_cost(rows, kv_slots, kv_bytes_per_slot)
        if held + need > self.limit:
            raise MemoryBoundError(
                f"ByteLM memory bound: a forward of {rows} rows after {kv_slots} KV slots needs about "
                f"{need / _MIB:.0f} MiB on top of {held / _MIB:.0f} MiB held ({what}), over "
                f"max_memory_bytes={self.limit} ({self.limit / _MIB:.0f} MiB); pass a larger "
                "max_memory_bytes, use canonical=True, a shorter input or a smaller max_paths"
            )
