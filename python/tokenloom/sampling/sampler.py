"""Sampling from logits with the transforms every tokenloom verifier uses.

Order (one implementation, in Rust; see ``rust/core/src/sampling.rs``):
temperature -> top-k -> top-p -> min-p -> renormalise, in float64.

- ``temperature == 0`` is greedy: the one-hot row of the argmax (ties -> lowest id).
- top-k keeps every token whose logit is >= the k-th largest (ties kept).
- top-p keeps the smallest set of most probable tokens whose mass reaches ``top_p`` (ties at
  the boundary kept); min-p keeps tokens with ``p >= min_p * max(p)``.
- ``-inf`` logits are masked tokens; ``NaN`` and ``+inf`` raise ValueError.

Inputs may be numpy arrays or torch tensors (CPU or accelerator); outputs are of the same kind.
On an accelerator the transforms and the draw run on the device with torch (a float64 mirror
of the Rust definitions, same generator), so no vocabulary row reaches the host.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_float_array, is_torch
from tokenloom.device import is_accelerator
from tokenloom.sampling.seeds import as_seed

__all__ = ["Sampler", "probs_from_logits"]


def _check_2d(logits: Any, name: str = "logits") -> None:
    ndim = logits.dim() if is_torch(logits) else np.ndim(logits)
    if ndim != 2:
        shape = tuple(logits.shape) if hasattr(logits, "shape") else np.shape(logits)
        raise ValueError(f"{name}: expected a 2-D array [B, V], got shape {tuple(shape)}")


def _check_float(logits: Any, name: str = "logits") -> None:
    if is_torch(logits):
        if not logits.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got dtype {logits.dtype}")
    elif np.asarray(logits).dtype.kind != "f":
        raise ValueError(f"{name}: expected a float array, got dtype {np.asarray(logits).dtype}")


def probs_from_logits(
    logits: Any,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
) -> Any:
    """Probabilities after temperature -> top-k -> top-p -> min-p.

    Args:
        logits: float [V] or [B, V] (numpy or torch).
        temperature: >= 0 (0: one-hot argmax). top_k: >= 1. top_p: in (0, 1]. min_p: in [0, 1].

    Returns:
        Same kind, device and shape as ``logits``; float64 for float64 input, else float32.

    Raises:
        ValueError: a bad parameter, NaN / +inf logits, a row of only -inf, a non-float dtype.
    """
    _check_float(logits)
    one = (logits.dim() if is_torch(logits) else np.ndim(logits)) == 1
    if is_accelerator(logits):
        import torch

        from tokenloom.sampling import torch_ops as _torch_ops

        _core.probs_from_logits(np.zeros((1, 1)), temperature, top_k, top_p, min_p)  # validates the parameters
        x = logits.unsqueeze(0) if one else logits
        p = _torch_ops.probs(x, temperature, top_k, top_p, min_p)
        p = p if logits.dtype == torch.float64 else p.float()
        return p[0] if one else p
    arr = as_float_array(logits, "logits", 1 if one else 2)
    out = _core.probs_from_logits(arr[None] if one else arr, temperature, top_k, top_p, min_p)
    out = out[0] if one else out
    if is_torch(logits):
        import torch

        return torch.from_numpy(out)
    return out


class Sampler:
    """``sampler(logits[B, V]) -> ids[B]``: one draw per row after the transforms.

    Reproducible: call ``c`` (counted from 0) samples row ``r`` with the uniform
    ``u(seed, stream=r, counter=c)`` of the counter-based generator, so a seed fixes the whole
    sequence of results whatever the device or batch layout.

    Args:
        temperature: >= 0; 0 is greedy (argmax, ties -> lowest id).
        top_k, top_p, min_p: see :func:`probs_from_logits`.
        seed: 64-bit seed; None draws fresh entropy.

    Raises:
        ValueError: a bad parameter (at construction); bad logits (at call).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
    ):
        # The Rust constructor of the transforms is the one validator of the parameters.
        _core.probs_from_logits(np.zeros((1, 1)), temperature, top_k, top_p, min_p)
        self.temperature = float(temperature)
        self.top_k = top_k
        self.top_p = top_p
        self.min_p = min_p
        self.seed = as_seed(seed)
        self.calls = 0

    def __repr__(self) -> str:
        return (
            f"Sampler(temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}, "
            f"min_p={self.min_p}, seed={self.seed})"
        )

    def __call__(self, logits: Any) -> Any:
        """Sample one id per row of ``logits`` [B, V] (numpy or torch). Returns int64 [B] of
        the same kind and device."""
        _check_2d(logits)
        _check_float(logits)
        count = self.calls
        self.calls += 1
        if is_accelerator(logits):
            from tokenloom.sampling import torch_ops as _torch_ops

            return _torch_ops.sample(logits, self.temperature, self.top_k, self.top_p, self.min_p, self.seed, count)
        arr = as_float_array(logits, "logits", 2)
        ids = _core.sample_logits(arr, self.temperature, self.top_k, self.top_p, self.min_p, self.seed, count, 0)
        if is_torch(logits):
            import torch

            return torch.from_numpy(ids)
        return ids

    def probs(self, logits: Any) -> Any:
        """The distribution this sampler draws from (see :func:`probs_from_logits`)."""
        return probs_from_logits(logits, self.temperature, self.top_k, self.top_p, self.min_p)

    def logits_processor(self) -> Any:
        """A transformers ``LogitsProcessor`` returning ``log(probs)`` (-inf for removed
        tokens), so ``model.generate(do_sample=True, logits_processor=[...])`` samples from the
        same distribution as this sampler. Pass ``temperature=1.0, top_k=0, top_p=1.0`` to
        ``generate`` (or a generation config without warpers) so HF adds no transform of its own.
        """
        from transformers import LogitsProcessor

        sampler = self

        class TokenloomTransforms(LogitsProcessor):  # type: ignore[misc]
            def __call__(self, input_ids: Any, scores: Any) -> Any:
                import torch

                p = sampler.probs(scores.float()).to(scores.device)
                return torch.log(p).to(scores.dtype)

        return TokenloomTransforms()
