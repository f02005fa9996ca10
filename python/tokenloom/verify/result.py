"""The result of verifying a draft tree or chain."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["VerifyResult"]


class VerifyResult(NamedTuple):
    """``path``: accepted node indices starting with 0 (int64 [n]); ``tokens``: emitted ids,
    the accepted draft tokens then one token from the target (int64 [n])."""

    path: np.ndarray
    tokens: np.ndarray

    @property
    def accepted(self) -> int:
        """Number of accepted draft tokens (excluding the bonus token)."""
        return len(self.path) - 1
