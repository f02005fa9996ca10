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

__all__ = ["exact_rows", "exact_rows_active", "exact_rows_block", "grouped_attention", "grouped_sdpa", "one_forward"]

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

    if _EXACT.depth and _STEP.depth and _rows_apply(module, query, attention_mask, dropout, kwargs):
        plan = _per_forward(attention_mask, ("rows", int(key.shape[2])), lambda: _row_plan(attention_mask, int(key.shape[2])))
        if plan is not None:
            return _exact_rows_attention(module, query, key, value, plan, dropout, scaling, kwargs), None
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
    """What this thread derived from a forward's mask within :func:`one_forward` (nothing
    outside): ``source`` is the mask (kept alive, so its ``id`` is not reused) and ``made`` maps
    (what, shape, ...) to the derived value."""

    depth = 0
    source: Any = None
    made: Optional[dict] = None


_STEP = _StepMasks()


@contextlib.contextmanager
def one_forward() -> Iterator[None]:
    """Marks one forward of a model: within it every layer's attention gets the same mask
    tensor, unchanged, so what :func:`grouped_sdpa` derives from it (the grouped mask, the
    rows' visible slots under :func:`exact_rows`) is made for the first layer and reused by the
    others (the grouped mask alone: 30 copies of [1, 1, 3T, S] per step on the embedded model,
    ~1.5 ms of a 17-token tree step on the 2-core Xeon). Dropped when the outermost block exits."""
    _STEP.depth += 1
    try:
        yield
    finally:
        _STEP.depth -= 1
        if _STEP.depth == 0:
            _STEP.source = _STEP.made = None


def _per_forward(source: Any, key: tuple, make: Any) -> Any:
    """``make()``; inside :func:`one_forward`, made once per source mask and ``key`` (an
    inference tensor has no version counter to tell a change: the block's contract is that the
    mask does not change within one forward)."""
    if _STEP.depth == 0:
        return make()
    if _STEP.source is not source or _STEP.made is None:
        _STEP.source, _STEP.made = source, {}
    made = _STEP.made
    if key not in made:
        made[key] = make()
    return made[key]


def _grouped_mask(source: Any, mask: Any, groups: int) -> Any:
    """``mask.repeat(1, 1, groups, 1)`` (once per forward, :func:`_per_forward`)."""
    return _per_forward(source, ("grouped", tuple(mask.shape), groups), lambda: mask.repeat(1, 1, groups, 1))


class _Exact(threading.local):
    depth = 0


_EXACT = _Exact()


@contextlib.contextmanager
def exact_rows() -> Iterator[None]:
    """Within the block (this thread), a step forward (:func:`one_forward`, i.e. tokenloom's
    ``step_logits``: not a prompt's prefill) of several query tokens with a 4D mask (a tree or
    chain step) computes each token's attention as the model's own one-token step would: one
    call of transformers' ``sdpa`` function per token, without a mask, over the slots that token
    sees (a slice when they are a prefix of the cache, else gathered in order), which is the
    call that token's greedy step makes once its ancestors are in the cache. With a linear
    kernel whose rows do not depend on the row count (tokenloom's tiles; in bfloat16 also
    oneDNN packed up to 32 rows, as measured on an AMX Xeon), a tree step's logits then equal the one-token steps' bit for bit, in bfloat16
    too, where a batched attention's summation order differs from the one-token kernel's by a
    rounding that flips near-ties. Costs one attention call per token and layer: a 17-token
    tree step of the embedded model took ~31% longer in bfloat16 on the 2-core Xeon.

    A mask with values other than "see" (0 or True) and "hide" (False, or <= half the dtype's
    most negative value) keeps the batched attention."""
    _EXACT.depth += 1
    try:
        yield
    finally:
        _EXACT.depth -= 1


def exact_rows_block(on: bool) -> Any:
    """:func:`exact_rows` when ``on``, else a block that changes nothing."""
    return exact_rows() if on else contextlib.nullcontext()


def exact_rows_active() -> bool:
    """Whether this thread is inside :func:`exact_rows`."""
    return _EXACT.depth > 0


def _rows_apply(module: Any, query: Any, mask: Any, dropout: float, kwargs: dict) -> bool:
    import torch

    return (
        isinstance(mask, torch.Tensor)
        and mask.dim() == 4
        and mask.shape[1] == 1
        and query.dim() == 4
        and query.shape[2] > 1
        and not (dropout and getattr(module, "training", False))
        and not any(kwargs.get(k) is not None for k in _UNHANDLED)
        and not kwargs.get("output_attentions", False)
    )


def _row_plan(mask: Any, s: int) -> Optional[list]:
    """For each mask row (batch row, query token): the slots it sees among the first ``s``, as
    an int n (slots 0..n-1: a slice) or a LongTensor of slot indices; None where the mask has
    values other than see / hide or a token sees nothing."""
    import numpy as np
    import torch

    m = mask[:, 0, :, :s]
    if m.dtype == torch.bool:
        see = m
    else:
        see = m == 0
        hide = m <= torch.finfo(m.dtype).min / 2
        if not bool((see | hide).all()):
            return None
    see_np = see.cpu().numpy()
    plan = []
    for rows in see_np:
        out = []
        for row in rows:
            idx = np.flatnonzero(row)
            if idx.size == 0:
                return None
            out.append(int(idx.size) if idx[-1] == idx.size - 1 else torch.as_tensor(idx, device=mask.device))
        plan.append(out)
    return plan


def _exact_rows_attention(module: Any, query: Any, key: Any, value: Any, plan: list, dropout: float, scaling: Any, kwargs: dict) -> Any:
    """[B, T, H, D]: every (batch row, token) through transformers' ``sdpa`` function alone."""
    import torch

    b, h, t, d = query.shape
    f = _original()
    outs = []
    for bb in range(b):
        rows = plan[bb if len(plan) > 1 else 0]
        kb, vb = key[bb : bb + 1], value[bb : bb + 1]
        for i, sel in enumerate(rows):
            if isinstance(sel, int):
                ki, vi = kb[:, :, :sel], vb[:, :, :sel]
            else:
                ki, vi = kb.index_select(2, sel), vb.index_select(2, sel)
            o, _ = f(module, query[bb : bb + 1, :, i : i + 1], ki, vi, None, dropout=dropout, scaling=scaling, **kwargs)
            outs.append(o)
    return torch.cat(outs, dim=1).reshape(b, t, h, d)


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
