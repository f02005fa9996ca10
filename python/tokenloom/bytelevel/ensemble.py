"""Byte-level ensembles of models with different vocabularies.

``ByteEnsemble([lm_a, lm_b], weights, mode)`` combines the exact next-byte distributions of
several ``ByteLM`` s (each over 256 bytes + end-of-text):

- ``mode="mix"``: ``P(b | x) = sum_i w_i P_i(b | x)`` (weights normalised to sum to 1);
- ``mode="product"``: ``P(b | x) ∝ prod_i P_i(b | x) ** w_i``, renormalised over the 257 symbols.

Both are proper distributions over the next byte; the ensemble's byte-string probability is
their chain-rule product (``logprob``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from tokenloom.bytelevel.lm import EOS, ByteLM, as_bytes

__all__ = ["ByteEnsemble"]


class ByteEnsemble:
    """Args:
        lms: the byte-level models (any vocabularies).
        weights: one non-negative weight per model (default uniform).
        mode: "mix" or "product".

    Raises:
        ValueError: no model, weights of the wrong length / negative / all zero, unknown mode.
    """

    def __init__(self, lms: Sequence[ByteLM], weights: Optional[Sequence[float]] = None, mode: str = "mix") -> None:
        if not lms:
            raise ValueError("ByteEnsemble needs at least one ByteLM")
        w = np.ones(len(lms)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(lms),):
            raise ValueError(f"weights: expected {len(lms)} values, got shape {w.shape}")
        if (w < 0).any() or not w.sum() > 0 or not np.isfinite(w).all():
            raise ValueError("weights must be finite, non-negative and not all zero")
        if mode not in ("mix", "product"):
            raise ValueError(f"mode: expected 'mix' or 'product', got {mode!r}")
        self.lms = list(lms)
        self.weights = w / w.sum() if mode == "mix" else w
        self.mode = mode

    def next_byte_probs(self, prefix: bytes) -> np.ndarray:
        """Combined P(next byte | prefix), shape [257] (index 256 = end-of-text)."""
        prefix = as_bytes(prefix)
        ps = [lm.next_byte_probs(prefix) for lm in self.lms]
        if self.mode == "mix":
            out = sum(w * p for w, p in zip(self.weights, ps))
        else:
            with np.errstate(divide="ignore"):
                lp = sum(w * np.log(p) for w, p in zip(self.weights, ps) if w > 0)
            if not np.isfinite(lp).any():
                raise ValueError("product ensemble: the models share no possible next byte")
            lp = lp - lp.max()
            out = np.exp(lp)
        return out / out.sum()

    def logprob(self, data: bytes) -> float:
        """Chain-rule log P(text starts with data) under the ensemble."""
        data = as_bytes(data, "data")
        total = 0.0
        for i in range(len(data)):
            p = self.next_byte_probs(data[:i])[data[i]]
            if p <= 0:
                return -math.inf
            total += math.log(p)
        return total

    def generate(self, prefix: bytes, max_bytes: int, temperature: float = 0.0, seed: Optional[int] = None) -> bytes:
        """Greedy (temperature 0) or sampled byte generation from the ensemble."""
        prefix = as_bytes(prefix)
        rng = np.random.default_rng(seed)
        out = bytearray()
        for _ in range(max_bytes):
            p = self.next_byte_probs(prefix + bytes(out))
            if temperature == 0:
                b = int(np.argmax(p))
            else:
                lp = np.log(np.maximum(p, 1e-300)) / temperature
                q = np.exp(lp - lp.max())
                b = int(rng.choice(257, p=q / q.sum()))
            if b == EOS:
                break
            out.append(b)
        return bytes(out)
