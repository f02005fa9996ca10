"""The cost-quality curve of a deferral rule: defer the least confident fraction of requests
to the large model and measure the cascade's quality at every deferral rate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenloom._arrays import as_array

__all__ = ["DeferralCurve", "deferral_curve"]


@dataclass
class DeferralCurve:
    """``deferral_rate`` and ``quality``, float64 [n + 1]: deferring the ``k`` lowest-scored of
    ``n`` requests (``k = 0..n``) gives the mean quality ``quality[k]`` (small-model quality on
    the kept ones, large-model quality on the deferred ones). ``area`` is the mean of the curve
    over deferral rates (trapezoids); ``thresholds[k]`` a threshold at which the rule
    ``score < threshold`` defers exactly those ``k`` (when the scores are distinct; ties are
    ordered by input position)."""

    deferral_rate: np.ndarray
    quality: np.ndarray
    thresholds: np.ndarray

    @property
    def area(self) -> float:
        x, y = self.deferral_rate, self.quality
        return float(((y[1:] + y[:-1]) / 2 * np.diff(x)).sum())


def deferral_curve(scores: Any, small_quality: Any, large_quality: Any) -> DeferralCurve:
    """The curve of a rule's ``scores`` (higher = keep the small model's output).

    Args:
        scores: float [n] confidence scores.
        small_quality, large_quality: float [n] quality of each model's output (e.g. exact
            match 0 / 1).

    Raises:
        ValueError: lengths differ, no request, NaN scores.
    """
    s = as_array(scores, np.float64, "scores", 1)
    qs = as_array(small_quality, np.float64, "small_quality", 1)
    ql = as_array(large_quality, np.float64, "large_quality", 1)
    if not (s.shape == qs.shape == ql.shape) or s.size == 0:
        raise ValueError(f"scores, small_quality, large_quality: expected one non-zero length, got {s.size}, {qs.size}, {ql.size}")
    if np.isnan(s).any():
        raise ValueError("scores: expected no NaN")
    order = np.argsort(s, kind="stable")
    gain = (ql - qs)[order]
    n = s.size
    quality = (qs.sum() + np.concatenate([[0.0], np.cumsum(gain)])) / n
    srt = s[order]
    thresholds = np.concatenate([srt, [np.inf]])
    return DeferralCurve(deferral_rate=np.arange(n + 1) / n, quality=quality, thresholds=thresholds)
