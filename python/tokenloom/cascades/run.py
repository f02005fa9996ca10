"""``tokenloom.cascade``: answer with the small model, defer to the large one when the small
model's own token log-probabilities say it is unsure (a rule of :mod:`tokenloom.cascades.rules`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenloom.cascades.rules import make_rule

__all__ = ["CascadeResult", "cascade", "output_logprobs"]


@dataclass
class CascadeResult:
    """One cascaded request.

    Attributes:
        sequences: LongTensor [1, n + new], the answer kept (the large model's when deferred).
        deferred: whether the large model answered.
        score: the rule's confidence in the small model's answer (``-inf``: it emitted nothing).
        small_sequences: the small model's answer, LongTensor [1, n + new_small].
        small_logprobs: float64 [new_small], the small model's log-probabilities of its tokens.
    """

    sequences: Any
    deferred: bool
    score: float
    small_sequences: Any
    small_logprobs: np.ndarray


def output_logprobs(model: Any, sequences: Any, prompt_len: int) -> np.ndarray:
    """log p(token) of every token after ``prompt_len`` in ``sequences`` [1, n] under ``model``
    (the raw distribution, no sampling transforms), from one forward (sliding window when long).

    Returns:
        float64 [n - prompt_len] (empty when nothing follows the prompt).
    """
    from tokenloom.scores.tokens import token_stats

    ids = sequences[0] if getattr(sequences, "ndim", 1) == 2 else sequences
    if len(ids) <= prompt_len:
        return np.zeros(0)
    stats = token_stats(model, [ids], window=max(512, len(ids)))[0]
    return stats.logprobs[prompt_len - 1 :]


def cascade(
    small: Any,
    large: Any,
    input_ids: Any,
    *,
    rule: Any = "mean",
    threshold: float,
    **generate_kwargs: Any,
) -> CascadeResult:
    """Generate with ``small``; when ``rule.score(small's token log-probs) < threshold``,
    generate with ``large`` instead. Both models must share the tokenizer.

    Args:
        small, large: Hugging Face causal LMs.
        input_ids: LongTensor [1, n].
        rule: ``"mean"``, ``"sum"``, ``"quantile:ALPHA"`` or a fitted
            :class:`~tokenloom.cascades.rules.PostHoc` (see :mod:`tokenloom.cascades.rules`).
        threshold: defer below this score (a point of :func:`~tokenloom.cascades.curve.deferral_curve`).
        **generate_kwargs: passed to :func:`tokenloom.generate` for both models
            (``max_new_tokens``, ``method``, ``temperature``, ``seed``, ...).

    Returns:
        CascadeResult.

    Raises:
        ValueError: an unknown rule or a threshold that is not a number (and whatever
            :func:`tokenloom.generate` refuses).
    """
    from tokenloom.decoding.generate import generate
    from tokenloom.runtime.model import logits_width

    r = make_rule(rule)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold):
        raise ValueError(f"threshold: expected a number, got {threshold!r}")
    if logits_width(small) != logits_width(large):
        raise ValueError(
            f"small and large models have logits widths {logits_width(small)} and {logits_width(large)}: they must share a tokenizer"
        )
    n = input_ids.shape[-1]
    out = generate(small, input_ids, **generate_kwargs)
    lp = output_logprobs(small, out.sequences, n)
    score = r.score(lp) if lp.size else -math.inf
    deferred = score < threshold
    final = generate(large, input_ids, **generate_kwargs).sequences if deferred else out.sequences
    return CascadeResult(sequences=final, deferred=bool(deferred), score=float(score), small_sequences=out.sequences, small_logprobs=lp)
