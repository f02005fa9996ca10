"""Chain drafters that work from token histories alone, for serving stacks that verify chains
(vLLM's ``custom_class`` proposer, :mod:`tokenloom.integrations.vllm.proposer`).

A chain drafter serves a whole batch and every request in it: it keeps global state (Token
Recycling's matrix, the cross-request suffix cache, the acceptance calibration) and receives,
per step and per request, the committed history, what the target said about its last proposal
and the request's own state (the object its :meth:`~ChainDrafter.start` returned). It never
sees request ids: the proposer keys per-request state by token history, so rows may be
reordered between steps, and tells the drafter when a request left the batch
(:meth:`~ChainDrafter.finish`).

Drafters: ``recycling`` (:class:`RecyclingChains`), ``suffix`` and ``merged``
(:class:`MergedChains`: the best chain of the engine's merged drafter,
:class:`~tokenloom.spec.suffix.drafter.MergedDrafter`, over the request's history, a bounded
cross-request :class:`~tokenloom.spec.suffix.store.SuffixCache` and, ``merged``, Token
Recycling's matrix). The table :data:`CHAIN_DRAFTERS` maps a name to a factory
``factory(vocab_size, num_tokens, **options) -> ChainDrafter``; :func:`register_chain_drafter`
adds one, :func:`make_chain_drafter` builds one by name with a clear error.

Every input is checked whole before any state changes: histories, verified and emitted tokens
and top-k rows are int ids in ``[0, vocab_size)`` (floats are refused, never truncated), and
``max_tokens`` an int >= 0.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from tokenloom._arrays import as_count, as_fraction, as_ids
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.suffix.calibration import Calibration
from tokenloom.spec.suffix.drafter import DEFAULT_MAX_MATCH, MergedDrafter
from tokenloom.spec.suffix.store import DEFAULT_CACHE_BYTES, DEFAULT_MAX_DEPTH, MAX_MATCH, SuffixCache
from tokenloom.spec.templates import chain_paths, compile_template

__all__ = [
    "CHAIN_DRAFTERS",
    "ChainDrafter",
    "MergedChains",
    "RecyclingChains",
    "chain_drafters",
    "make_chain_drafter",
    "register_chain_drafter",
]


class ChainDrafter(Protocol):
    """What the vLLM proposer needs from a drafter.

    Attributes:
        name: the registered name.
        wants_topk: whether :meth:`observe` uses the target's top-k ids (the proposer then
            captures them from the target model when it can).
    """

    name: str
    wants_topk: bool

    def start(self, history: np.ndarray) -> Any:
        """A request seen for the first time: ``history`` int [n] (prompt + first token).
        Returns the request's state (None when the drafter keeps none), handed back to
        :meth:`observe`, :meth:`propose` and :meth:`finish` for this request."""
        ...

    def observe(self, verified: np.ndarray, emitted: np.ndarray, topk: Optional[np.ndarray], state: Any = None) -> None:
        """One verified step of one request: ``verified`` int [m + 1] (the root, i.e. the token
        before the step, then the m proposed tokens), ``emitted`` int [a + 1] (the accepted
        proposals then the target's own token), ``topk`` int [m + 1, k] the target's top-k ids
        after every verified position, or None when the proposer could not capture them."""
        ...

    def propose(self, history: np.ndarray, max_tokens: int, state: Any = None) -> List[int]:
        """A chain of at most ``max_tokens`` tokens to follow ``history`` (int [n]); [] for none."""
        ...

    def finish(self, state: Any) -> None:
        """The request left the batch (finished, aborted or preempted): its last state."""
        ...

    def stats(self) -> Dict[str, Any]:
        """Drafter statistics (may be empty)."""
        ...


class RecyclingChains:
    """Token Recycling's rank-0 chains from one global adjacency matrix (shared by every
    request: the matrix is global across requests by design).

    Update rules, per verified step: with the target's top-k, the paper's rule (row of every
    verified token := the top-k after it); without, move-to-front (the emitted successor of each
    committed token goes to rank 0 of its row, the others shift down). A new request's prompt
    seeds rows never written before with its bigrams (move-to-front on unknown rows only).
    A chain stops at the first token whose row was never written (no guess from an empty row).

    Args:
        vocab_size: rows of the matrix (the target's vocabulary).
        num_tokens: longest chain proposed (vLLM's ``num_speculative_tokens``).
        k: candidates per row (the top-k of the update), 8 as in the paper.
        recycler: a :class:`~tokenloom.spec.recycling.recycler.TokenRecycler` to share (its
            ``vocab_size`` must match); default a new one.
        seed_prompt: seed unknown rows from each new request's prompt bigrams.
    """

    name = "recycling"
    wants_topk = True

    def __init__(
        self,
        vocab_size: int,
        num_tokens: int,
        *,
        k: int = 8,
        recycler: Optional[TokenRecycler] = None,
        seed_prompt: bool = True,
    ):
        vocab_size = as_count(vocab_size, "vocab_size", 1)
        self.num_tokens = as_count(num_tokens, "num_tokens", 1)
        if recycler is None:
            recycler = TokenRecycler(vocab_size, as_count(k, "k", 1), template=chain_paths(self.num_tokens))
        elif not isinstance(recycler, TokenRecycler):
            raise TypeError(f"recycler: expected a tokenloom.TokenRecycler, got {type(recycler).__name__}")
        elif recycler.vocab_size != vocab_size:
            raise ValueError(f"recycler: vocab_size {recycler.vocab_size} != the model's {vocab_size}")
        self.vocab_size = vocab_size
        self.recycler = recycler
        self.k = recycler.k
        self.seed_prompt = bool(seed_prompt)
        self._chain = compile_template(chain_paths(self.num_tokens))
        self._row = compile_template([[r] for r in range(self.k)])
        self._known = np.zeros(vocab_size, dtype=bool)
        self._lock = threading.Lock()
        self.topk_updates = 0
        self.mtf_updates = 0

    def row(self, token: int) -> np.ndarray:
        """int64 [k]: the candidates of ``token``, best first."""
        return self.recycler.draft(token, self._row).tokens[1:]

    def _move_to_front(self, tokens: Sequence[int], successors: Sequence[int], only_unknown: bool) -> None:
        """Move-to-front of checked ids; the rows are marked known once the matrix has them."""
        new: Dict[int, List[int]] = {}  # rows written so far in this call, in order
        for t, s in zip(tokens, successors):
            if only_unknown and self._known[t] and t not in new:
                continue
            old = new[t] if t in new else (self.row(t).tolist() if self._known[t] else [])
            new[t] = ([s] + [x for x in old if x != s] + [s] * self.k)[: self.k]
        if new:
            rows = np.asarray(list(new), dtype=np.int64)
            self.recycler.update(rows, np.asarray(list(new.values()), dtype=np.int64))
            self._known[rows] = True

    def start(self, history: Any) -> None:
        history = as_ids(history, "history", self.vocab_size)
        if self.seed_prompt and len(history) > 1:
            with self._lock:
                self._move_to_front(history[:-1].tolist(), history[1:].tolist(), only_unknown=True)

    def observe(self, verified: Any, emitted: Any, topk: Optional[Any], state: Any = None) -> None:
        verified = as_ids(verified, "verified", self.vocab_size)
        emitted = as_ids(emitted, "emitted", self.vocab_size)
        if topk is not None:
            topk = as_ids(topk, "topk", self.vocab_size, 2)
            if topk.shape[0] != verified.shape[0]:
                raise ValueError(f"topk: expected {verified.shape[0]} rows (one per verified token), got {topk.shape[0]}")
        with self._lock:
            if topk is not None:
                self.recycler.update(verified, topk[:, : self.k])
                self._known[verified] = True
                self.topk_updates += 1
            else:
                # Committed pairs: root -> emitted[0], emitted[j] -> emitted[j + 1].
                chain = np.concatenate([verified[:1], emitted])
                self._move_to_front(chain[:-1].tolist(), chain[1:].tolist(), only_unknown=False)
                self.mtf_updates += 1

    def propose(self, history: Any, max_tokens: int, state: Any = None) -> List[int]:
        history = as_ids(history, "history", self.vocab_size)
        n = min(as_count(max_tokens, "max_tokens", 0), self.num_tokens)
        if n <= 0 or len(history) == 0:
            return []
        root = int(history[-1])
        with self._lock:
            if not self._known[root]:
                return []
            chain = self.recycler.draft(root, self._chain).tokens[1 : n + 1]
            known = self._known[chain[:-1]] if len(chain) > 1 else np.zeros(0, dtype=bool)
        # Token j + 1 comes from token j's row: stop after the first token whose row is unknown.
        stop = int(np.argmin(known)) + 1 if len(known) and not known.all() else len(chain)
        return [int(t) for t in chain[:stop]]

    def finish(self, state: Any) -> None:
        """Nothing per request (the matrix is global)."""

    def stats(self) -> Dict[str, Any]:
        return {
            "known_rows": int(self._known.sum()),
            "topk_updates": self.topk_updates,
            "move_to_front_updates": self.mtf_updates,
        }


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
    :class:`~tokenloom.spec.suffix.drafter.MergedDrafter` in chain mode over the request's
    history (prompt + output, indexed in its own suffix trie). Shared by every request: the
    cross-request :class:`~tokenloom.spec.suffix.store.SuffixCache` (bounded; a request's output
    joins it when the request leaves the batch, :meth:`finish`), one acceptance
    :class:`~tokenloom.spec.suffix.calibration.Calibration` (learnt at every accepted position
    of every request) and, ``merged``, Token Recycling's matrix (a :class:`RecyclingChains`,
    with its update rules). Each step grows the merged tree (suffix continuations and recycled
    candidates, each scored by its calibrated probability of being the target's next token,
    ``budget`` nodes best first, depth <= ``num_tokens``) and proposes its best path
    (:func:`~tokenloom.spec.suffix.drafter.top_path`: the most expected accepted tokens).

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


def _keyword_options(factory: Callable[..., Any]) -> Optional[List[str]]:
    """The keyword options ``factory`` accepts (None: any, it takes ``**options``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def _check_options(name: str, options: Dict[str, Any], allowed: Sequence[str]) -> None:
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"chain drafter {name!r}: unknown options {bad}; expected some of {sorted(allowed)}")


_SUFFIX_OPTIONS = [o for o in _keyword_options(MergedChains) or [] if o not in ("recycled", "k", "recycler", "seed_prompt")]
_MERGED_OPTIONS = [o for o in _keyword_options(MergedChains) or [] if o != "recycled"]


def _suffix_chains(vocab_size: int, num_tokens: int, **options: Any) -> MergedChains:
    """``suffix``: :class:`MergedChains` without recycled candidates."""
    _check_options("suffix", options, _SUFFIX_OPTIONS)
    return MergedChains(vocab_size, num_tokens, recycled=False, **options)


def _merged_chains(vocab_size: int, num_tokens: int, **options: Any) -> MergedChains:
    """``merged``: :class:`MergedChains` with recycled candidates."""
    _check_options("merged", options, _MERGED_OPTIONS)
    return MergedChains(vocab_size, num_tokens, recycled=True, **options)


ChainFactory = Callable[..., ChainDrafter]

#: name -> factory(vocab_size, num_tokens, **options).
CHAIN_DRAFTERS: Dict[str, ChainFactory] = {"recycling": RecyclingChains, "suffix": _suffix_chains, "merged": _merged_chains}
_LOCK = threading.Lock()


def register_chain_drafter(name: str, factory: ChainFactory) -> None:
    """Make ``factory(vocab_size, num_tokens, **options) -> ChainDrafter`` available by ``name``
    (e.g. to the vLLM proposer's ``TOKENLOOM_VLLM_DRAFTER``).

    Raises:
        ValueError: an empty or non-string name. TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory: expected a callable, got {type(factory).__name__}")
    with _LOCK:
        CHAIN_DRAFTERS[name] = factory


def chain_drafters() -> List[str]:
    """Registered chain drafter names."""
    with _LOCK:
        return sorted(CHAIN_DRAFTERS)


def make_chain_drafter(name: str, vocab_size: int, num_tokens: int, **options: Any) -> ChainDrafter:
    """Build the chain drafter registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the known ones), an option the drafter
            does not take (the message lists those it takes), a bad option value.
    """
    with _LOCK:
        factory = CHAIN_DRAFTERS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown chain drafter {name!r}; expected one of {chain_drafters()}")
    allowed = _keyword_options(factory)
    if allowed is not None:
        _check_options(name, options, allowed)
    return factory(vocab_size, num_tokens, **options)
