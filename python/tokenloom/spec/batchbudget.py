"""The draft budget of a batch: how many of each row's tree nodes go into a batched step.

Every live row proposes its tree as alone; trees are prefix-closed in node order
(``parents[i] < i``), so the first ``k`` nodes of a tree are a tree again
(:meth:`~tokenloom.spec.base.DraftTree.prefix`; a sampled tree keeps each node's children in
their draw order, so a prefix is still verified losslessly). Each step :class:`BatchBudget`
picks every row's ``k_b`` (1 = the root alone: a plain step for that row):

* **Acceptance per node** (:class:`RowAcceptance`): each row keeps
  :class:`~tokenloom.spec.sizing.AcceptanceStats` (decayed counts, per depth and sibling rank,
  of where the accepted path went on, with a prior and depth pooling), learnt from its own
  verified steps; ``p_b(i)``, the probability that node ``i`` of row ``b``'s tree is on its
  accepted path, is the product of the rates along the node's path. Depths a cut tree never
  sent borrow the row's pooled rates, so a row whose drafts are accepted keeps earning its
  nodes. Deterministic: no random draw.
* **Expected tokens** of row ``b`` with ``k`` nodes: ``1 + sum_{1 <= i < k} p_b(i)`` (the
  accepted draft nodes plus the target's own token).
* **Cost**: the forward of a batch pads every row's tree to the widest
  (:func:`~tokenloom.runtime.treeattn.batch_tree_forward`), so a step costs what a forward of
  ``rows x W`` tokens costs, ``W = max_b k_b``: the measured curve of
  :func:`~tokenloom.spec.sizing.calibrate_step_cost` with ``rows`` = the batch's rows (a
  batched forward timed by the same machinery). Once rows have finished, the curve is read at
  the same total token count (``W x live / rows``), plus an offset learnt from the steps as
  they run (:meth:`BatchBudget.timed`: attention over long caches, per-row verification).
* **Allocation** (:func:`allocate`): ``"auto"`` maximises expected tokens per second,
  ``sum_b E_b(k_b) / cost(max_b k_b)``; for a fixed width every row gains from all of its
  nodes up to it, so the optimum is ``k_b = min(W, T_b)`` for the best ``W``, found by a scan
  (``W = 1``, plain batched decoding, is always a candidate: on a machine where wider forwards
  cost too much the loop is plain batched decoding). An int ``N`` gives the batch at most ``N``
  draft nodes per step, to the rows whose nodes are most likely accepted (an exact max-plus
  allocation over the rows, no timing). ``0``: every row sends its root alone.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tokenloom.spec.sizing import AcceptanceStats

__all__ = [
    "BATCH_WIDTHS",
    "BatchBudget",
    "RowAcceptance",
    "allocate",
    "check_batch_budget",
    "sibling_ranks",
]

#: Tree widths (nodes per row, root included) the batched step-cost curve is measured at.
BATCH_WIDTHS = (1, 2, 3, 5, 9, 17)
#: Sibling ranks tracked per row.
RANKS = 8
#: Per-step decay of a row's counts, and the pseudo-observations of the depth-pooled rates
#: (and of :data:`~tokenloom.spec.sizing.RANK_PRIOR` in them): see
#: :class:`~tokenloom.spec.sizing.AcceptanceStats`.
DECAY = 0.98
PRIOR_WEIGHT = 4.0
#: Weight of each measured step in the budget's step-cost offset (:meth:`BatchBudget.timed`).
OFFSET_RATE = 0.25


def check_batch_budget(value: Any) -> Union[str, int, None]:
    """``batch_budget`` of :func:`tokenloom.generate`: ``"auto"``, None (off: every row sends its
    whole tree) or an int >= 0 (most draft nodes per step over the whole batch).

    Raises:
        ValueError: anything else.
    """
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    raise ValueError(f"batch_budget: expected 'auto', None or an int >= 0 (draft nodes per step), got {value!r}")


def sibling_ranks(parents: np.ndarray) -> np.ndarray:
    """int [T]: each node's index among its parent's children in node order (the root: 0)."""
    seen: Dict[int, int] = {}
    out = np.zeros(parents.shape[0], dtype=np.int64)
    for i, p in enumerate(parents.tolist()[1:], start=1):
        out[i] = seen.get(p, 0)
        seen[p] = out[i] + 1
    return out


class RowAcceptance:
    """Per row, :class:`~tokenloom.spec.sizing.AcceptanceStats` over sibling ranks: counts per
    depth ``d`` and rank ``r`` of "the accepted path went on from its node at depth ``d`` to
    that node's ``r``-th child" (in node order; -1 when a node with children sent ended it; the
    last accepted node of a cut tree, whose children were not sent, is not counted).

    Node ``i``'s estimate is the product of the rates along its path (as Token Recycling's
    template choice estimates its paths), so depths and ranks never sent borrow the row's
    depth-pooled rates and the prior instead of staying unknown.

    Args:
        rows: rows of the batch (the loop's row ids ``0..rows-1``).
        k: sibling ranks tracked (later siblings get probability 0).
    """

    def __init__(self, rows: int, k: int = RANKS):
        self.k = k
        self.stats = [AcceptanceStats(k=k, decay=DECAY, prior_weight=PRIOR_WEIGHT) for _ in range(rows)]

    def observe(self, row: int, parents: np.ndarray, path: Sequence[int]) -> None:
        """Row ``row`` sent a tree of ``parents`` (int [T]) and accepted ``path`` (node
        indices, root first)."""
        ranks = sibling_ranks(parents)
        steps = [int(ranks[int(i)]) for i in path[1:]]
        last = int(path[-1])
        if bool((parents == last).any()):  # its children were sent and none was accepted
            steps.append(-1)
        self.stats[row].observe(steps)

    def probabilities(self, row: int, parents: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """float [T]: the estimated probability that each node of row ``row``'s tree
        (``parents``, ``depths`` int [T]) is on its accepted path (1 for the root)."""
        rates = self.stats[row].rates()
        top = rates.shape[0] - 1
        ranks = sibling_ranks(parents)
        out = np.ones(parents.shape[0])
        for i in range(1, parents.shape[0]):
            p = int(parents[i])
            r = int(ranks[i])
            out[i] = out[p] * (rates[min(int(depths[p]), top), r] if r < self.k else 0.0)
        return out


def allocate(
    gains: Sequence[np.ndarray], cost: Optional[Callable[[int], float]] = None, limit: Optional[int] = None
) -> Tuple[List[int], Dict[str, float]]:
    """Every row's node count for one batched step.

    Args:
        gains: one float array [T_b] per row, non-decreasing: ``gains[b][k - 1]`` is the
            expected tokens of row ``b`` with its first ``k`` nodes (``gains[b][0]``: the root
            alone).
        cost: ``cost(W)``, seconds of a step whose widest row has ``W`` nodes (needed when
            ``limit`` is None).
        limit: None: maximise ``sum_b gains[b][k_b - 1] / cost(max_b k_b)``; an int >= 0:
            maximise ``sum_b gains[b][k_b - 1]`` with at most ``limit`` draft nodes in all,
            ``sum_b (k_b - 1) <= limit``. Ties go to fewer nodes.

    Returns:
        (k, info): ``k[b]`` in ``[1, T_b]``; info ``{"width", "draft_nodes",
        "expected_tokens", "step_seconds"}`` (``step_seconds`` 0 without a cost).
    """
    sizes = [int(np.asarray(g).shape[0]) for g in gains]
    if not sizes or min(sizes) < 1:
        raise ValueError("allocate: expected one non-empty gains array per row")
    if limit is None:
        if cost is None:
            raise ValueError("allocate: limit=None needs the step cost")
        best: Optional[Tuple[float, int]] = None
        for w in range(1, max(sizes) + 1):
            rate = sum(float(g[min(w, t) - 1]) for g, t in zip(gains, sizes)) / cost(w)
            if best is None or rate > best[0] * (1 + 1e-12):
                best = (rate, w)
        assert best is not None
        k = [min(best[1], t) for t in sizes]
    else:
        k = _best_under(gains, sizes, int(limit))
    info = {
        "width": float(max(k)),
        "draft_nodes": float(sum(k) - len(k)),
        "expected_tokens": float(sum(float(g[x - 1]) for g, x in zip(gains, k))),
        "step_seconds": float(cost(max(k))) if cost is not None else 0.0,
    }
    return k, info


def _best_under(gains: Sequence[np.ndarray], sizes: List[int], limit: int) -> List[int]:
    """Max-plus allocation: ``k`` maximising ``sum gains[b][k_b - 1]`` with
    ``sum (k_b - 1) <= limit`` (ties: fewer nodes, then earlier rows)."""
    n = min(limit, sum(sizes) - len(sizes))
    neg = -np.inf
    best = np.full(n + 1, neg)
    best[0] = 0.0
    choice: List[np.ndarray] = []
    for g, t in zip(gains, sizes):
        g = np.asarray(g, dtype=np.float64)
        extra = min(t - 1, n)
        # table[m, j]: best[m - j] + g[j] (j extra nodes for this row, m nodes so far)
        used = np.arange(n + 1)[:, None] - np.arange(extra + 1)[None, :]
        prev = np.where(used >= 0, best[np.clip(used, 0, n)], neg)
        table = prev + g[: extra + 1][None, :]
        pick = np.argmax(table, axis=1)  # first max: the fewest nodes for this row
        best = table[np.arange(n + 1), pick]
        choice.append(pick)
    total = int(np.argmax(best))  # the fewest nodes among the best sums
    k = [0] * len(sizes)
    for b in range(len(sizes) - 1, -1, -1):
        nodes = int(choice[b][total])
        k[b] = nodes + 1
        total -= nodes
    return k


class BatchBudget:
    """The draft budget of one batched run (:func:`tokenloom.spec.loop.speculative_decode_batch`).

    Args:
        rows: rows of the batch.
        limit: None for ``"auto"`` (needs ``cost``) or the most draft nodes per step (int >= 0).
        cost: for ``"auto"``: the batched step-cost curve measured at ``rows`` rows
            (``cost(W)``: seconds of a forward of ``rows x W`` tokens).
    """

    def __init__(self, rows: int, limit: Optional[int] = None, cost: Optional[Callable[[float], float]] = None):
        if limit is None and cost is None:
            raise ValueError("BatchBudget: 'auto' needs the batched step cost")
        self.rows = rows
        self.limit = limit
        self.cost = cost
        self.acceptance = RowAcceptance(rows)
        self.offset = 0.0
        self._predicted: Optional[float] = None
        self.proposed = 0
        self.sent = 0
        self.steps = 0

    def widths(self, live: Sequence[int], trees: Sequence[Any]) -> List[int]:
        """``k_b`` for the live rows ``live`` (the loop's row ids) and their proposed ``trees``
        (:class:`~tokenloom.spec.base.DraftTree`)."""
        sizes = [t.size for t in trees]
        gains = [np.cumsum(self.acceptance.probabilities(b, t.parents, t.depths)) for b, t in zip(live, trees)]
        cost = None
        if self.limit is None:  # "auto": the curve at the same total tokens, plus the learnt offset
            scale = len(live) / self.rows
            curve, offset = self.cost, self.offset
            cost = lambda w: curve(w * scale) + offset  # noqa: E731
        k, info = allocate(gains, cost, self.limit)
        if cost is not None:
            self._predicted = info["step_seconds"] - self.offset  # the curve's own prediction
        self.steps += 1
        self.proposed += sum(sizes) - len(sizes)
        self.sent += sum(k) - len(k)
        return k

    def timed(self, seconds: float) -> None:
        """The step just chosen took ``seconds`` (its forward, verification and compaction).

        The calibrated curve is a forward at a fixed context; a real step also pays what grows
        with the context and the batch (attention over every row's cache, the cache's append)
        and the per-row verification. That difference hardly depends on the tree width, so it
        is learnt as an additive offset (a decayed mean of measured minus predicted seconds)
        that every width's cost gets: the choice follows the steps as they run here."""
        if self._predicted is None or not np.isfinite(seconds) or seconds <= 0:
            return
        self.offset += OFFSET_RATE * ((seconds - self._predicted) - self.offset)
        self._predicted = None

    def observe(self, row: int, tree: Any, path: Sequence[int]) -> None:
        """Row ``row`` sent ``tree`` (a DraftTree) and accepted ``path`` (node indices)."""
        self.acceptance.observe(row, tree.parents, path)

    def stats(self) -> Dict[str, Any]:
        """``{"batch_budget", "draft_nodes_proposed", "draft_nodes_sent", "budget_steps",
        "step_offset_ms"}``."""
        return {
            "batch_budget": "auto" if self.limit is None else self.limit,
            "step_offset_ms": round(self.offset * 1e3, 3),
            "draft_nodes_proposed": self.proposed,
            "draft_nodes_sent": self.sent,
            "budget_steps": self.steps,
        }
