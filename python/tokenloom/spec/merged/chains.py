"""The merged drafter in chain form (:class:`~tokenloom.spec.base.ChainDrafter`), for serving
stacks that verify chains from token histories (vLLM's proposer,
:mod:`tokenloom.integrations.vllm.proposer`): ``merged`` (suffix matches and recycled
candidates) and ``suffix`` (suffix matches alone), :class:`MergedChains`; the factories of the
chain-drafter table (:mod:`tokenloom.spec.chains`) are :func:`merged_chains` and
:func:`suffix_chains`."""

from __future__ import annotations

import inspect
import threading
from typing import Any, Dict, List, Optional

import numpy as np

from tokenloom._arrays import as_count, as_fraction, as_ids
from tokenloom.spec.merged.calibration import Calibration
from tokenloom.spec.merged.drafter import DEFAULT_MAX_MATCH, MergedDrafter
from tokenloom.spec.recycling.chains import RecyclingChains
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.suffix.store import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, MAX_MATCH, SuffixCache

__all__ = ["MERGED_OPTIONS", "MergedChains", "SUFFIX_OPTIONS", "merged_chains", "suffix_chains"]


class _Request:
    """One request's state in :class:`MergedChains`: its merged drafter (history, suffix index,
    last proposal), the history length that proposal was made for (-1: none) and its chain."""

    __slots__ = ("drafter", "proposed_at", "chain")

    def __init__(self, drafter: MergedDrafter):
        self.drafter = drafter
        self.proposed_at = -1
        self.chain: List[int] = []


class MergedChains:
    """The best chain of the merged drafter (``merged``) or of suffix matches alone (``suffix``).

    Per request (the state :meth:`start` returns): a
    :class:`~tokenloom.spec.merged.drafter.MergedDrafter` in chain mode over the request's
    history (prompt + output, indexed in its own suffix trie). Shared by every request: the
    cross-request :class:`~tokenloom.spec.suffix.store.SuffixCache` (bounded; a request's output
    joins it when the request leaves the batch, :meth:`finish`), one acceptance
    :class:`~tokenloom.spec.merged.calibration.Calibration` (learnt at every accepted position
    of every request) and, ``merged``, Token Recycling's matrix (a :class:`~tokenloom.spec.recycling.chains.RecyclingChains`,
    with its update rules). Each step grows the merged tree (suffix continuations and recycled
    candidates, each scored by its calibrated probability of being the target's next token,
    ``budget`` nodes best first, depth <= ``num_tokens``) and proposes its best path
    (:func:`~tokenloom.spec.merged.drafter.top_path`: the most expected accepted tokens).

    Args:
        vocab_size: the target's vocabulary. num_tokens: longest chain proposed.
        recycled: add Token Recycling's candidates (``merged``) or not (``suffix``).
        k: candidates per recycler row. recycler: a TokenRecycler to share (``merged``).
        seed_prompt: seed unknown recycler rows from each new request's prompt bigrams.
        budget: tree nodes grown per step before the best path is taken (default
            ``4 * num_tokens``).
        token_cost: the expected accepted tokens a draft token must be worth to be proposed
            (in [0, 1]; 0, the default: the chain of the most expected accepted tokens; higher
            values give shorter, surer chains, for targets whose verification cost grows with
            the chain).
        max_match: longest context suffix matched. index_depth: longest substring indexed.
        cache: a :class:`SuffixCache` to share; None (default) a new one with the caps below;
            False: no cross-request cache.
        cache_bytes: memory cap of the new cache (>= 4096). cache_requests: most requests it
            keeps (None: only the memory cap).

    Raises:
        ValueError: a size out of range, ``cache_bytes`` below 4096. TypeError: an option of
            the wrong type.
    """

    wants_topk = True

    def __init__(
        self,
        vocab_size: int,
        num_tokens: int,
        *,
        recycled: bool = True,
        k: int = 8,
        recycler: Optional[TokenRecycler] = None,
        seed_prompt: bool = True,
        budget: Optional[int] = None,
        token_cost: float = 0.0,
        max_match: int = DEFAULT_MAX_MATCH,
        index_depth: int = DEFAULT_MAX_DEPTH,
        cache: Any = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_requests: Optional[int] = None,
    ):
        self.vocab_size = as_count(vocab_size, "vocab_size", 1)
        self.num_tokens = as_count(num_tokens, "num_tokens", 1)
        self.name = "merged" if recycled else "suffix"
        self.wants_topk = bool(recycled)
        self.recycling = RecyclingChains(vocab_size, num_tokens, k=k, recycler=recycler, seed_prompt=seed_prompt) if recycled else None
        if not recycled and recycler is not None:
            raise ValueError("recycler: the suffix chain drafter uses no recycler (use 'merged')")
        self.k = self.recycling.k if self.recycling is not None else 0
        self.budget = as_count(4 * self.num_tokens if budget is None else budget, "budget", 1)
        self.token_cost = as_fraction(token_cost, "token_cost")
        self.max_match = as_count(max_match, "max_match", 1, MAX_MATCH)
        self.index_depth = as_count(index_depth, "index_depth", 2)
        if cache is None:
            cache = SuffixCache(self.index_depth, as_count(cache_bytes, "cache_bytes", 1), cache_requests, vocab_size=self.vocab_size)
        elif cache is False:
            cache = None
        elif not isinstance(cache, SuffixCache):
            raise TypeError(f"cache: expected a SuffixCache, None (a new one) or False (none), got {type(cache).__name__}")
        if cache is not None:
            cache.check_vocab(self.vocab_size)
        self.cache: Optional[SuffixCache] = cache
        self.calibration = Calibration(k=self.k)
        self._lock = threading.Lock()
        self._counts = {"requests": 0, "finished": 0, "resynced": 0}

    def _drafter(self, history: np.ndarray, n_prompt: int) -> MergedDrafter:
        d = MergedDrafter(
            recycler=self.recycling.recycler if self.recycling is not None else None, cache=self.cache,
            budget=self.budget, max_depth=self.num_tokens, max_match=self.max_match, index_depth=self.index_depth,
            calibration=self.calibration, seed_prefill=False, chain=True, token_cost=self.token_cost,
        )
        d.begin(history.tolist(), n_prompt)
        return d

    def start(self, history: Any) -> _Request:
        history = as_ids(history, "history", self.vocab_size)
        if self.recycling is not None:
            self.recycling.start(history)
        with self._lock:
            self._counts["requests"] += 1
        return _Request(self._drafter(history, max(len(history) - 1, 0)))

    def observe(self, verified: Any, emitted: Any, topk: Optional[Any], state: Any = None) -> None:
        verified = as_ids(verified, "verified", self.vocab_size)
        emitted = as_ids(emitted, "emitted", self.vocab_size)
        if topk is not None:
            topk = as_ids(topk, "topk", self.vocab_size, 2)
        if not 1 <= emitted.shape[0] <= verified.shape[0]:
            raise ValueError(f"emitted: expected 1 to {verified.shape[0]} tokens (one per verified token), got {emitted.shape[0]}")
        if self.recycling is not None:
            self.recycling.observe(verified, emitted, topk)
        if state is None:
            return
        d = state.drafter
        with self._lock:
            # The calibration learns from the proposal this step verified (none: the row
            # proposed nothing for this history); the request's tokens always extend its index.
            m = verified.shape[0] - 1
            fresh = state.proposed_at == len(d.seq) and verified[1:].tolist() == state.chain[:m]
            d.learn(range(emitted.shape[0]) if fresh else [], emitted)
            state.proposed_at = -1

    def propose(self, history: Any, max_tokens: int, state: Any = None) -> List[int]:
        history = as_ids(history, "history", self.vocab_size)
        n = min(as_count(max_tokens, "max_tokens", 0), self.num_tokens)
        if n <= 0 or len(history) == 0:
            return []
        with self._lock:
            if state is None:  # a one-off history: a throwaway request state
                state = _Request(self._drafter(history, len(history)))
            d = state.drafter
            if len(d.seq) != len(history) or d.seq[-1] != int(history[-1]):
                d.begin(history.tolist(), min(d.n_prompt, len(history)))  # out of step: re-index
                self._counts["resynced"] += 1
            tree = d.propose(int(history[-1]), len(history))
            state.proposed_at = len(d.seq)
            state.chain = [int(t) for t in tree.tokens[1:]]
        return state.chain[:n]

    def finish(self, state: Any) -> None:
        """The request left the batch: its output (the history after its first ``start``)
        joins the cross-request cache."""
        if state is None:
            return
        with self._lock:
            state.drafter.finish()
            self._counts["finished"] += 1

    def stats(self) -> Dict[str, Any]:
        req, cache, rec = self.calibration.summary()
        out: Dict[str, Any] = dict(self._counts)
        out["hit_rates"] = {"request": req, "cache": cache, "recycled": rec}
        if self.cache is not None:
            out["cache"] = {"requests": len(self.cache), "tokens": self.cache.num_tokens, "bytes": self.cache.memory_bytes,
                            "max_bytes": self.cache.max_bytes, "evicted": self.cache.evicted}
        if self.recycling is not None:
            out.update(self.recycling.stats())
        return out


#: The options of ``merged`` (every keyword of :class:`MergedChains` but ``recycled``).
MERGED_OPTIONS = tuple(
    p.name for p in inspect.signature(MergedChains).parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "recycled"
)
#: The options of ``suffix`` (no recycler).
SUFFIX_OPTIONS = tuple(o for o in MERGED_OPTIONS if o not in ("k", "recycler", "seed_prompt"))


def _build(name: str, recycled: bool, allowed: Any, vocab_size: int, num_tokens: int, options: Dict[str, Any]) -> MergedChains:
    """:class:`MergedChains` for the table entry ``name``, its options checked first."""
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"chain drafter {name!r}: unknown options {bad}; expected some of {sorted(allowed)}")
    return MergedChains(vocab_size, num_tokens, recycled=recycled, **options)


def suffix_chains(vocab_size: int, num_tokens: int, **options: Any) -> MergedChains:
    """``suffix``: :class:`MergedChains` without recycled candidates (options:
    :data:`SUFFIX_OPTIONS`).

    Raises:
        ValueError: an option not in :data:`SUFFIX_OPTIONS` (the message lists them), a bad value.
    """
    return _build("suffix", False, SUFFIX_OPTIONS, vocab_size, num_tokens, options)


def merged_chains(vocab_size: int, num_tokens: int, **options: Any) -> MergedChains:
    """``merged``: :class:`MergedChains` with recycled candidates (options:
    :data:`MERGED_OPTIONS`).

    Raises:
        ValueError: an option not in :data:`MERGED_OPTIONS` (the message lists them), a bad value.
    """
    return _build("merged", True, MERGED_OPTIONS, vocab_size, num_tokens, options)
