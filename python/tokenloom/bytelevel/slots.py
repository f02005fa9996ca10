"""The KV cache of a ByteLM, as numbered *slots*: ``[0, c)`` hold the context ids, every later
slot one tree node (a token fed after its ancestors' slots), in whatever order the forwards fed
them. Built on the shared tree-attention and KV-cache code: masks from
:func:`tokenloom.runtime.treeattn.slot_attention_mask` / ``causal_attention_mask``, positions
from ``tree_position_ids``, and :func:`tokenloom.runtime.kvcache.keep_slots` /
``crop_cache`` to drop slots no live path needs; each forward is
:func:`tokenloom.runtime.slots.slot_forward`.

Device: inputs are created on the model's device and the logits stay there, as float32 (a
half-precision model's logits are converted; the distributions are float32 either way).
What crosses to the host is decided by :mod:`tokenloom.bytelevel.rows`.
"""

from __future__ import annotations

from typing import Any, List, Sequence

from tokenloom.runtime.kvcache import cache_length, cache_nbytes, crop_cache, keep_slots, kv_bytes_per_token
from tokenloom.runtime.model import model_dtype_device
from tokenloom.runtime.slots import slot_forward
from tokenloom.runtime.treeattn import causal_attention_mask, slot_attention_mask

__all__ = ["KVSlots"]


class KVSlots:
    """A ``DynamicCache`` whose entries are slots (see the module docstring).

    Args:
        model: a Hugging Face causal LM.
        pack: pre-packed CPU linears (:func:`tokenloom.runtime.cpupack.resolve_pack`).

    Attributes:
        n: slots in the cache.
        pack: whether forwards run with packed linears.
        bytes_per_slot: bytes one slot costs (from the config, then measured).
    """

    def __init__(self, model: Any, pack: Any = "auto") -> None:
        from tokenloom.runtime.cpupack import resolve_pack  # imports torch

        self.model = model
        self.pack = resolve_pack(model, pack)
        self.dtype, self.device = model_dtype_device(model)
        self.cache: Any = None
        self.n = 0
        self.bytes_per_slot = kv_bytes_per_token(model)

    def clear(self) -> None:
        """Drop the whole cache (its memory with it)."""
        self.cache = None
        self.n = 0

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots (no-op when there are fewer)."""
        if self.cache is not None and self.n > n:
            crop_cache(self.cache, n)
        self.n = min(self.n, n)

    def keep(self, slots: Sequence[int]) -> None:
        """Keep only ``slots`` (strictly increasing), renumbered ``0, 1, ...`` in that order."""
        if self.cache is None:
            return
        keep_slots(self.cache, slots)
        self.n = len(slots)

    def forward_context(self, ids: Sequence[int]) -> Any:
        """Feed the context ``ids`` as a causal chain into an empty cache.

        Returns:
            torch.float32 [len(ids), width] logits on the model's device.
        """
        self.clear()
        mask = causal_attention_mask(len(ids), 0, self.dtype, self.device)
        return self._run(list(ids), list(range(len(ids))), mask)

    def forward(self, tokens: List[int], positions: List[int], visible: List[List[int]], prefix_len: int) -> Any:
        """One forward of ``len(tokens)`` rows after the ``n`` cached slots.

        Args:
            tokens: int [q] row tokens.
            positions: int [q] their position ids.
            visible: per row, the slots it sees besides the shared prefix ``[0, prefix_len)``
                and itself: cached slots or earlier rows of this forward (row ``i`` gets slot
                ``n + i``).
            prefix_len: slots every row sees (the context).

        Returns:
            torch.float32 [q, width] logits on the model's device.
        """
        mask = slot_attention_mask(prefix_len, self.n, visible, self.dtype, self.device)
        return self._run(tokens, positions, mask)

    def logits_uncached(self, ids: Sequence[int]) -> Any:
        """Logits of a plain causal forward of ``ids`` that leaves the cache alone.

        Returns:
            torch.float32 [len(ids), width] on the model's device.
        """
        import torch

        from tokenloom.runtime.cpupack import packed_linears

        with torch.no_grad(), packed_linears(self.model, "auto" if self.pack else False):
            logits = self.model(torch.tensor([list(ids)], dtype=torch.long, device=self.device)).logits[0]
        return self._float_logits(logits)

    def _run(self, tokens: List[int], positions: List[int], mask: Any) -> Any:
        import torch
        from transformers import DynamicCache

        from tokenloom.runtime.cpupack import packed_linears

        if self.cache is None:
            self.cache = DynamicCache()
        with torch.no_grad(), packed_linears(self.model, "auto" if self.pack else False):
            logits, self.cache = slot_forward(self.model, self.cache, tokens, positions, mask, self.device)
        self.n += len(tokens)
        if self.n:
            self.bytes_per_slot = cache_nbytes(self.cache) // max(cache_length(self.cache), 1) or self.bytes_per_slot
        return self._float_logits(logits)

    def _float_logits(self, logits: Any) -> Any:
        """``logits`` as float32, checked to be where the model's parameters are.

        Raises:
            ValueError: the logits came back on another device (a model split over devices).
        """
        if logits.device != self.device:
            raise ValueError(
                f"the model's logits are on {logits.device} but its first parameters are on {self.device}: "
                "ByteLM needs a model on one device (move it with model.to(device))"
            )
        return logits.float()
