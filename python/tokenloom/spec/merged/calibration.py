"""Online calibration of "this candidate is the target's next token", per source.

Every candidate the merged drafter offers below a node falls in one *class*:

* suffix candidates (this request's index or the cross-request cache): source x effective
  match length (the matched context plus the depth below it, bucketed) x the count ratio
  ``P(child)`` (bucketed) x the support (the siblings' total count, bucketed);
* recycled candidates: rank in the adjacency row x depth of the node (capped).

Each class keeps exponentially decayed counts of offers and hits, observed at every node of the
accepted path (whose next token the verification revealed), so the estimates follow the
drift of the request. The estimate of a class is ``(hits + w * prior) / (offers + w)``; a
candidate offered by both sources gets ``1 - (1 - p_suffix) * (1 - p_recycled)``.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from tokenloom import _core
from tokenloom.spec.sizing import RANK_PRIOR

__all__ = ["CANDIDATE_CLASSES", "Calibration", "MATCH_BUCKETS", "PROB_BUCKETS", "SUPPORT_BUCKETS", "SOURCES"]

#: Suffix sources: this request's own tokens, the cross-request cache.
SOURCES = ("request", "cache")
#: Upper bounds (inclusive) of the effective match-length buckets.
MATCH_BUCKETS = (1, 2, 3, 5, 8, 12, 1 << 30)
#: Upper bounds (exclusive, the last inclusive) of the count-ratio buckets.
PROB_BUCKETS = (0.2, 0.4, 0.6, 0.8, 0.999, 1.0)
#: Upper bounds (inclusive) of the support buckets.
SUPPORT_BUCKETS = (1, 3, 1 << 62)
#: Deepest recycling depth told apart (deeper nodes pool into it).
RECYCLE_DEPTHS = 8
#: The class map of these constants in the Rust core (the merged drafter's tree kernel,
#: ``_core.grow_merged``): :meth:`Calibration.suffix_class` / :meth:`Calibration.recycle_class`.
CANDIDATE_CLASSES = _core.CandidateClasses(MATCH_BUCKETS, PROB_BUCKETS, SUPPORT_BUCKETS, RECYCLE_DEPTHS, len(SOURCES))


def _bucket(x: float, bounds: Sequence[float], inclusive: bool = True) -> int:
    for i, b in enumerate(bounds):
        if (x <= b) if inclusive else (x < b):
            return i
    return len(bounds) - 1


class Calibration:
    """Decayed offer / hit counts per candidate class (see the module docs).

    Args:
        k: candidates per recycler row (0: no recycling classes).
        decay: multiplier applied to every count before each observed step (1.0: no forgetting).
        prior_weight: pseudo-offers of the prior in every estimate.

    Raises:
        ValueError: ``k < 0``, ``decay`` outside (0, 1], ``prior_weight`` <= 0.
    """

    def __init__(self, k: int = 8, decay: float = 0.998, prior_weight: float = 3.0):
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"k: expected an int >= 0, got {k!r}")
        if not (0.0 < float(decay) <= 1.0):
            raise ValueError(f"decay: expected a float in (0, 1], got {decay!r}")
        if not float(prior_weight) > 0.0:
            raise ValueError(f"prior_weight: expected a float > 0, got {prior_weight!r}")
        self.k = k
        self.decay = float(decay)
        self.prior_weight = float(prior_weight)
        ns = len(SOURCES) * len(MATCH_BUCKETS) * len(PROB_BUCKETS) * len(SUPPORT_BUCKETS)
        self.n_suffix = ns
        n = ns + k * RECYCLE_DEPTHS
        self.offers = np.zeros(n)
        self.hits = np.zeros(n)
        self.prior = np.zeros(n)
        for s in range(len(SOURCES)):
            for m, mb in enumerate(MATCH_BUCKETS):
                for p, pb in enumerate(PROB_BUCKETS):
                    for u in range(len(SUPPORT_BUCKETS)):
                        # The count ratio, shrunk more for short matches and little support.
                        mid = min(pb, 1.0) - (0.1 if pb < 0.999 else 0.0)
                        trust = min(0.85, 0.35 + 0.08 * min(mb, 8) + 0.05 * u)
                        self.prior[self._suffix_index(s, m, p, u)] = mid * trust
        rp = np.zeros(max(k, 1))
        m = min(k, RANK_PRIOR.size)
        rp[:m] = RANK_PRIOR[:m]
        for r in range(k):
            for d in range(RECYCLE_DEPTHS):
                self.prior[ns + r * RECYCLE_DEPTHS + d] = rp[r]
        self._est = self.prior.copy()
        self.steps = 0

    @staticmethod
    def _suffix_index(s: int, m: int, p: int, u: int) -> int:
        return ((s * len(MATCH_BUCKETS) + m) * len(PROB_BUCKETS) + p) * len(SUPPORT_BUCKETS) + u

    def suffix_class(self, source: int, match_len: int, prob: float, support: int) -> int:
        """The class of a suffix candidate (``source`` 0 = request, 1 = cache)."""
        return self._suffix_index(
            source,
            _bucket(match_len, MATCH_BUCKETS),
            _bucket(prob, PROB_BUCKETS[:-1], inclusive=False) if prob < PROB_BUCKETS[-2] else len(PROB_BUCKETS) - 1,
            _bucket(support, SUPPORT_BUCKETS),
        )

    def recycle_class(self, rank: int, depth: int) -> int:
        """The class of the rank-``rank`` candidate of a node at ``depth`` (root 0)."""
        return self.n_suffix + rank * RECYCLE_DEPTHS + min(depth, RECYCLE_DEPTHS - 1)

    def estimates(self) -> np.ndarray:
        """float [classes]: the current estimate of every class."""
        return self._est

    def observe(self, offered: Sequence[Sequence[int]], hit: Sequence[Sequence[bool]]) -> None:
        """One step: for each accepted node whose candidates were offered, ``offered[j]`` the
        classes of its candidates and ``hit[j]`` whether each was the target's next token (a
        candidate offered by both sources lists both classes)."""
        self.offers *= self.decay
        self.hits *= self.decay
        for cls, h in zip(offered, hit):
            if len(cls):
                idx = np.asarray(cls, dtype=np.int64)
                np.add.at(self.offers, idx, 1.0)
                np.add.at(self.hits, idx, np.asarray(h, dtype=np.float64))
        w = self.prior_weight
        self._est = (self.hits + w * self.prior) / (self.offers + w)
        self.steps += 1

    def copy(self) -> "Calibration":
        out = Calibration.__new__(Calibration)
        out.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})
        return out

    def summary(self) -> List[float]:
        """Observed hit rate per source (request, cache, recycled), NaN when never offered."""
        ns = self.n_suffix // len(SOURCES)
        parts = [slice(s * ns, (s + 1) * ns) for s in range(len(SOURCES))] + [slice(self.n_suffix, None)]
        out = []
        for sl in parts:
            o = self.offers[sl].sum()
            out.append(float(self.hits[sl].sum() / o) if o > 0 else float("nan"))
        return out
