"""Chain drafters that work from token histories alone, for serving stacks that verify chains
(vLLM's ``custom_class`` proposer, :mod:`tokenloom.integrations.vllm.proposer`).

A chain drafter serves a whole batch and every request in it: it keeps global state (Token
Recycling's matrix) and receives, per step and per request, the committed history and what
the target said about its last proposal. It never sees request ids: the proposer keys
per-request state by token history, so rows may be reordered between steps.

The table :data:`CHAIN_DRAFTERS` maps a name to a factory ``factory(vocab_size, num_tokens,
**options) -> ChainDrafter``; :func:`register_chain_drafter` adds one (the merged / suffix drafter
joins here when it lands), :func:`make_chain_drafter` builds one by name with a clear error.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence

import numpy as np

from tokenloom._arrays import as_array, as_count
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.templates import chain_paths, compile_template

__all__ = [
    "CHAIN_DRAFTERS",
    "ChainDrafter",
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

    def start(self, history: np.ndarray) -> None:
        """A request seen for the first time: ``history`` int [n] (prompt + first token)."""
        ...

    def observe(self, verified: np.ndarray, emitted: np.ndarray, topk: Optional[np.ndarray]) -> None:
        """One verified step of one request: ``verified`` int [m + 1] (the root, i.e. the token
        before the step, then the m proposed tokens), ``emitted`` int [a + 1] (the accepted
        proposals then the target's own token), ``topk`` int [m + 1, k] the target's top-k ids
        after every verified position, or None when the proposer could not capture them."""
        ...

    def propose(self, history: np.ndarray, max_tokens: int) -> List[int]:
        """A chain of at most ``max_tokens`` tokens to follow ``history`` (int [n]); [] for none."""
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
        return self.recycler.draft(int(token), self._row).tokens[1:]

    def _move_to_front(self, tokens: Sequence[int], successors: Sequence[int], only_unknown: bool) -> None:
        new: Dict[int, List[int]] = {}  # rows written so far in this call, in order
        for t, s in zip(tokens, successors):
            t, s = int(t), int(s)
            if only_unknown and self._known[t] and t not in new:
                continue
            old = new[t] if t in new else (self.row(t).tolist() if self._known[t] else [])
            new[t] = ([s] + [x for x in old if x != s] + [s] * self.k)[: self.k]
            self._known[t] = True
        if new:
            self.recycler.update(np.asarray(list(new), dtype=np.int64), np.asarray(list(new.values()), dtype=np.int64))

    def start(self, history: np.ndarray) -> None:
        if self.seed_prompt and len(history) > 1:
            with self._lock:
                self._move_to_front(history[:-1].tolist(), history[1:].tolist(), only_unknown=True)

    def observe(self, verified: np.ndarray, emitted: np.ndarray, topk: Optional[np.ndarray]) -> None:
        verified = as_array(verified, np.int64, "verified", 1)
        emitted = as_array(emitted, np.int64, "emitted", 1)
        with self._lock:
            if topk is not None:
                topk = as_array(topk, np.int64, "topk", 2)
                if topk.shape[0] != verified.shape[0]:
                    raise ValueError(f"topk: expected {verified.shape[0]} rows (one per verified token), got {topk.shape[0]}")
                self.recycler.update(verified, topk[:, : self.k])
                self._known[verified] = True
                self.topk_updates += 1
            else:
                # Committed pairs: root -> emitted[0], emitted[j] -> emitted[j + 1].
                chain = np.concatenate([verified[:1], emitted])
                self._move_to_front(chain[:-1].tolist(), chain[1:].tolist(), only_unknown=False)
                self.mtf_updates += 1

    def propose(self, history: np.ndarray, max_tokens: int) -> List[int]:
        n = min(int(max_tokens), self.num_tokens)
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

    def stats(self) -> Dict[str, Any]:
        return {
            "known_rows": int(self._known.sum()),
            "topk_updates": self.topk_updates,
            "move_to_front_updates": self.mtf_updates,
        }


ChainFactory = Callable[..., ChainDrafter]

#: name -> factory(vocab_size, num_tokens, **options). The merged / suffix drafter registers here.
CHAIN_DRAFTERS: Dict[str, ChainFactory] = {"recycling": RecyclingChains}
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
        ValueError: an unknown name (the message lists the known ones).
    """
    with _LOCK:
        factory = CHAIN_DRAFTERS.get(name) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown chain drafter {name!r}; expected one of {chain_drafters()}")
    return factory(vocab_size, num_tokens, **options)
