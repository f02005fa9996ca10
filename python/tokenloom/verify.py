"""Lossless verification of draft trees and chains (thin wrappers over the Rust kernels).

Conventions: node 0 is the root (its token is already in the sequence), ``parents[0] == -1``,
``parents[i] < i``; the target's prediction at node ``i`` is about the token that follows it.
"""

from __future__ import annotations

from typing import Any, List, NamedTuple

import numpy as np

from . import _core
from ._arrays import as_array

__all__ = ["VerifyResult", "verify_greedy", "verify_greedy_batch"]


class VerifyResult(NamedTuple):
    """``path``: accepted node indices starting with 0 (int64 [n]); ``tokens``: emitted ids,
    the accepted draft tokens then one token from the target (int64 [n])."""

    path: np.ndarray
    tokens: np.ndarray

    @property
    def accepted(self) -> int:
        """Number of accepted draft tokens (excluding the bonus token)."""
        return len(self.path) - 1


def verify_greedy(parents: Any, tokens: Any, target_argmax: Any) -> VerifyResult:
    """Greedy (temperature 0) verification of one tree.

    Args:
        parents: int [T]; ``parents[0] == -1``, ``0 <= parents[i] < i``.
        tokens: int [T]; token of each node (the root's is ignored).
        target_argmax: int [T]; the target's argmax after each node.

    Returns:
        VerifyResult. Among duplicate siblings the lowest node index is taken.

    Raises:
        ValueError: lengths differ, the tree is empty or not topologically ordered.
        IndexError: a negative target id.
    """
    path, toks = _core.verify_greedy(
        as_array(parents, np.int64, "parents", 1),
        as_array(tokens, np.int64, "tokens", 1),
        as_array(target_argmax, np.int64, "target_argmax", 1),
    )
    return VerifyResult(path, toks)


def verify_greedy_batch(parents: Any, tokens: Any, target_argmax: Any, lengths: Any) -> List[VerifyResult]:
    """Greedy verification of B padded trees: arrays [B, T_max], ``lengths`` [B]."""
    rows = _core.verify_greedy_batch(
        as_array(parents, np.int64, "parents", 2),
        as_array(tokens, np.int64, "tokens", 2),
        as_array(target_argmax, np.int64, "target_argmax", 2),
        as_array(lengths, np.int64, "lengths", 1),
    )
    return [VerifyResult(p, t) for p, t in rows]
