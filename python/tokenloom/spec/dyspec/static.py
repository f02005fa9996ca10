"""Static tree shapes filled from a draft model, driven like DySpec's dynamic builder so the
dynamic tree, a fixed tree and a chain run through one drafter and compare on equal terms."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array
from tokenloom.sampling.seeds import as_seed, check_seed
from tokenloom.spec.dyspec.builder import DynamicTree, Frontier
from tokenloom.spec.templates import nested_template_order

__all__ = ["StaticTreeBuilder", "fixed_tree_paths"]


def fixed_tree_paths(budget: int, max_depth: int, k: int) -> List[List[int]]:
    """The static comparison tree: the first ``budget`` rank paths of Token Recycling's nested
    "2.2.2" order with depth <= ``max_depth`` and ranks < ``k`` (subtree-closed, ordered by a
    prior acceptance estimate). Fewer when the template runs out."""
    paths = [p for p in nested_template_order() if len(p) <= max_depth and max(p) < k]
    return paths[:budget]


class StaticTreeBuilder:
    """A fixed tree shape filled from a draft, with :class:`~tokenloom.spec.dyspec.builder.DynamicTreeBuilder`'s
    protocol (``reset``, ``done``, ``frontier``, ``expand``, ``tree``), so one loop drives both.

    Node ``(r1, ..., rm)`` is the ``rm``-th child of node ``(r1, ..., r(m-1))``: its top-``rm``
    draft token (``sampled=False``) or its ``rm``-th draw without replacement from the draft
    row renormalised over its entries (``sampled=True``, Gumbel-top-k, as the dynamic builder).
    Every node with children in the shape is forwarded, one depth per forward. The draws come
    from the core's counter-based generator, as every draw of tokenloom: the Gumbel noise of
    column ``j`` of node ``n``'s row is ``_core.uniforms(seed, stream, n << 32 | j)``, the
    stream counting the trees (:meth:`reset` calls), as the dynamic builder's.

    Args:
        paths: rank paths, subtree-closed; with ``sampled=True`` the ranks of siblings must be
            ``0..c-1`` (children are the first ``c`` draws).
        sampled: draw children instead of taking the top-k.
        seed: seed of the draws, in [0, 2**64) (None: fresh entropy).

    Raises:
        ValueError: an empty, duplicate, negative or not subtree-closed path set; a seed
            outside [0, 2**64). TypeError: a seed that is not an int.
    """

    def __init__(self, paths: Sequence[Sequence[int]], *, sampled: bool = False, seed: Optional[int] = None):
        ps = sorted({tuple(int(r) for r in p) for p in paths}, key=lambda p: (len(p), p))
        if not ps or len(ps) != len(paths) or any(len(p) == 0 or min(p) < 0 for p in ps):
            raise ValueError(f"paths: expected distinct non-empty rank paths with ranks >= 0, got {paths!r}")
        have = set(ps)
        self._children: Dict[Tuple[int, ...], List[int]] = {}
        for p in ps:
            if len(p) > 1 and p[:-1] not in have:
                raise ValueError(f"paths: not subtree-closed, {list(p)} without its parent {list(p[:-1])}")
            self._children.setdefault(p[:-1], []).append(p[-1])
        if sampled:
            for pre, ranks in self._children.items():
                if sorted(ranks) != list(range(len(ranks))):
                    raise ValueError(f"paths: sampled children of {list(pre)} must have ranks 0..c-1, got {ranks}")
        self.sampled = bool(sampled)
        self.budget = len(ps)
        self.max_depth = max(len(p) for p in ps)
        self.k = max(max(p) for p in ps) + 1
        s = check_seed(seed)
        if s is not None and not 0 <= s < 1 << 64:
            raise ValueError(f"seed: expected an int in [0, 2**64), got {s}")
        self.seed = as_seed(s)
        self._trees = 0
        self.reset(0)

    def reset(self, root_token: int) -> None:
        self._trees += 1  # the stream of this tree's draws
        self._tok: List[int] = [int(root_token)]
        self._par: List[int] = [-1]
        self._dep: List[int] = [0]
        self._path: List[Tuple[int, ...]] = [()]
        self._row: List[int] = [-1]
        self._score: List[float] = [1.0]
        self._rows = 0
        self._front: List[int] = [0]

    @property
    def done(self) -> bool:
        return not self._front

    @property
    def rows_seen(self) -> int:
        return self._rows

    def frontier(self) -> Frontier:
        f = self._front
        return Frontier(
            np.array(f, dtype=np.int64),
            np.array([self._tok[i] for i in f], dtype=np.int64),
            np.array([self._par[i] for i in f], dtype=np.int64),
            np.array([self._dep[i] for i in f], dtype=np.int64),
        )

    def expand(self, node_ids: Any, topk_ids: Any, topk_probs: Any) -> None:
        """Children of every frontier node from its top-k row (the frontier order)."""
        nodes = as_array(node_ids, np.int64, "node_ids", 1)
        ids = as_array(topk_ids, np.int64, "topk_ids", 2)
        probs = as_array(topk_probs, np.float64, "topk_probs", 2)
        if nodes.tolist() != self._front:
            raise ValueError(f"node_ids: expected the frontier {self._front}, got {nodes.tolist()}")
        if ids.shape != probs.shape or ids.shape[0] != nodes.shape[0]:
            raise ValueError(f"topk_ids / topk_probs: expected shapes [{nodes.shape[0]}, w], got {ids.shape} and {probs.shape}")
        if not np.all(np.isfinite(probs)) or probs.min(initial=0.0) < 0 or probs.max(initial=0.0) > 1:
            raise ValueError("topk_probs: expected finite probabilities in [0, 1] (NaN or out of range)")
        new: List[int] = []
        for r, n in enumerate(self._front):
            ranks = self._children.get(self._path[n], [])
            row = probs[r]
            if self.sampled:
                pos = np.nonzero(row > 0)[0]
                gumbel = np.log(row[pos]) - np.log(-np.log(self._uniforms(n, pos.size)))
                order = pos[np.argsort(-gumbel, kind="stable")].tolist()
            else:
                order = list(range(row.size))
            for rank in ranks:
                if rank >= len(order):
                    continue  # the row has fewer candidates: the branch stays out
                j = order[rank]
                self._tok.append(int(ids[r, j]))
                self._par.append(n)
                self._dep.append(self._dep[n] + 1)
                self._path.append(self._path[n] + (rank,))
                self._row.append(-1)
                self._score.append(self._score[n] * float(row[j]))
                if self._path[-1] in self._children:
                    new.append(len(self._tok) - 1)
            self._row[n] = self._rows + r
        self._rows += len(self._front)
        self._front = new

    def _uniforms(self, node: int, m: int) -> np.ndarray:
        """float64 [m]: the counter-based uniforms of node ``node``'s draws in this tree."""
        streams = np.full(m, self._trees, dtype=np.uint64)
        counters = (np.uint64(node) << np.uint64(32)) | np.arange(m, dtype=np.uint64)
        return _core.uniforms(self.seed, streams, counters)

    def tree(self) -> DynamicTree:
        n = len(self._tok)
        return DynamicTree(
            np.array(self._tok, dtype=np.int64),
            np.array(self._par, dtype=np.int64),
            np.array(self._dep, dtype=np.int64),
            np.array(self._score, dtype=np.float64),
            np.array(self._row, dtype=np.int64),
            np.arange(n, dtype=np.int64),
        )
