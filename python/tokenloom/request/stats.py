"""Statistics of one :func:`tokenloom.generate` call and its output."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.spec.stats import SpecStats

__all__ = ["GenerateOutput", "GenerateStats"]


@dataclass
class GenerateStats:
    """Statistics of one :func:`generate` call.

    ``steps`` counts target-model forwards that emitted tokens, the prefill included, so plain
    decoding has ``mean_accepted == 1.0`` and a speculative method's ``mean_accepted`` is its
    mean accepted tokens per step (bonus token included, as in the papers' MAT).
    ``spec`` holds the typed speculative statistics (:class:`~tokenloom.spec.stats.SpecStats`)
    of a speculative method, None for plain decoding; ``extra`` is their flat dictionary form
    (``tree_sizes``, ``accepted_hist``, ... and the drafter's own entries).
    ``seconds`` is decoding time; one-time set-up inside the call (the step-cost calibration of
    ``tree="auto"`` the first time a model runs on a machine) is ``setup_seconds``, reported
    apart so that a first call's tokens/s is not distorted by it.

    For a batch (``input_ids`` [B, n], B > 1) ``rows`` holds each row's statistics (its
    ``new_tokens`` is the row's length of new tokens, its ``spec`` the row's speculative
    statistics); the batch's ``steps`` counts batched forwards, ``new_tokens`` all rows' new
    tokens (so ``mean_accepted`` is new tokens per batched forward) and ``spec`` is None.
    ``rows`` is empty for one request.
    """

    steps: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    setup_seconds: float = 0.0
    spec: Optional["SpecStats"] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    rows: List["GenerateStats"] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def mean_accepted(self) -> float:
        return self.new_tokens / self.steps if self.steps else 0.0

    def line(self, method: str) -> str:
        """One human-readable stats line."""
        return (
            f"[tokenloom] method={method} tokens={self.new_tokens} steps={self.steps} "
            f"seconds={self.seconds:.2f} tokens/s={self.tokens_per_second:.1f} "
            f"mean_accepted={self.mean_accepted:.2f}"
            + (f" setup_seconds={self.setup_seconds:.2f} (one-time calibration, not in seconds)" if self.setup_seconds >= 0.005 else "")
        )


@dataclass
class GenerateOutput:
    """``sequences``: LongTensor [B, prompt_len + new_tokens] (B = 1 for one request);
    ``stats``: :class:`GenerateStats`. When an ``attention_mask`` was given (or B > 1),
    ``attention_mask`` LongTensor [B, prompt_len + new_tokens] marks each row's tokens: the
    input's left padding is kept and rows shorter than the longest are right-padded with the
    pad id (0 in the mask); None otherwise."""

    sequences: "torch.Tensor"
    stats: GenerateStats
    attention_mask: Optional["torch.Tensor"] = None
