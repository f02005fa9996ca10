"""Deferral rules of a two-model cascade over the small model's per-token log-probabilities
(arXiv 2404.10136, "Language Model Cascades: Token-level uncertainty and beyond").

A rule maps the log-probabilities ``[m]`` of the small model's own output tokens to a
*confidence score*; the cascade defers to the large model when the score is below a threshold.

* :class:`SequenceSum` (Chow-Sum: the sequence log-probability; penalises long outputs),
* :class:`SequenceMean` (Chow-Average: the length-normalised mean),
* :class:`Quantile` (Chow-Quantile-alpha: the alpha-quantile of the token log-probabilities;
  alpha = 0 is the least confident token),
* :class:`PostHoc`: a logistic regression over :data:`FEATURE_NAMES` (sum, mean, length and
  the quantiles :data:`QUANTILES` of the token log-probabilities), fitted with
  :func:`fit_posthoc` on labelled examples (1 = the small model's answer is good enough) and
  scoring ``P(small is good | features)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np

from tokenloom._arrays import as_array, as_fraction

__all__ = [
    "FEATURE_NAMES",
    "QUANTILES",
    "PostHoc",
    "Quantile",
    "Rule",
    "SequenceMean",
    "SequenceSum",
    "features",
    "fit_posthoc",
    "make_rule",
]

#: Quantile levels of the post-hoc features.
QUANTILES = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
#: Names of the entries of :func:`features`.
FEATURE_NAMES = ("sum", "mean", "length") + tuple(f"q{q:g}" for q in QUANTILES)


def _logprobs(lp: Any) -> np.ndarray:
    x = as_array(lp, np.float64, "logprobs", 1)
    if x.size == 0:
        raise ValueError("logprobs: expected the log-probabilities of at least one output token, got none")
    if np.isnan(x).any() or (x > 1e-9).any():
        raise ValueError("logprobs: expected log-probabilities (<= 0, not NaN)")
    return x


def features(logprobs: Any) -> np.ndarray:
    """The post-hoc features of one output, float64 [len(FEATURE_NAMES)]: the sum, mean and
    number of the token log-probabilities, then their quantiles (numpy's linear interpolation)
    at :data:`QUANTILES`.

    Raises:
        ValueError: no token, NaN or positive values.
    """
    x = _logprobs(logprobs)
    return np.concatenate([[x.sum(), x.mean(), float(x.size)], np.quantile(x, QUANTILES)])


@dataclass(frozen=True)
class SequenceSum:
    """Chow-Sum: the sum of the token log-probabilities."""

    name: str = "sum"

    def score(self, logprobs: Any) -> float:
        return float(_logprobs(logprobs).sum())


@dataclass(frozen=True)
class SequenceMean:
    """Chow-Average: the mean token log-probability."""

    name: str = "mean"

    def score(self, logprobs: Any) -> float:
        return float(_logprobs(logprobs).mean())


@dataclass(frozen=True)
class Quantile:
    """Chow-Quantile: the ``alpha``-quantile of the token log-probabilities (alpha in [0, 1])."""

    alpha: float = 0.0

    def __post_init__(self) -> None:
        as_fraction(self.alpha, "alpha")

    @property
    def name(self) -> str:
        return f"quantile:{self.alpha:g}"

    def score(self, logprobs: Any) -> float:
        return float(np.quantile(_logprobs(logprobs), self.alpha))


@dataclass(frozen=True)
class PostHoc:
    """A fitted logistic rule: ``sigmoid(w . (f - center) / scale + b)`` over :func:`features`."""

    weights: np.ndarray
    bias: float
    center: np.ndarray
    scale: np.ndarray
    name: str = "posthoc"

    def score(self, logprobs: Any) -> float:
        z = (features(logprobs) - self.center) / self.scale
        return float(1.0 / (1.0 + math.exp(-float(z @ self.weights + self.bias))))


Rule = Union[SequenceSum, SequenceMean, Quantile, PostHoc]


def make_rule(rule: Any) -> Any:
    """A rule from a name (``"mean"``, ``"sum"``, ``"quantile:ALPHA"``) or a rule object
    (anything with ``score(logprobs) -> float``).

    Raises:
        ValueError: an unknown name or a bad alpha.
    """
    if hasattr(rule, "score"):
        return rule
    if rule == "mean":
        return SequenceMean()
    if rule == "sum":
        return SequenceSum()
    if isinstance(rule, str) and rule.startswith("quantile:"):
        try:
            alpha = float(rule.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"rule: expected 'quantile:ALPHA' with a number ALPHA, got {rule!r}") from None
        return Quantile(alpha)
    raise ValueError(f"rule: expected 'mean', 'sum', 'quantile:ALPHA' or a fitted PostHoc, got {rule!r}")


def fit_posthoc(
    logprobs: Sequence[Any], labels: Any, *, l2: float = 1.0, iters: int = 100
) -> PostHoc:
    """Fit :class:`PostHoc` by L2-regularised logistic regression (Newton's method) on the
    standardised :func:`features` of labelled outputs.

    Args:
        logprobs: one array of token log-probabilities per example.
        labels: 1 where the small model's output is good enough (keep it), 0 where deferring
            pays; both classes must occur.
        l2: ridge penalty on the weights (not the bias), > 0.
        iters: Newton steps (stops early at convergence).

    Raises:
        ValueError: lengths differ, labels other than 0 / 1, one class only, bad l2.
    """
    y = as_array(labels, np.float64, "labels", 1)
    if len(logprobs) != y.size:
        raise ValueError(f"logprobs, labels: expected one length, got {len(logprobs)} and {y.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels: expected 0 (defer) or 1 (keep the small model's output)")
    if y.min() == y.max():
        raise ValueError("labels: expected both classes (0 and 1)")
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not l2 > 0:
        raise ValueError(f"l2: expected a positive number, got {l2!r}")
    f = np.stack([features(lp) for lp in logprobs])
    center = f.mean(0)
    scale = f.std(0)
    scale[scale == 0] = 1.0
    x = np.hstack([(f - center) / scale, np.ones((f.shape[0], 1))])
    w = np.zeros(x.shape[1])
    ridge = np.full(x.shape[1], float(l2))
    ridge[-1] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + ridge * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(ridge) + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return PostHoc(weights=w[:-1].copy(), bias=float(w[-1]), center=center, scale=scale)
