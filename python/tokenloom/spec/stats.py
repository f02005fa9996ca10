"""Typed statistics of a speculative decoding run (one per :func:`tokenloom.generate` call),
after vLLM's ``SpecDecodingStats``: steps, drafted and accepted tokens, acceptance per depth, tree
sizes, time spent drafting and verifying."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:  # pragma: no cover
    from tokenloom.spec.base import DraftTree
    from tokenloom.verify.kernels import VerifyResult

__all__ = ["SpecStats"]


def _bump(d: Dict[int, int], key: int) -> None:
    d[key] = d.get(key, 0) + 1


@dataclass
class SpecStats:
    """Counts over the tree steps of one request (the prefill is not a tree step).

    Attributes:
        drafter: the drafter's name.
        steps: tree steps (= target verify forwards after the prefill).
        drafted: draft nodes proposed, root excluded, summed over steps.
        accepted: accepted draft tokens (bonus tokens excluded), summed over steps.
        accepted_per_depth: ``accepted_per_depth[d]`` = steps whose accepted path reached
            depth ``d + 1``; ``accepted_per_depth[d] / steps`` is the acceptance at that depth.
        tree_sizes: steps per draft-node count (root excluded).
        accepted_hist: steps per accepted draft count.
        draft_seconds: time in :meth:`Drafter.propose` (drafting, e.g. draft forwards).
        verify_seconds: time in the target tree forward, verification, cache compaction and
            :meth:`Drafter.accept`.
        extra: the drafter's own statistics (:meth:`Drafter.stats`).
    """

    drafter: str = ""
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_depth: List[int] = field(default_factory=list)
    tree_sizes: Dict[int, int] = field(default_factory=dict)
    accepted_hist: Dict[int, int] = field(default_factory=dict)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)

    def observe(self, tree: "DraftTree", result: "VerifyResult") -> None:
        """Count one verified step."""
        n = tree.size - 1
        a = len(result.path) - 1
        self.steps += 1
        self.drafted += n
        self.accepted += a
        _bump(self.tree_sizes, n)
        _bump(self.accepted_hist, a)
        if a > len(self.accepted_per_depth):
            self.accepted_per_depth.extend([0] * (a - len(self.accepted_per_depth)))
        for d in range(a):
            self.accepted_per_depth[d] += 1

    @property
    def mean_accepted(self) -> float:
        """Mean tokens emitted per tree step (accepted + the bonus token)."""
        return 1.0 + self.accepted / self.steps if self.steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    def depth_acceptance(self) -> List[float]:
        """``P(the accepted path reaches depth d + 1)`` per step, for d = 0, 1, ..."""
        return [c / self.steps for c in self.accepted_per_depth] if self.steps else []

    def as_dict(self) -> Dict[str, Any]:
        """A flat dictionary (sorted histograms; the drafter's entries merged in)."""
        out: Dict[str, Any] = {
            "drafter": self.drafter,
            "spec_steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "tree_sizes": dict(sorted(self.tree_sizes.items())),
            "accepted_hist": dict(sorted(self.accepted_hist.items())),
            "accepted_per_depth": list(self.accepted_per_depth),
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
        }
        out.update(self.extra)
        return out
