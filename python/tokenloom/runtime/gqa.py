"""Grouped-query attention with a mask, without copying the keys and values per query head.

A tree step passes a 4D mask (its tree and, in a batch, each row's window). With a mask,
transformers' ``sdpa`` attention repeats every key/value head once per query head of its group
(``repeat_kv``: a copy of the whole cache, every layer, every step) before calling
``scaled_dot_product_attention`` (transformers 5.x avoids it for one query token only). For the
embedded model (9 query heads on 3 key/value heads) in a batch of 8 rows with ~700 cached slots
that copy and the 3x larger attention read cost ~100 ms of a ~240 ms step on the 2-core AMD
machine (measured: ``benches/experiments/gqa_attention.py``).

:func:`grouped_sdpa` computes the same attention with the query heads of a group folded into the
query length: query ``[B, H, T, D]`` -> ``[B, H_kv, (H / H_kv) * T, D]`` (head ``h = g * n + r``
sits in group ``g``), the mask repeated ``H / H_kv`` times along the query axis, keys and values
read once, as stored. The result equals ``repeat_kv`` + SDPA up to the kernel's summation order.
Anything else (no mask, a mask per head, dropout, softcap, attention sinks, position bias, no
grouping) goes to transformers' own ``sdpa`` function.

:func:`grouped_attention` installs it for transformers' ``"sdpa"`` attention for the duration
of a ``with`` block (a local override of ``ALL_ATTENTION_FUNCTIONS``, removed on exit; nested
and concurrent blocks share one installation). tokenloom's forwards (:mod:`.treeattn`,
:mod:`.prefill`) run inside it; a model loaded with another attention (``eager``, flash) is
untouched.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator, Optional, Tuple

__all__ = ["grouped_attention", "grouped_sdpa", "one_forward"]

_LOCK = threading.Lock()
_DEPTH = [0]
_SAVED: list = []

#: keyword arguments of an attention call that the grouped path does not handle
_UNHANDLED = ("softcap", "sinks", "s_aux", "position_bias", "head_mask")


def _original() -> Any:
    """The ``sdpa`` function the block replaced (a caller's own override, else transformers')."""
    if _SAVED and _SAVED[0] is not None:
        return _SAVED[0]
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def grouped_sdpa(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: Optional[float] = None,
    is_causal: Optional[bool] = None,
    **kwargs: Any,
) -> Tuple[Any, None]:
    """transformers' ``sdpa`` attention function, grouped-query without ``repeat_kv``.

    Args:
        module: the attention module (its ``num_key_value_groups``); query: [B, H, T, D];
            key, value: [B, H_kv, S, D]; attention_mask: [B or 1, 1, T, >= S] (additive float or
            bool), or None.

    Returns:
        (attn_output [B, T, H, D], None), as transformers' ``sdpa_attention_forward``.
    """
    import torch

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    simple = (
        groups > 1
        and attention_mask is not None
        and isinstance(attention_mask, torch.Tensor)
        and attention_mask.dim() == 4
        and attention_mask.shape[1] == 1
        and not (dropout and getattr(module, "training", False))
        and not any(kwargs.get(k) is not None for k in _UNHANDLED)
        and not kwargs.get("output_attentions", False)
        and query.dim() == 4
        and key.shape[1] * groups == query.shape[1]
    )
    if not simple:
        return _original()(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs)
    b, h, t, d = query.shape
    kv_heads, s = key.shape[1], key.shape[2]
    mask = attention_mask[:, :, :, :s]
    if mask.shape[0] != b:
        mask = mask.expand(b, 1, t, s)
    q = query.reshape(b, kv_heads, groups * t, d)
    if t > 1:  # one query token: its mask row broadcasts over the group's heads as it is
        mask = _grouped_mask(attention_mask, mask, groups)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, dropout_p=0.0, scale=scaling)
    return out.reshape(b, h, t, d).transpose(1, 2).contiguous(), None


class _StepMasks(threading.local):
    """This thread's grouped masks within :func:`one_forward` (none outside): the source mask
    (kept alive, so its ``id`` is not reused), the shape asked for and ``groups`` -> the
    repeated mask."""

    depth = 0
    key: Optional[tuple] = None
    value: Any = None


_STEP = _StepMasks()


@contextlib.contextmanager
def one_forward() -> Iterator[None]:
    """Marks one forward of a model: within it every layer's attention gets the same mask
    tensor, unchanged, so :func:`grouped_sdpa` repeats it once and reuses the copy (30 copies of
    [1, 1, 3T, S] per step on the embedded model, ~1.5 ms of a 17-token tree step on the 2-core
    Xeon). The copy is dropped when the outermost block exits."""
    _STEP.depth += 1
    try:
        yield
    finally:
        _STEP.depth -= 1
        if _STEP.depth == 0:
            _STEP.key = _STEP.value = None


def _grouped_mask(source: Any, mask: Any, groups: int) -> Any:
    """``mask.repeat(1, 1, groups, 1)``; inside :func:`one_forward`, made once per source mask
    and slice (an inference tensor has no version counter to tell a change: the block's
    contract is that the mask does not change within one forward)."""
    if _STEP.depth == 0:
        return mask.repeat(1, 1, groups, 1)
    key = (tuple(mask.shape), groups)
    last = _STEP.key
    if last is not None and last[0] is source and last[1:] == key:
        return _STEP.value
    value = mask.repeat(1, 1, groups, 1)
    _STEP.key, _STEP.value = (source, *key), value
    return value


@contextlib.contextmanager
def grouped_attention() -> Iterator[None]:
    """Within the block, transformers' ``"sdpa"`` attention runs :func:`grouped_sdpa`."""
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # pragma: no cover - transformers without the attention interface
        yield
        return
    with _LOCK:
        if _DEPTH[0] == 0:
            local = getattr(ALL_ATTENTION_FUNCTIONS, "_local_mapping", None)
            _SAVED[:] = [local.get("sdpa") if isinstance(local, dict) else None]
            ALL_ATTENTION_FUNCTIONS["sdpa"] = grouped_sdpa
        _DEPTH[0] += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH[0] -= 1
            if _DEPTH[0] == 0:
                before = _SAVED[0] if _SAVED else None
                if before is not None:
                    ALL_ATTENTION_FUNCTIONS["sdpa"] = before
                else:
                    try:
                        del ALL_ATTENTION_FUNCTIONS["sdpa"]
                    except KeyError:  # pragma: no cover
                        pass
