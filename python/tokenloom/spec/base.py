"""What every speculative method shares: the :class:`DraftTree` a drafter proposes, the
:class:`Drafter` protocol the one loop (:mod:`tokenloom.spec.loop`) drives, and its chain form,
:class:`ChainDrafter`, for serving stacks that verify chains from token histories (vLLM's
proposer; the table of chain drafters is :mod:`tokenloom.spec.chains`).

Tree format (flat, BFS-compatible): node 0 is the root (the newest token, not yet in the KV
cache), ``parents[0] == -1`` and ``0 <= parents[i] < i``; node ``i`` sits at position
``past_len + depths[i]``. A chain is the tree ``parents = [-1, 0, 1, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.verify.kernels import VerifyResult

__all__ = ["ChainDrafter", "DraftTree", "Drafter"]

_ROOT_PARENTS = np.array([-1], dtype=np.int64)
_ROOT_DEPTHS = np.zeros(1, dtype=np.int64)


@dataclass(frozen=True)
class DraftTree:
    """A drafted token tree.

    Attributes:
        tokens: int64 [T], the token of each node (``tokens[0]`` is the root).
        parents: int64 [T], ``parents[0] == -1``, ``0 <= parents[i] < i``.
        depths: int64 [T], root 0.
        draft_probs: None for a deterministic draft (the tree does not depend on a random draw:
            Token Recycling, n-gram lookup, greedy DySpec); for a sampled draft, float [T, V]
            (torch, any device): row ``i`` is the distribution node ``i``'s children were drawn
            from (zeros for leaves), which lossless verification needs. A node's children are
            listed in the order they were drawn (a batch's draft budget keeps the first nodes,
            :meth:`prefix`).
        replacement: for sampled drafts, whether siblings were drawn with replacement (False:
            without, e.g. Gumbel-top-k).
    """

    tokens: np.ndarray
    parents: np.ndarray
    depths: np.ndarray
    draft_probs: Any = None
    replacement: bool = True

    @property
    def size(self) -> int:
        """T, the nodes (root included)."""
        return int(self.tokens.shape[0])

    @property
    def sampled(self) -> bool:
        """Whether the draft was sampled (carries ``draft_probs``)."""
        return self.draft_probs is not None

    @classmethod
    def root_only(cls, root: int) -> "DraftTree":
        """The one-node tree (no draft): a plain decoding step."""
        return cls(np.array([int(root)], dtype=np.int64), _ROOT_PARENTS, _ROOT_DEPTHS)

    def prefix(self, k: int) -> "DraftTree":
        """The tree of the first ``k`` nodes (``1 <= k``; the whole tree when ``k >= T``).

        Nodes are prefix-closed (``parents[i] < i``), so this is a tree. A sampled tree keeps
        ``draft_probs[:k]``: a drafter lists each node's children in their draw order (the
        :class:`DraftTree` contract), so every node keeps its first children drawn, which
        lossless verification accepts as it does any number of draws.

        Raises:
            ValueError: ``k < 1``.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"DraftTree.prefix: expected k >= 1 nodes, got {k!r}")
        if k >= self.size:
            return self
        probs = None if self.draft_probs is None else self.draft_probs[:k]
        return DraftTree(self.tokens[:k], self.parents[:k], self.depths[:k], probs, self.replacement)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        kind = "sampled" if self.sampled else "deterministic"
        return f"DraftTree(T={self.size}, depth={int(self.depths.max(initial=0))}, {kind})"


@runtime_checkable
class Drafter(Protocol):
    """What :func:`tokenloom.spec.loop.speculative_decode` needs from a drafter.

    One drafter serves one request (it may share long-lived state, e.g. a
    :class:`~tokenloom.spec.recycling.recycler.TokenRecycler`, that is itself thread-safe).

    Attributes:
        name: a short name for statistics.
        prefill_positions: how many of the prompt's last positions' logits :meth:`prefill`
            wants (>= 1; the loop asks the prefill forward for that many).

    Optional: a ``finish()`` method, called once after the last step of a request (after
    :meth:`stats`), e.g. to persist what the drafter learned (:mod:`tokenloom.spec.persist`).
    """

    name: str
    prefill_positions: int

    def prefill(self, input_ids: "torch.Tensor", first_token: int, cache: Any, logits: "torch.Tensor") -> None:
        """Start a request. ``input_ids`` LongTensor [1, n] (the prompt), ``first_token`` the
        token chosen from the prefill (the first root), ``cache`` the target's KV cache (holding
        the prompt; the same object for the whole request; None when the request is a row of
        a batch, whose cache holds every row), ``logits`` float [m, V] of the
        prompt's last ``m = min(n, prefill_positions)`` positions."""
        ...

    def propose(self, root: int, past_len: int) -> DraftTree:
        """The tree to verify below ``root`` (the newest token; ``past_len`` tokens are cached)."""
        ...

    def accept(self, tree: DraftTree, result: "VerifyResult", logits: "torch.Tensor") -> None:
        """Learn from a verified step: ``result.path`` (accepted nodes from 0) and
        ``result.tokens`` (emitted: accepted draft tokens then the bonus token); ``logits``
        float [T, V] the target's output after every node of ``tree``. The target cache
        already holds the accepted path."""
        ...

    def stats(self) -> Dict[str, Any]:
        """Drafter-specific statistics for :attr:`tokenloom.GenerateStats.extra` (may be empty)."""
        ...


class ChainDrafter(Protocol):
    """A drafter in chain form, for serving stacks that verify chains from token histories
    (vLLM's ``custom_class`` proposer, :mod:`tokenloom.integrations.vllm.proposer`).

    A chain drafter serves a whole batch and every request in it: it keeps global state (Token
    Recycling's matrix, the cross-request suffix cache, the acceptance calibration) and
    receives, per step and per request, the committed history, what the target said about its
    last proposal and the request's own state (the object :meth:`start` returned). It never
    sees request ids: the caller keys per-request state by token history (rows may be
    reordered between steps) and says when a request left the batch (:meth:`finish`). Every
    input is checked whole before any state changes: token ids are ints in
    ``[0, vocab_size)`` (floats are refused, never truncated).

    Attributes:
        name: the registered name.
        wants_topk: whether :meth:`observe` uses the target's top-k ids (the caller then
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
        after every verified position, or None when the caller could not capture them."""
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


def check_tree(tree: Any, who: str = "propose") -> Optional[str]:
    """A message saying why ``tree`` is not a valid :class:`DraftTree` (None when it is)."""
    if not isinstance(tree, DraftTree):
        return f"{who}: expected a tokenloom.spec.base.DraftTree, got {type(tree).__name__}"
    t = tree.size
    for name in ("tokens", "parents", "depths"):
        a = getattr(tree, name)
        if not isinstance(a, np.ndarray) or a.dtype != np.int64 or a.shape != (t,):
            return f"{who}: tree.{name} must be int64 [{t}], got {getattr(a, 'dtype', type(a))} {getattr(a, 'shape', '')}"
    return None  # parents and depths are checked by the tree forward (runtime.treeattn)
