"""A cheaper model that shares the tokenizer of a given one, when no smaller sibling is at hand:
the first layers of the model itself (an early exit, :func:`early_exit_model`, whose home is
:mod:`tokenloom.runtime.earlyexit`), or the model with its decoder weights rounded to a few bits
(weight-only round-to-nearest), each as a regular Hugging Face causal LM."""

from __future__ import annotations

import copy
from typing import Any

from tokenloom.runtime.earlyexit import decoder_layers, early_exit_model

__all__ = ["early_exit_model", "quantized_model", "round_weights"]


def round_weights(weight: Any, bits: int, group_size: int) -> Any:
    """Symmetric round-to-nearest of a weight matrix, per group of ``group_size`` consecutive
    input columns of each row: ``scale = max|w| / (2**(bits-1) - 1)``, ``w ~ scale *
    clamp(round(w / scale), -(2**(bits-1)), 2**(bits-1) - 1)``.

    Args:
        weight: float tensor [out, in] (``in`` a multiple of ``group_size``).

    Returns:
        the dequantised tensor, same shape and dtype (values on the grid of each group).

    Raises:
        ValueError: ``bits`` outside [2, 8], ``group_size`` < 1 or not dividing ``in``, not 2-D.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: expected an int in [2, 8], got {bits!r}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D matrix, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or cols % group_size:
        raise ValueError(f"group_size: expected an int >= 1 dividing {cols}, got {group_size!r}")
    qmax = 2 ** (bits - 1) - 1
    w = weight.reshape(rows, cols // group_size, group_size)
    scale = w.abs().amax(dim=-1, keepdim=True) / qmax
    scale = scale.clamp_min(1e-12)
    q = (w / scale).round().clamp(-qmax - 1, qmax)
    return (q * scale).reshape(rows, cols).to(weight.dtype)


def quantized_model(model: Any, bits: int = 4, group_size: int = 64) -> Any:
    """A copy of ``model`` whose decoder-layer linear weights are rounded to ``bits`` bits
    (:func:`round_weights`; embeddings, norms and the output head unchanged). The weights are
    stored dequantised (float), so the copy is cheaper only in what it stands for (a smaller,
    lower-quality sibling sharing the tokenizer), not in time on this CPU.

    Raises:
        ValueError: no ``layers`` list; a bad ``bits`` / ``group_size``.
    """
    import torch

    prefix, _base, _layers = decoder_layers(model, "quantized_model")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for mod in getattr(out, prefix).layers.modules():
            if isinstance(mod, torch.nn.Linear):
                mod.weight.copy_(round_weights(mod.weight, bits, group_size))
    return out
