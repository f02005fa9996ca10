"""The draft budget of a batch: how many of each row's tree nodes go into a batched step.

Every live row proposes its tree as alone; trees are prefix-closed in node order
(``parents[i] < i``), so the first ``k`` nodes of a tree are a tree again
(:meth:`~tokenloom.spec.base.DraftTree.prefix`; a sampled tree keeps each node's children in
their draw order, so a prefix is still verified losslessly). Each step :class:`BatchBudget`
picks every row's ``k_b`` (1 = the root alone: a plain step for that row):

* **Acceptance per node index** (:class:`NodeAcceptance`): for row ``b`` and node index ``i``,
  exponentially decayed counts of "node ``i`` was sent" and "node ``i`` was on the accepted
  path". The estimate ``p_b(i)`` shrinks the row's rate towards the batch's pooled rate at
  ``i``, which shrinks towards the prior :func:`prior_rate` (``PRIOR_FIRST / i``). The decay lets
  an index that is no longer sent drift back to the pooled / prior rate, so a trimmed row is
  tried again when the batch's evidence says it pays. Deterministic: no random draw.
* **Expected tokens** of row ``b`` with ``k`` nodes: ``1 + sum_{1 <= i < k} p_b(i)`` (the
  accepted draft nodes plus the target's own token).
* **Cost**: the forward of a batch pads every row's tree to the widest
  (:func:`~tokenloom.runtime.treeattn.batch_tree_forward`), so a step costs what a forward of
  ``rows x W`` tokens costs, ``W = max_b k_b``: the measured curve of
  :func:`~tokenloom.spec.sizing.calibrate_step_cost` with ``rows`` = the batch's rows (a
  batched forward timed by the same machinery). Once rows have finished, the curve is read at
  the same total token count (``W x live / rows``).
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

__all__ = [
    "BATCH_WIDTHS",
    "BatchBudget",
    "NodeAcceptance",
    "allocate",
    "check_batch_budget",
    "prior_rate",
]

#: Tree widths (nodes per row, root included) the batched step-cost curve is measured at.
BATCH_WIDTHS = (1, 2, 3, 5, 9, 17)
#: Prior probability that node 1 is accepted; node ``i`` gets ``PRIOR_FIRST / i``.
PRIOR_FIRST = 0.5
#: Node indices tracked (deeper nodes share the last index's counts).
MAX_NODES = 128
#: Per-step decay of the counts, and the pseudo-observations of the pooled rate in a row's
#: estimate (and of the prior in the pooled rate).
DECAY = 0.95
PRIOR_WEIGHT = 2.0


def prior_rate(n: int) -> np.ndarray:
    """float [n]: the prior acceptance rate of node indices ``0..n-1`` (1 for the root)."""
    i = np.arange(n, dtype=np.float64)
    out = PRIOR_FIRST / np.maximum(i, 1.0)
    out[:1] = 1.0
    return out


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


class NodeAcceptance:
    """Decayed counts, per row and node index, of "sent" and "on the accepted path".

    Args:
        rows: rows of the batch (indexed as the loop's row ids ``0..rows-1``).
        max_nodes: node indices tracked; deeper ones share the last.
        decay, prior_weight: see :data:`DECAY`, :data:`PRIOR_WEIGHT`.
    """

    def __init__(self, rows: int, max_nodes: int = MAX_NODES, decay: float = DECAY, prior_weight: float = PRIOR_WEIGHT):
        self.max_nodes = max_nodes
        self.decay = decay
        self.prior_weight = prior_weight
        self.sent = np.zeros((rows, max_nodes))
        self.hits = np.zeros((rows, max_nodes))
        self._prior = prior_rate(max_nodes)

    def observe(self, row: int, size: int, path: Sequence[int]) -> None:
        """Row ``row`` sent ``size`` nodes and accepted ``path`` (node indices, root first)."""
        self.sent[row] *= self.decay
        self.hits[row] *= self.decay
        m = self.max_nodes
        self.sent[row, : min(size, m)] += 1.0
        if size > m:
            self.sent[row, m - 1] += size - m
        for i in path:
            self.hits[row, min(int(i), m - 1)] += 1.0

    def probabilities(self, rows: Sequence[int], n: int) -> np.ndarray:
        """float [len(rows), n]: ``p_b(i)``, the estimated probability that node ``i`` of row
        ``b``'s next tree is on the accepted path (1 for the root)."""
        idx = np.minimum(np.arange(n), self.max_nodes - 1)
        w = self.prior_weight
        pooled = (self.hits.sum(0) + w * self._prior) / (self.sent.sum(0) + w)
        sel = list(rows)
        p = (self.hits[sel] + w * pooled[None, :]) / (self.sent[sel] + w)
        out = np.clip(p[:, idx], 0.0, 1.0)
        out[:, 0] = 1.0
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
        m = np.arange(n + 1)[:, None]
        j = np.arange(extra + 1)[None, :]
        prev = np.where(m - j >= 0, best[np.clip(m - j, 0, n)], neg)
        table = prev + g[: extra + 1][None, :]
        pick = np.argmax(table, axis=1)  # first max: the fewest nodes for this row
        best = table[np.arange(n + 1), pick]
        choice.append(pick)
    total = int(np.argmax(best))  # the fewest nodes among the best sums
    k = [0] * len(sizes)
    for b in range(len(sizes) - 1, -1, -1):
        j = int(choice[b][total])
        k[b] = j + 1
        total -= j
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
        self.acceptance = NodeAcceptance(rows)
        self.proposed = 0
        self.sent = 0
        self.steps = 0

    def widths(self, live: Sequence[int], sizes: Sequence[int]) -> List[int]:
        """``k_b`` for the live rows ``live`` (the loop's row ids) whose trees have ``sizes``
        nodes."""
        p = self.acceptance.probabilities(live, max(sizes))
        gains = [np.cumsum(p[i, :t]) for i, t in enumerate(sizes)]
        cost = None
        if self.cost is not None:
            scale = len(live) / self.rows
            curve = self.cost
            cost = lambda w: curve(w * scale)  # noqa: E731 - the same total tokens
        k, _ = allocate(gains, None if self.limit is not None else cost, self.limit)
        self.steps += 1
        self.proposed += sum(sizes) - len(sizes)
        self.sent += sum(k) - len(k)
        return k

    def observe(self, row: int, size: int, path: Sequence[int]) -> None:
        """Row ``row`` sent ``size`` nodes; ``path``: its accepted node indices."""
        self.acceptance.observe(row, size, path)

    def stats(self) -> Dict[str, Any]:
        """``{"batch_budget", "draft_nodes_proposed", "draft_nodes_sent", "budget_steps"}``."""
        return {
            "batch_budget": "auto" if self.limit is None else self.limit,
            "draft_nodes_proposed": self.proposed,
            "draft_nodes_sent": self.sent,
            "budget_steps": self.steps,
        }
