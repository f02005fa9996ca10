"""The one speculative loop. Every speculative method is a :class:`~tokenloom.spec.base.Drafter`
driven by :func:`speculative_decode`::

    prefill ─► drafter.prefill(...)
    loop:  tree   = drafter.propose(root, past_len)          # a DraftTree
           logits = tree_forward(model, cache, tree)           # ONE target forward
           result = verifier(tree, logits)                     # greedy | deterministic | sampled
           compact_cache(cache, past_len, result.path)         # keep the accepted path
           drafter.accept(tree, result, logits)                # the drafter learns
           stats.observe(tree, result); sink.emit(result.tokens)

:func:`speculative_decode_batch` is the same loop over B left-padded requests: one drafter,
verifier and sink per row; each step puts every live row's tree into ONE forward
(:func:`~tokenloom.runtime.treeattn.batch_tree_forward`), verifies row by row and keeps each
row's accepted path (:func:`~tokenloom.runtime.kvcache.compact_rows`). A finished row leaves
the batch (:func:`~tokenloom.runtime.kvcache.select_rows`): it costs no more forward width.
The prompts are prefilled in groups of similar length
(:func:`~tokenloom.runtime.prefill.batch_prefill`), not as one padded forward.
With a :class:`~tokenloom.spec.batchbudget.BatchBudget`, each row sends only the first
``k_b`` nodes of its tree (the budget's choice, ``k_b = 1`` for every row is a plain step).
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional, Sequence

from tokenloom.request.config import DecodeConfig
from tokenloom.request.sink import TokenSink
from tokenloom.runtime.compat import cache_arg
from tokenloom.spec.base import Drafter, DraftTree, check_tree
from tokenloom.spec.batchbudget import BatchBudget
from tokenloom.spec.stats import SpecStats
from tokenloom.sampling.topk import argmax_ids
from tokenloom.verify.policy import TreeVerifier

__all__ = ["DrafterFactory", "speculative_decode", "speculative_decode_batch"]

#: ``factory(model, cfg, next_seed) -> Drafter``; ``next_seed()`` gives 63-bit seeds from the
#: request's generator (one ``seed`` fixes a run).
DrafterFactory = Callable[[Any, DecodeConfig, Callable[[], int]], Drafter]


def speculative_decode(model: Any, input_ids: Any, cfg: DecodeConfig, sink: TokenSink, factory: DrafterFactory) -> SpecStats:
    """Speculative decoding of one request with the drafter ``factory`` makes.

    Args:
        model: a Hugging Face causal LM (see :mod:`tokenloom.runtime.treeattn` for what a tree
            forward needs).
        input_ids: LongTensor [1, n], n >= 1.
        cfg: the validated request; sink: receives every step's tokens.
        factory: builds the drafter (after the verifier, so a seeded drafter draws its seed
            from the same generator first).

    Returns:
        SpecStats of the run (the drafter's own statistics in ``extra``).
    """
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import compact_cache
    from tokenloom.runtime.treeattn import tree_forward

    verifier = TreeVerifier(cfg)
    drafter = factory(model, cfg, verifier.next_seed)  # checks the method's arguments
    stats = SpecStats(drafter=getattr(drafter, "name", type(drafter).__name__))
    if sink.done:  # nothing to generate (max_new_tokens=0): no forward
        return stats
    cache = DynamicCache()
    n_prompt = int(input_ids.shape[1])
    keep = min(n_prompt, max(1, int(drafter.prefill_positions)))
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=keep, **cache_arg(model, cache))
    logits = out.logits[0].float()
    # The first token: the prefill's last row verifies a root-only tree (argmax or one draw).
    first = int(verifier(DraftTree.root_only(int(input_ids[0, -1])), logits[-1:]).tokens[-1])
    drafter.prefill(input_ids, first, cache, logits)
    del out, logits
    done = sink.emit([first])
    root, past = first, n_prompt
    clock = time.perf_counter
    while not done:
        t0 = clock()
        tree = drafter.propose(root, past)
        t1 = clock()
        bad = check_tree(tree)
        if bad:
            raise TypeError(bad)
        logits = tree_forward(model, cache, tree.tokens, tree.parents, tree.depths, past_len=past)
        result = verifier(tree, logits)
        compact_cache(cache, past, result.path)
        past += len(result.path)
        drafter.accept(tree, result, logits)
        stats.draft_seconds += t1 - t0
        stats.verify_seconds += clock() - t1
        stats.observe(tree, result)
        done = sink.emit(result.tokens.tolist())
        root = int(result.tokens[-1])
    return _finish(drafter, stats)


def speculative_decode_batch(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    cfgs: Sequence[DecodeConfig],
    sinks: Sequence[TokenSink],
    factory: DrafterFactory,
    budget: Optional[BatchBudget] = None,
) -> List[SpecStats]:
    """Speculative decoding of B left-padded requests in one loop, one drafter per row.

    Rows share what the drafters share across requests (the process-wide recycler, a suffix
    cache given to the method), as consecutive single requests do. A drafter's ``prefill``
    gets ``cache=None`` (the target cache holds every row; a drafter that would adopt it keeps
    its own). Row ``b``'s cache window, positions and masks: :mod:`tokenloom.runtime.kvcache`.

    Args:
        model: a Hugging Face causal LM (see :func:`~tokenloom.runtime.treeattn.batch_tree_forward`).
        input_ids: LongTensor [B, n], each row left-padded.
        attention_mask: LongTensor [B, n], 0 on the left padding then 1s (a row holds >= 1 token).
        cfgs: B validated requests (each with its own seed); sinks: one per row.
        factory: builds each row's drafter (after the row's verifier, as in :func:`speculative_decode`).
        budget: None: every row sends its whole tree; else each step's trees are cut to the
            node counts it chooses (:meth:`DraftTree.prefix`) and it learns from each row's
            accepted path. The drafters see the trees as verified.

    Returns:
        One SpecStats per row (``verify_seconds`` counts the shared steps the row took part in;
        with a budget, ``extra`` holds its counts).
    """
    from tokenloom.runtime.kvcache import cache_length, compact_rows
    from tokenloom.runtime.prefill import batch_prefill
    from tokenloom.runtime.treeattn import batch_tree_forward

    rows = int(input_ids.shape[0])
    verifiers = [TreeVerifier(c) for c in cfgs]
    drafters = [factory(model, cfgs[b], verifiers[b].next_seed) for b in range(rows)]
    stats = [SpecStats(drafter=getattr(d, "name", type(d).__name__)) for d in drafters]
    if all(s.done for s in sinks):  # nothing to generate: no forward
        return stats
    n = int(input_ids.shape[1])
    lengths = [int(x) for x in attention_mask.sum(dim=1).tolist()]
    starts = [n - m for m in lengths]
    wants = [min(m, max(1, int(d.prefill_positions))) for m, d in zip(lengths, drafters)]
    # the prompts run in groups of similar length: no forward computes much left padding
    cache, logits = batch_prefill(model, input_ids, attention_mask, wants)
    roots: List[int] = []
    live: List[int] = []
    for b in range(rows):
        own = logits[b]
        first = int(verifiers[b](DraftTree.root_only(int(input_ids[b, -1])), own[-1:]).tokens[-1])
        drafters[b].prefill(input_ids[b : b + 1, starts[b] :], first, None, own)
        roots.append(first)
        if not sinks[b].emit([first]):
            live.append(b)
        else:
            _finish(drafters[b], stats[b])
    del logits
    ends = [n] * rows
    live_starts, live_ends = _select(cache, list(range(rows)), live, starts, ends)
    clock = time.perf_counter
    while live:
        trees = []
        for b in live:
            t0 = clock()
            tree = drafters[b].propose(roots[b], ends[b] - starts[b])
            stats[b].draft_seconds += clock() - t0
            bad = check_tree(tree)
            if bad:
                raise TypeError(bad)
            trees.append(tree)
        if budget is not None:
            widths = budget.widths(live, trees)
            trees = [t.prefix(k) for t, k in zip(trees, widths)]
        t1 = clock()
        past = cache_length(cache)
        logits = batch_tree_forward(
            model, cache, [t.tokens for t in trees], [t.parents for t in trees], [t.depths for t in trees],
            starts=live_starts, ends=live_ends,
        )
        # Greedy rows need only the argmax: one host copy for the whole batch.
        top = argmax_ids(logits) if cfgs[0].greedy else None
        results = [
            verifiers[b](tree, logits[i, : tree.size], None if top is None else top[i, : tree.size])
            for i, (b, tree) in enumerate(zip(live, trees))
        ]
        live_ends = compact_rows(cache, past, live_ends, [r.path for r in results])
        seconds = clock() - t1
        if budget is not None:
            budget.timed(seconds)
        still: List[int] = []
        for i, (b, tree, result) in enumerate(zip(live, trees, results)):
            drafters[b].accept(tree, result, logits[i, : tree.size])
            if budget is not None:
                budget.observe(b, tree, result.path.tolist())
            ends[b] = live_ends[i]
            stats[b].verify_seconds += seconds
            stats[b].observe(tree, result)
            roots[b] = int(result.tokens[-1])
            if sinks[b].emit(result.tokens.tolist()):
                if budget is not None:
                    stats[b].extra.update(budget.stats())
                _finish(drafters[b], stats[b])
            else:
                still.append(b)
        del logits
        if len(still) < len(live):
            live_starts, live_ends = _select(cache, live, still, starts, ends)
            live = still
    return stats


def _select(cache: Any, rows: List[int], keep: List[int], starts: List[int], ends: List[int]) -> Any:
    """Keep the cache rows of ``keep`` (a subset of ``rows``, the cache's rows in order) and cut
    the left padding none of them needs; shifts ``starts`` / ``ends`` of the kept rows to match
    and returns the kept rows' windows ``(starts, ends)``."""
    from tokenloom.runtime.kvcache import select_rows

    if not keep:
        return [], []
    cut = min(starts[b] for b in keep)
    if keep != rows or cut:
        select_rows(cache, [rows.index(b) for b in keep], cut)
        for b in keep:
            starts[b] -= cut
            ends[b] -= cut
    return [starts[b] for b in keep], [ends[b] for b in keep]


def _finish(drafter: Drafter, stats: SpecStats) -> SpecStats:
    """A request ended: the drafter's statistics, then its optional ``finish()`` (e.g. persist
    what the drafter learned)."""
    stats.extra.update(drafter.stats())
    finish = getattr(drafter, "finish", None)
    if callable(finish):
        finish()
    return stats
