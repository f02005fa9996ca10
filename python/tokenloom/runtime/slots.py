"""Slot-tree forwards, in one home: one forward of new rows, each at its own position id and
seeing the cache entries (slots) a 4D mask allows, appended to a KV cache. ByteLM's slots
(:class:`tokenloom.bytelevel.slots.KVSlots`) and cautious decoding's trials
(:mod:`tokenloom.decoding.cautious`) both run it; the masks come from
:func:`tokenloom.runtime.treeattn.slot_attention_mask` / ``prefix_tree_mask`` /
``causal_attention_mask``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence, Tuple

from tokenloom.runtime.compat import cache_arg, output_cache
from tokenloom.runtime.gqa import grouped_attention
from tokenloom.runtime.treeattn import tree_position_ids

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["slot_forward"]


def slot_forward(
    model: Any, cache: Any, tokens: Sequence[int], positions: Sequence[int], mask: "torch.Tensor", device: Any
) -> Tuple["torch.Tensor", Any]:
    """Feed ``tokens`` (int [q]) at ``positions`` (int [q]) under ``mask`` (additive, (1, 1, q,
    past + q)) after the ``past`` entries of ``cache``; the cache grows by q entries.

    Returns:
        ``(logits, cache)``: the model's logits [q, V] (its dtype, on its device) and the cache
        the forward returned (the same object for a ``DynamicCache``).
    """
    import torch

    with grouped_attention():
        out = model(
            input_ids=torch.tensor([list(tokens)], dtype=torch.long, device=device),
            position_ids=tree_position_ids(list(positions), 0, device),
            attention_mask=mask,
            use_cache=True,
            **cache_arg(model, cache),
        )
    return out.logits[0], output_cache(out)
