"""Two-model cascades with token-level deferral (arXiv 2404.10136): :func:`cascade` answers with
a small model and defers to a large one when a rule over the small model's token
log-probabilities (:mod:`tokenloom.cascades.rules`: sequence sum / mean, quantiles, a fitted
post-hoc rule) says it is unsure; :func:`deferral_curve` gives the cost-quality curve of a rule;
:func:`early_exit_model` and :func:`quantized_model` make a cheaper sibling of a model when no
smaller one shares its tokenizer."""

from tokenloom.cascades.curve import DeferralCurve, deferral_curve
from tokenloom.cascades.models import early_exit_model, quantized_model
from tokenloom.cascades.rules import (
    FEATURE_NAMES,
    QUANTILES,
    PostHoc,
    Quantile,
    SequenceMean,
    SequenceSum,
    features,
    fit_posthoc,
    make_rule,
)
from tokenloom.cascades.run import CascadeResult, cascade, output_logprobs

__all__ = [
    "FEATURE_NAMES",
    "QUANTILES",
    "CascadeResult",
    "DeferralCurve",
    "PostHoc",
    "Quantile",
    "SequenceMean",
    "SequenceSum",
    "cascade",
    "deferral_curve",
    "early_exit_model",
    "features",
    "fit_posthoc",
    "make_rule",
    "output_logprobs",
    "quantized_model",
]
