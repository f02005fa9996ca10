"""The prefill of a batch of left-padded prompts, without computing the padding.

One forward over ``input_ids`` [B, n] computes ``B x n`` tokens, however many of them are left
padding: prompts of 40 and 660 tokens cost as much as two of 660. A prompt's tokens are
compute-bound on a CPU (measured on the 2-core AMD machine with the embedded model: ~2 ms per
token, against ~60 ms for a one-token forward, which streams the weights once), so that padding
is most of the prefill of a mixed batch (8 Spec-Bench prompts of 40-660 tokens: 5,280 tokens
computed for 1,242 real ones).

:func:`prefill_groups` splits the rows (sorted by length) into groups that each run as one
forward, left-padded to the group's longest row: it minimises the modelled cost
``sum_g (call_tokens + rows_g x longest_g)`` exactly (a dynamic programme over the sorted
lengths), where ``call_tokens`` is what one more forward costs, in prompt tokens (the weight
stream of a call). :func:`batch_prefill` runs the groups and stacks their caches into the
batch's (:func:`tokenloom.runtime.kvcache.stack_rows`): row ``b`` holds the slots
``[n - lengths[b], n)``, as a padded prefill leaves it, so the batched loop runs unchanged.

Numerics: a row's logits are those of a forward of its group, not of the whole batch (the
same values up to the summation order of a matrix product of another shape; a row alone gets
exactly its single-request prefill).
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

from tokenloom._arrays import as_array, as_count

__all__ = ["CALL_TOKENS_ACCELERATOR", "CALL_TOKENS_CPU", "batch_prefill", "call_tokens", "prefill_groups"]

#: What one more forward call costs, in prompt tokens, on a CPU: a forward streams every weight
#: once (~60 ms for the embedded model on the 2-core AMD machine) and each prompt token costs
#: ~2 ms of arithmetic there, so ~30 tokens.
CALL_TOKENS_CPU = 32
#: The same on an accelerator, whose arithmetic is far cheaper per weight byte read: a call is
#: worth hundreds of prompt tokens.
CALL_TOKENS_ACCELERATOR = 512


def call_tokens(device: Any) -> int:
    """The ``call_tokens`` of :func:`prefill_groups` for a model on ``device``."""
    from tokenloom.device import is_accelerator

    return CALL_TOKENS_ACCELERATOR if is_accelerator(device) else CALL_TOKENS_CPU


def prefill_groups(lengths: Sequence[int], call_tokens: int) -> List[List[int]]:
    """Rows grouped for the prefill: the partition of the rows, in runs of the rows sorted by
    length, that minimises ``sum_g (call_tokens + len(g) * max(lengths[g]))``.

    Sorting first loses nothing: for any partition, regrouping the rows by rank keeps the
    number of groups and sizes, and never raises a group's longest row. Ties go to fewer
    groups.

    Args:
        lengths: int [B], each row's prompt tokens (>= 1).
        call_tokens: >= 0, the cost of one more forward in prompt tokens (0: each row alone
            unless rows share a length; large: one forward for all).

    Returns:
        The groups, each a list of row indices in ascending row order; groups ordered by their
        longest row.

    Raises:
        ValueError: no rows, a length < 1, a negative ``call_tokens``.
    """
    lens = as_array(lengths, "int64", "lengths", 1).tolist()
    c = as_count(call_tokens, "call_tokens", 0)
    if not lens or min(lens) < 1:
        raise ValueError(f"prefill_groups: expected one length >= 1 per row, got {lens}")
    order = sorted(range(len(lens)), key=lambda b: (lens[b], b))
    n = len(order)
    # best[j]: least cost of the first j sorted rows; a group (i, j] costs c + (j - i) * len[j-1]
    best = [0] * (n + 1)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        top = lens[order[j - 1]]
        # the least cost; ties: the largest group (the smallest i)
        best[j], cut[j] = min((best[i] + c + (j - i) * top, i) for i in range(j))
    groups: List[List[int]] = []
    j = n
    while j > 0:
        i = cut[j]
        groups.append(sorted(order[i:j]))
        j = i
    return groups[::-1]


def batch_prefill(
    model: Any, input_ids: Any, attention_mask: Any, keep: Sequence[int], tokens_per_call: Optional[int] = None
) -> Tuple[Any, List[Any]]:
    """Prefill B left-padded prompts in the groups of :func:`prefill_groups`.

    Args:
        model: a Hugging Face causal LM.
        input_ids: LongTensor [B, n], left-padded; attention_mask: LongTensor [B, n] of 0/1
            (left padding, each row >= 1 token).
        keep: int [B], logits rows wanted per row (its last ``keep[b]`` positions, 1 <= keep[b]
            <= its length).
        tokens_per_call: ``call_tokens`` of the grouping (None: :func:`call_tokens` of the
            model's device).

    Returns:
        (cache, logits): a ``DynamicCache`` of B rows and n slots, row ``b``'s entries in
        ``[n - lengths[b], n)`` (zeros before); ``logits[b]`` float32 [keep[b], V].
    """
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.compat import cache_arg
    from tokenloom.runtime.gqa import grouped_attention
    from tokenloom.runtime.kvcache import stack_rows
    from tokenloom.runtime.model import model_dtype_device

    n = int(input_ids.shape[1])
    lengths = [int(x) for x in attention_mask.sum(dim=1).tolist()]
    wants = [int(k) for k in keep]
    if len(wants) != len(lengths) or any(not (1 <= k <= m) for k, m in zip(wants, lengths)):
        raise ValueError(f"batch_prefill: expected keep[b] in [1, length of row b] for every row, got {wants} for {lengths}")
    c = call_tokens(model_dtype_device(model)[1]) if tokens_per_call is None else tokens_per_call
    groups = prefill_groups(lengths, c)
    caches: List[Any] = []
    logits: List[Any] = [None] * len(lengths)
    for rows in groups:
        width = max(lengths[b] for b in rows)
        idx = torch.tensor(rows, dtype=torch.long, device=input_ids.device)
        ids = input_ids.index_select(0, idx)[:, n - width :]
        mask = attention_mask.index_select(0, idx)[:, n - width :].long()
        cache = DynamicCache()
        args = dict(input_ids=ids, use_cache=True, logits_to_keep=max(wants[b] for b in rows), **cache_arg(model, cache))
        if len(rows) > 1 and bool((mask == 0).any()):
            args.update(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        with grouped_attention():
            out = model(**args)
        got = out.logits.float()
        for i, b in enumerate(rows):
            logits[b] = got[i, got.shape[1] - wants[b] :]
        caches.append(cache)
        del out, got
    return stack_rows(caches, groups, n), logits
