"""Per-token uncertainty from one forward: token log-probabilities, entropies, ranks
(:func:`token_stats`, batched, any length through a sliding window), the training-data
detection scores Min-K% Prob, Min-K%++ and DC-PDD (:mod:`tokenloom.scores.detect`; DC-PDD's
token-frequency table :class:`TokenFrequency` lives in Rust) and the turn-wise drift KL between
two models (:mod:`tokenloom.scores.drift`).

Torch is imported only inside the functions that run a model.
"""

from tokenloom.scores.detect import SCORES, auroc, dc_pdd, detection_scores, min_k_plus_plus, min_k_prob, zscores
from tokenloom.scores.drift import DriftResult, TurnDrift, kl_drift
from tokenloom.scores.frequency import TokenFrequency, count_tokens, read_documents
from tokenloom.scores.tokens import TokenStats, row_stats, token_stats, tokenize

__all__ = [
    "DriftResult",
    "SCORES",
    "TokenFrequency",
    "TokenStats",
    "TurnDrift",
    "auroc",
    "count_tokens",
    "dc_pdd",
    "kl_drift",
    "detection_scores",
    "min_k_plus_plus",
    "min_k_prob",
    "read_documents",
    "row_stats",
    "token_stats",
    "tokenize",
    "zscores",
]
