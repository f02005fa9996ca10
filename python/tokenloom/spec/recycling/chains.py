"""Token Recycling in chain form (:class:`~tokenloom.spec.base.ChainDrafter`): rank-0 chains
from one global adjacency matrix, for serving stacks that verify chains from token histories
(vLLM's proposer, :mod:`tokenloom.integrations.vllm.proposer`)."""

from __future__ import annotations

import threading
from typing import Any, Dict, List, Optional

import numpy as np

from tokenloom._arrays import as_count, as_ids
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.templates import chain_paths, compile_template

__all__ = ["RecyclingChains"]


class RecyclingChains:
    """Token Recycling's rank-0 chains from one global adjacency matrix (shared by every
    request: the matrix is global across requests by design).

    Update rules, per verified step (both run in the Rust core, checked whole before any row
    changes): with the target's top-k, the paper's rule (row of every verified token := the
    top-k after it, :meth:`TokenRecycler.update`); without, move-to-front (the emitted
    successor of each committed token goes to rank 0 of its row, the others shift down,
    :meth:`TokenRecycler.move_to_front`). A new request's prompt seeds rows never written
    before with its bigrams (move-to-front on unknown rows only). A chain stops at the first
    token whose row was never written (no guess from an empty row).

    Args:
        vocab_size: rows of the matrix (the target's vocabulary).
        num_tokens: longest chain proposed (vLLM's ``num_speculative_tokens``).
        k: candidates per row (the top-k of the update), 8 as in the paper.
        recycler: a :class:`~tokenloom.spec.recycling.recycler.TokenRecycler` to share (its
            ``vocab_size`` must match); default a new one.
        seed_prompt: seed unknown rows from each new request's prompt bigrams.

    Raises:
        ValueError: a size out of range, a recycler of another vocabulary size.
        TypeError: ``recycler`` is not a TokenRecycler.
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
            recycler = TokenRecycler(vocab_size, as_count(k, "k", 1))
        elif not isinstance(recycler, TokenRecycler):
            raise TypeError(f"recycler: expected a tokenloom.TokenRecycler, got {type(recycler).__name__}")
        elif recycler.vocab_size != vocab_size:
            raise ValueError(f"recycler: vocab_size {recycler.vocab_size} != the model's {vocab_size}")
        self.vocab_size = vocab_size
        self.recycler = recycler
        self.k = recycler.k
        self.seed_prompt = bool(seed_prompt)
        self._chain = compile_template(chain_paths(self.num_tokens))
        self._known = np.zeros(vocab_size, dtype=bool)
        self._lock = threading.Lock()
        self.topk_updates = 0
        self.mtf_updates = 0

    def row(self, token: int) -> np.ndarray:
        """int64 [k]: the candidates of ``token``, best first."""
        return self.recycler.rows(np.array([token], dtype=np.int64))[0].astype(np.int64)

    def _move_to_front(self, tokens: np.ndarray, successors: np.ndarray) -> None:
        """Move-to-front of checked ids (rows not known yet start empty); the rows are marked
        known once the matrix has them."""
        fresh = np.unique(tokens[~self._known[tokens]])
        self.recycler.move_to_front(tokens, successors, empty=fresh)
        self._known[tokens] = True

    def start(self, history: Any) -> None:
        history = as_ids(history, "history", self.vocab_size)
        if self.seed_prompt and len(history) > 1:
            with self._lock:
                unknown = ~self._known[history[:-1]]  # rows known before the call are kept
                self._move_to_front(history[:-1][unknown], history[1:][unknown])

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
                self._move_to_front(chain[:-1], chain[1:])
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
