"""The one speculative loop. Every speculative method is a :class:`~tokenloom.spec.base.Drafter`
driven by :func:`speculative_decode`::

    prefill ─► drafter.prefill(...)
    loop:  tree   = drafter.propose(root, past_len)          # a DraftTree
           logits = tree_forward(model, cache, tree)           # ONE target forward
           result = verifier(tree, logits)                     # greedy | deterministic | sampled
           compact_cache(cache, past_len, result.path)         # keep the accepted path
           drafter.accept(tree, result, logits)                # the drafter learns
           stats.observe(tree, result); sink.emit(result.tokens)
"""

from __future__ import annotations

import time
from typing import Any, Callable

from tokenloom.request.config import DecodeConfig
from tokenloom.request.sink import TokenSink
from tokenloom.runtime.compat import cache_arg
from tokenloom.spec.base import Drafter, DraftTree, check_tree
from tokenloom.spec.stats import SpecStats
from tokenloom.verify.policy import TreeVerifier

__all__ = ["DrafterFactory", "speculative_decode"]

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
    stats.extra.update(drafter.stats())
    finish = getattr(drafter, "finish", None)
    if callable(finish):  # optional: the request ended (e.g. persist what the drafter learned)
        finish()
    return stats
