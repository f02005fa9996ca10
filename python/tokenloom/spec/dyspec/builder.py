"""DySpec dynamic draft trees (arXiv 2410.11744): a thin layer over the Rust builder.

One speculative step with a draft model (see :mod:`tokenloom.spec.dyspec.drafts`)::

    builder = DynamicTreeBuilder(budget=32, max_depth=6, k=8)
    tree = builder.build(root_token, draft)      # one draft forward per depth
    # verify tree.tokens / tree.parents / tree.depths with one target tree forward, then
    draft.commit(emitted_tokens)

``build`` is the loop ``reset -> (frontier -> draft.expand -> expand)* -> tree``; call the
pieces yourself to interleave other work. Trees use tokenloom's flat format: node 0 is the
root (the last emitted token), ``parents[0] == -1``, ``parents[i] < i``, nodes in BFS order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

from tokenloom import _core
from tokenloom._arrays import as_array, as_int

__all__ = ["DraftModel", "DynamicTree", "DynamicTreeBuilder", "Frontier", "draft_probs_dense"]


class Frontier(NamedTuple):
    """Nodes whose draft distributions the next :meth:`DynamicTreeBuilder.expand` needs, best
    first; int64 arrays [F]. ``parents`` are builder ids (-1 for the root); the position id
    of a node in a forward is ``len(sequence) - 1 + depth``."""

    ids: np.ndarray
    tokens: np.ndarray
    parents: np.ndarray
    depths: np.ndarray

    @property
    def size(self) -> int:
        return int(self.ids.shape[0])


class DynamicTree(NamedTuple):
    """A draft tree, arrays [T] in BFS order (node 0 = root).

    ``tokens``, ``parents`` (``parents[0] == -1``, ``parents[i] < i``), ``depths``: int64.
    ``scores``: float64 path-probability estimate of each node (root 1.0).
    ``draft_rows``: int64, for each node the index of the draft row its children were chosen
    from, counted over every row given to ``expand`` since ``reset`` (in call order); -1 when
    the node was never expanded. For sampled drafts this row is the ``q`` the lossless
    verifier needs at that node (renormalised over the row's entries for top-k rows).
    ``node_ids``: int64 builder ids (the ids of :class:`Frontier`).
    """

    tokens: np.ndarray
    parents: np.ndarray
    depths: np.ndarray
    scores: np.ndarray
    draft_rows: np.ndarray
    node_ids: np.ndarray

    @property
    def size(self) -> int:
        """Number of nodes, the root included."""
        return int(self.tokens.shape[0])


class DraftModel(Protocol):
    """What :meth:`DynamicTreeBuilder.build` needs from a draft (see :mod:`tokenloom.spec.dyspec.drafts`)."""

    def expand(self, frontier: Frontier) -> Tuple[Any, Any]:
        """Top-k ``(ids [F, w], probs [F, w])`` of the draft distribution at every frontier node."""
        ...


class DynamicTreeBuilder:
    """Greedy DySpec tree builder, grown one depth per (batched) draft forward.

    Candidates sit in a max-heap keyed by the product of draft probabilities along their path.
    With ``sampled=False`` the children of a node are its top-``k`` draft tokens (greedy and
    deterministic-draft verification); with ``sampled=True`` they are drawn without replacement
    from the draft row (the distribution of Gumbel-top-k), seeded and reproducible, and the
    i-th sibling is keyed ``v * (1 - q(x_1) - ... - q(x_{i-1}))`` as in the paper. The tree is
    the ``budget`` best candidates; without ``max_frontier`` it is the top-``budget`` set of the
    whole top-k tree cut at ``max_depth`` (for deterministic drafts: the subtree-closed set of
    that size with the largest sum of path probabilities), reached in at most ``max_depth``
    draft forwards.

    Args:
        budget: most draft nodes per tree, the root excluded (>= 1); a verify forward then
            holds at most ``budget + 1`` tokens.
        max_depth: deepest node depth, root = 0 (>= 1).
        k: most children per node (>= 1).
        sampled: sample children (for lossless sampling with draft probabilities) instead of
            taking the top-k.
        seed: RNG seed in [0, 2**64) for sampled drafts; None draws one at random.
        vocab_size: when given, token ids are checked against it.
        max_frontier: most nodes per draft forward (best first; the rest stay leaves). None:
            the whole frontier (exact greedy).

    Raises:
        ValueError: a size below 1 or a seed outside [0, 2**64).
    """

    __slots__ = ("_b",)

    def __init__(
        self,
        budget: int,
        max_depth: int,
        *,
        k: int = 8,
        sampled: bool = False,
        seed: Optional[int] = None,
        vocab_size: Optional[int] = None,
        max_frontier: Optional[int] = None,
    ):
        # Sizes and the seed are checked by value in the compiled builder (TypeError for a
        # float or a string, ValueError out of range), never truncated here.
        self._b = _core.DynamicTreeBuilder(
            budget,
            max_depth,
            k=k,
            sampled=bool(sampled),
            seed=seed,
            vocab_size=vocab_size,
            max_frontier=max_frontier,
        )

    def reset(self, root_token: int) -> None:
        """Start a new tree rooted at ``root_token`` (the last emitted token); frontier = [root].

        Raises:
            IndexError: a negative id, or one >= ``vocab_size``.
            TypeError: ``root_token`` is not an int.
        """
        self._b.reset(as_int(root_token, "root_token"))

    def frontier(self) -> Frontier:
        """The nodes to evaluate in the next draft forward (empty once :attr:`done`)."""
        return Frontier(*self._b.frontier())

    def expand(self, node_ids: Any, topk_ids: Any, topk_probs: Any) -> None:
        """Give the draft distribution of every frontier node as top-k rows.

        Args:
            node_ids: int [n], a permutation of ``frontier().ids``; row r is node_ids[r]'s.
            topk_ids: int [n, w], candidate next tokens (distinct within a row).
            topk_probs: float [n, w], their draft probabilities in [0, 1]; each row sums to
                at most 1 (+1e-4). Zeros are ignored. Numpy arrays or torch tensors (CUDA
                tensors are copied to the host: pass only the top-k).

        Raises:
            ValueError: shapes, NaN / out-of-range probabilities, rows summing above 1,
                repeated tokens, ``node_ids`` not exactly the frontier, no tree yet.
            IndexError: unknown node ids, token ids < 0 or >= ``vocab_size``.
        """
        self._b.expand(
            as_array(node_ids, np.int64, "node_ids", 1),
            as_array(topk_ids, np.int64, "topk_ids", 2),
            as_array(topk_probs, np.float64, "topk_probs", 2),
        )

    def expand_rows(self, node_ids: Any, probs: Any) -> None:
        """Give full draft rows: ``probs`` float [n, V], the column being the token id.
        Costs O(V) per row; raises as :meth:`expand` (and ValueError if V != vocab_size)."""
        self._b.expand_rows(
            as_array(node_ids, np.int64, "node_ids", 1),
            as_array(probs, np.float64, "probs", 2),
        )

    def tree(self) -> DynamicTree:
        """The current tree (final once :attr:`done`): root + selected nodes, BFS order."""
        return DynamicTree(*self._b.tree())

    def build(self, root_token: int, draft: DraftModel) -> DynamicTree:
        """Grow a whole tree: ``reset(root_token)``, then ``draft.expand(frontier)`` and
        :meth:`expand` until the frontier is empty. Returns :meth:`tree`."""
        b = self._b
        b.reset(as_int(root_token, "root_token"))
        while not b.done:
            f = Frontier(*b.frontier())
            ids, probs = draft.expand(f)
            b.expand(
                f.ids,
                as_array(ids, np.int64, "topk_ids", 2),
                as_array(probs, np.float64, "topk_probs", 2),
            )
        return DynamicTree(*b.tree())

    def node(self, node_id: int) -> Tuple[int, int, int]:
        """``(token, parent_id, depth)`` of a created node. Raises IndexError if unknown."""
        return self._b.node(as_int(node_id, "node_id"))

    @property
    def done(self) -> bool:
        """True once the frontier is empty."""
        return self._b.done

    @property
    def num_nodes(self) -> int:
        """Nodes created since reset (root and every candidate)."""
        return self._b.num_nodes

    @property
    def rows_seen(self) -> int:
        """Draft rows received since reset (the range of ``DynamicTree.draft_rows``)."""
        return self._b.rows_seen

    @property
    def budget(self) -> int:
        return self._b.budget

    @property
    def max_depth(self) -> int:
        return self._b.max_depth

    @property
    def k(self) -> int:
        return self._b.k

    @property
    def sampled(self) -> bool:
        return self._b.sampled

    @property
    def seed(self) -> int:
        return self._b.seed

    @property
    def vocab_size(self) -> Optional[int]:
        return self._b.vocab_size

    @property
    def max_frontier(self) -> Optional[int]:
        return self._b.max_frontier

    def __repr__(self) -> str:
        return repr(self._b)


def draft_probs_dense(tree: DynamicTree, rows: Sequence[Tuple[Any, Any]], vocab_size: int) -> "torch.Tensor":
    """The per-node draft distributions ``q`` [T, V] that a lossless verifier of a *sampled*
    tree needs (``verify_tree(..., draft_probs=q, replacement=False)``).

    Args:
        tree: the builder's tree.
        rows: the ``(topk_ids [n, w], topk_probs [n, w])`` pairs given to ``expand`` since
            ``reset``, in call order (torch tensors or arrays; one width w for all calls).
        vocab_size: V.

    Returns:
        FloatTensor [T, V] on the device of the rows: for node i with ``draft_rows[i] = r >= 0``
        the top-k row r renormalised over its entries (the distribution the builder drew
        node i's children from), zeros for nodes never expanded.

    Raises:
        ValueError: ``rows`` hold fewer rows than ``tree.draft_rows`` refers to.
    """
    import torch

    ids = torch.cat([torch.as_tensor(i, dtype=torch.long) for i, _ in rows]) if rows else torch.zeros(0, 1, dtype=torch.long)
    probs = torch.cat([torch.as_tensor(p).float() for _, p in rows]) if rows else torch.zeros(0, 1)
    r = torch.as_tensor(tree.draft_rows, dtype=torch.long, device=ids.device)
    if int(r.max()) >= ids.shape[0]:
        raise ValueError(f"rows: tree.draft_rows refers to row {int(r.max())}, got {ids.shape[0]} rows")
    q = torch.zeros(tree.size, vocab_size, dtype=torch.float32, device=ids.device)
    have = (r >= 0).nonzero().flatten()
    if have.numel():
        sel = probs[r[have]]
        q[have.unsqueeze(1), ids[r[have]]] = sel / sel.sum(-1, keepdim=True).clamp_min(1e-30)
    return q
