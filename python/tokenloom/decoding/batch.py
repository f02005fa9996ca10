"""Batches for :func:`tokenloom.generate`: B left-padded requests (``input_ids`` [B, n] with an
``attention_mask`` [B, n], as HF's ``generate`` takes them for decoder-only models) decoded in
one loop (:func:`tokenloom.spec.loop.speculative_decode_batch`), plain decoding included (its
trees are the root alone).

Each row is a request of its own: its own sink (stop rules), verifier and drafter, and its own
seed (row ``b``'s seed is the ``b``-th draw of a generator seeded with ``seed``; None gives every
row fresh entropy). The output keeps the input's left padding and pads the new tokens on the
right with the pad id; ``stats.rows`` holds each row's statistics.

How the cache handles rows of different lengths: :mod:`tokenloom.runtime.kvcache`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from tokenloom.decoding.plain import decode_plain, make_plain_drafter
from tokenloom.request.config import DecodeConfig
from tokenloom.request.sink import TokenSink
from tokenloom.request.stats import GenerateStats
from tokenloom.sampling.seeds import as_seed

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.spec.stats import SpecStats

__all__ = ["batch_factory", "batch_stats", "check_attention_mask", "decode_batch", "make_budget", "pad_id", "row_seeds"]


def check_attention_mask(input_ids: "torch.Tensor", attention_mask: Any, context: Optional[int]) -> "torch.Tensor":
    """``attention_mask`` as a bool tensor [B, n], checked against ``input_ids`` [B, n].

    A row is left-padded: zeros, then ones (at least one). ``context``: the model's longest
    sequence (None: unknown, not checked).

    Raises:
        TypeError: not a tensor. ValueError: another shape or device than ``input_ids``, values
            other than 0 / 1, right padding (a 0 after a 1), a row without a token, a row longer
            than ``context``.
    """
    import torch

    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask: expected a torch.Tensor [B, n] of 0/1, got {type(attention_mask).__name__}")
    if attention_mask.dim() == 1 and input_ids.shape[0] == 1:
        attention_mask = attention_mask.unsqueeze(0)
    if tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise ValueError(f"attention_mask: expected the shape of input_ids {list(input_ids.shape)}, got {list(attention_mask.shape)}")
    if attention_mask.device != input_ids.device:
        raise ValueError(f"attention_mask is on {attention_mask.device} but input_ids are on {input_ids.device}")
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        raise ValueError(f"attention_mask: expected an integer or bool tensor of 0/1, got {attention_mask.dtype}")
    m = attention_mask.long()
    if bool(((m != 0) & (m != 1)).any()):
        raise ValueError("attention_mask: expected only 0 (padding) and 1 (token)")
    empty = torch.nonzero(m.sum(dim=1) == 0).flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask: row {empty[0]} has no token (an all-zero row); every row needs at least one")
    right = torch.nonzero(m[:, 1:] < m[:, :-1])
    if right.numel():
        b, j = (int(x) for x in right[0])
        raise ValueError(
            f"attention_mask: row {b} has a 0 after a 1 (column {j + 1}): right padding; "
            "tokenloom takes left padding, as HF generate does for decoder-only models "
            "(tokenizer.padding_side = 'left')"
        )
    if context is not None:
        lengths = m.sum(dim=1)
        long_rows = torch.nonzero(lengths > context).flatten().tolist()
        if long_rows:
            b = long_rows[0]
            raise ValueError(f"input_ids: row {b} holds {int(lengths[b])} tokens, longer than the model's context ({context})")
    return m.bool()


def row_seeds(seed: Optional[int], rows: int) -> List[Optional[int]]:
    """The seeds of ``rows`` rows: the first ``rows`` draws (63-bit) of a generator seeded with
    ``seed`` (fresh entropy for every row when None)."""
    if seed is None:
        return [None] * rows
    rng = np.random.default_rng(as_seed(seed))
    return [int(s) for s in rng.integers(0, 2**63 - 1, size=rows)]


def pad_id(model: Any, pad_token_id: Any, eos: Sequence[int]) -> int:
    """The id that pads finished rows: ``pad_token_id``, else the model's generation config's,
    else the smallest stop token id, else 0.

    Raises:
        ValueError: ``pad_token_id`` is not an int >= 0.
    """
    from tokenloom._arrays import as_count

    if pad_token_id is not None:
        return as_count(pad_token_id, "pad_token_id", 0)
    pad = getattr(getattr(model, "generation_config", None), "pad_token_id", None)
    if isinstance(pad, (list, tuple)):
        pad = pad[0] if pad else None
    if isinstance(pad, int) and pad >= 0:
        return pad
    return int(list(eos)[0]) if len(eos) else 0


def batch_factory(method: str, fn: Any, kwargs: dict) -> Callable[..., Any]:
    """The per-row drafter factory of ``generate(method=...)`` on a batch.

    Raises:
        ValueError: a method that has no batch form (not plain and not a drafter run by the
            one loop, e.g. ``"cautious"`` or a method registered with ``register_method``).
    """
    if fn is decode_plain:
        return make_plain_drafter
    factory = getattr(fn, "factory", None)
    if factory is None:
        raise ValueError(
            f"method {method!r} takes one request at a time (input_ids [1, n]); batches (B > 1) run "
            "'plain' and the speculative methods (drafters run by the one loop)"
        )
    return lambda m, c, s: factory(m, c, s, **kwargs)


def decode_batch(
    model: Any,
    input_ids: "torch.Tensor",
    mask: "torch.Tensor",
    cfg: DecodeConfig,
    factory: Callable[..., Any],
    batch_budget: Union[str, int, None] = None,
) -> Tuple[List[TokenSink], List["SpecStats"]]:
    """Run the batched loop over ``input_ids`` [B, n] (``mask`` bool [B, n], left padding);
    returns the rows' sinks (their tokens and steps) and their speculative statistics.

    ``batch_budget`` (checked by :func:`~tokenloom.spec.batchbudget.check_batch_budget`): None
    sends every row's whole tree; an int caps the draft nodes per step; ``"auto"`` chooses them
    from the batched step cost, measured once per (model, machine, rows) by
    :func:`~tokenloom.spec.sizing.calibrate_step_cost` (``rows=B``) and saved
    (:mod:`tokenloom.spec.batchbudget`). Plain decoding has no draft: no budget, no timing."""
    from tokenloom.spec.loop import speculative_decode_batch

    rows = int(input_ids.shape[0])
    cfgs = [dataclasses.replace(cfg, seed=s) for s in row_seeds(cfg.seed, rows)]
    sinks = [TokenSink(c) for c in cfgs]
    budget = None if factory is make_plain_drafter else make_budget(model, rows, batch_budget)
    return sinks, speculative_decode_batch(model, input_ids, mask.long(), cfgs, sinks, factory, budget)


def make_budget(model: Any, rows: int, batch_budget: Union[str, int, None]) -> Any:
    """The :class:`~tokenloom.spec.batchbudget.BatchBudget` of ``batch_budget`` for ``rows``
    rows (None when off); ``"auto"`` measures (or loads) the batched step-cost curve."""
    from tokenloom.spec.batchbudget import BATCH_WIDTHS, BatchBudget, check_batch_budget

    value = check_batch_budget(batch_budget)
    if value is None:
        return None
    if value == "auto":
        from tokenloom.spec.sizing import calibrate_step_cost

        return BatchBudget(rows, None, calibrate_step_cost(model, BATCH_WIDTHS, rows=rows))
    return BatchBudget(rows, int(value))


def batch_stats(sinks: Sequence[TokenSink], specs: Sequence["SpecStats"], seconds: float, plain: bool) -> GenerateStats:
    """The batch's statistics: ``steps`` = batched target forwards (the longest row's),
    ``new_tokens`` = all rows' new tokens, ``rows`` = each row's own (its ``spec`` for a
    speculative method)."""
    rows = []
    for sink, spec in zip(sinks, specs):
        row = GenerateStats(steps=sink.steps, new_tokens=len(sink.tokens), spec=None if plain else spec)
        if not plain:
            row.extra.update(spec.as_dict())
            row.setup_seconds = float(row.extra.get("setup_seconds", 0.0) or 0.0)
        rows.append(row)
    setup = sum(r.setup_seconds for r in rows)
    for row in rows:  # the rows run together: each took the batch's decoding time
        row.seconds = max(seconds - setup, 0.0)
    stats = GenerateStats(
        steps=max(s.steps for s in sinks),
        new_tokens=sum(r.new_tokens for r in rows),
        seconds=max(seconds - setup, 0.0),
        setup_seconds=setup,
        rows=rows,
    )
    stats.extra.update(batch=len(rows), row_new_tokens=[r.new_tokens for r in rows])
    return stats
