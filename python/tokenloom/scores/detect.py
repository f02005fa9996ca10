"""Training-data detection scores over :class:`~tokenloom.scores.tokens.TokenStats`. Every
score is oriented the same way: **higher means "more likely seen in training"**.

* :func:`min_k_prob` (Min-K% Prob, arXiv 2310.16789): the mean of the lowest ``k`` fraction of
  the token log-probabilities.
* :func:`min_k_plus_plus` (Min-K%++, arXiv 2404.02936): the same over the per-token
  z-scores ``(log p(x_t) - mu_t) / sigma_t``, ``mu_t`` and ``sigma_t`` the mean and standard
  deviation of ``log p(z)`` under the next-token distribution (``z ~ p(. | x_<t)``).
* :func:`dc_pdd` (DC-PDD, arXiv 2409.14781): the mean over the first occurrence of each distinct
  token of ``min(p(x_t) * log(1 / f(x_t)), a)``, ``f`` the Laplace-smoothed token frequencies of
  a reference corpus (:class:`tokenloom.scores.frequency.TokenFrequency`), computed in Rust.

Selection size: ``max(1, floor(k * n))`` of the ``n`` scored tokens (the papers' reference code
takes ``floor(k * n)``, which is empty, and its mean NaN, for texts under ``1 / k`` tokens).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array
from tokenloom.scores.tokens import TokenStats

__all__ = ["SCORES", "auroc", "detection_scores", "dc_pdd", "min_k_count", "min_k_plus_plus", "min_k_prob", "zscores"]

#: Names of the per-text scores of :func:`detection_scores`.
SCORES = ("mean_logprob", "min_k", "min_k_pp", "dc_pdd")


def _fraction(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float, np.integer, np.floating)) or not (0.0 < k <= 1.0):
        raise ValueError(f"k: expected a fraction in (0, 1], got {k!r}")
    return float(k)


def min_k_count(n: int, k: float) -> int:
    """How many of ``n`` tokens Min-K% averages: ``max(1, floor(k * n))``."""
    return max(1, int(math.floor(_fraction(k) * n + 1e-9)))


def _lowest_mean(x: np.ndarray, k: float, name: str) -> float:
    if x.size == 0:
        raise ValueError(f"{name}: expected at least one scored token, got 0")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: expected finite values")
    m = min_k_count(x.size, k)
    return float(np.partition(x, m - 1)[:m].mean())


def min_k_prob(logprobs: Any, k: float = 0.2) -> float:
    """Min-K% Prob: the mean of the ``k`` fraction of lowest token log-probabilities.

    Args:
        logprobs: float [n] token log-probabilities (n >= 1).
        k: the fraction (0, 1]; the paper's default 0.2.

    Raises:
        ValueError: empty or non-finite input, ``k`` outside (0, 1].
    """
    return _lowest_mean(as_array(logprobs, np.float64, "logprobs", 1), k, "logprobs")


def zscores(logprobs: Any, entropy: Any, logp_std: Any) -> np.ndarray:
    """Min-K%++'s per-token scores ``(log p(x_t) - mu_t) / sigma_t`` with ``mu_t = -entropy_t``;
    ``sigma_t`` is floored at 1e-12 (a one-point distribution: the target's z is then 0 when it
    is the only choice).

    Returns:
        float64 [n].

    Raises:
        ValueError: shapes differ.
    """
    lp = as_array(logprobs, np.float64, "logprobs", 1)
    h = as_array(entropy, np.float64, "entropy", 1)
    sd = as_array(logp_std, np.float64, "logp_std", 1)
    if not (lp.shape == h.shape == sd.shape):
        raise ValueError(f"logprobs, entropy, logp_std: expected one shape, got {lp.shape}, {h.shape}, {sd.shape}")
    return (lp + h) / np.maximum(sd, 1e-12)


def min_k_plus_plus(logprobs: Any, entropy: Any, logp_std: Any, k: float = 0.2) -> float:
    """Min-K%++: the mean of the ``k`` fraction of lowest :func:`zscores`.

    Raises:
        ValueError: empty input, shapes differ, ``k`` outside (0, 1].
    """
    return _lowest_mean(zscores(logprobs, entropy, logp_std), k, "logprobs")


def dc_pdd(targets: Any, logprobs: Any, freq: Any, a: float = 0.01) -> float:
    """DC-PDD: mean over first occurrences of ``min(p_t * log(1 / f(x_t)), a)`` (Rust kernel).

    Args:
        targets: int [n] the scored tokens (``TokenStats.targets``).
        logprobs: float [n] their log-probabilities.
        freq: float [V] token frequencies in (0, 1] (``TokenFrequency.smoothed()``) or a
            :class:`~tokenloom.scores.frequency.TokenFrequency`.
        a: the clip (> 0); 0.01 in the paper's reference code.

    Raises:
        ValueError: lengths differ, empty input, frequencies / probabilities / clip out of range.
        IndexError: a target outside ``freq``.
    """
    if hasattr(freq, "smoothed"):
        freq = freq.smoothed()
    ids = as_array(targets, np.int64, "targets", 1)
    probs = np.exp(as_array(logprobs, np.float64, "logprobs", 1))
    f = as_array(freq, np.float64, "freq", 1)
    if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
        raise ValueError(f"a: expected a positive number, got {a!r}")
    return float(_core.dcpdd_score(ids, probs, f, float(a)))


def detection_scores(
    stats: Sequence[TokenStats], freq: Any = None, *, k: float = 0.2, a: float = 0.01
) -> List[Dict[str, float]]:
    """Every detection score of every text: ``mean_logprob`` (the loss baseline), ``min_k``,
    ``min_k_pp`` and, when a frequency table is given, ``dc_pdd``.

    Args:
        stats: from :func:`tokenloom.scores.token_stats`.
        freq: a :class:`~tokenloom.scores.frequency.TokenFrequency` or its smoothed [V] array
            (None: no DC-PDD column).
        k: Min-K% fraction; a: DC-PDD clip.

    Returns:
        list of dicts, one per text.
    """
    _fraction(k)
    f: Optional[np.ndarray] = None
    if freq is not None:
        f = freq.smoothed() if hasattr(freq, "smoothed") else as_array(freq, np.float64, "freq", 1)
    out = []
    for s in stats:
        row = {
            "mean_logprob": float(np.mean(s.logprobs)),
            "min_k": min_k_prob(s.logprobs, k),
            "min_k_pp": min_k_plus_plus(s.logprobs, s.entropy, s.logp_std, k),
        }
        if f is not None:
            row["dc_pdd"] = dc_pdd(s.targets, s.logprobs, f, a)
        out.append(row)
    return out


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = member, 0 = non-member): the
    probability that a random member outscores a random non-member, ties counting half
    (Mann-Whitney U / (n1 * n0)).

    Raises:
        ValueError: lengths differ, labels other than 0 / 1, or a class without examples.
    """
    x = as_array(scores, np.float64, "scores", 1)
    y = as_array(labels, np.int64, "labels", 1)
    if x.shape != y.shape:
        raise ValueError(f"scores, labels: expected one length, got {x.size} and {y.size}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels: expected 0 (non-member) or 1 (member)")
    pos, neg = x[y == 1], x[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"labels: expected both classes, got {pos.size} members and {neg.size} non-members")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))
