"""Seeds of tokenloom's counter-based generator (``rust/core/src/rng.rs``)."""

from __future__ import annotations

import random
from typing import Optional

import numpy as np

__all__ = ["as_seed", "check_seed"]


def check_seed(seed: Optional[int]) -> Optional[int]:
    """``seed`` as a Python int, or None.

    Raises:
        TypeError: ``seed`` is not an int (bools, floats and strings are refused, not truncated).
    """
    if seed is None:
        return None
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
    return int(seed)


def as_seed(seed: Optional[int]) -> int:
    """A 64-bit seed: ``None`` draws fresh entropy; negative or large ints wrap modulo 2**64.

    Raises:
        TypeError: ``seed`` is not an int (bools, floats and strings are refused, not truncated).
    """
    s = check_seed(seed)
    if s is None:
        return random.SystemRandom().getrandbits(64)
    return s % (1 << 64)
