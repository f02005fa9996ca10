"""Facts about a Hugging Face causal LM that every part of tokenloom needs: the width of its
logits rows and the dtype / device its forwards run in. One home for each."""

from __future__ import annotations

from typing import Any, Tuple

__all__ = ["logits_width", "model_dtype_device"]


def logits_width(model: Any) -> int:
    """V, the width of one logits row: the output embedding's rows (which may exceed the
    tokenizer's vocabulary: padding rows), else ``model.config.vocab_size``."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def model_dtype_device(model: Any) -> Tuple[Any, Any]:
    """``(float dtype, device)`` of the model's first parameter (float32 / CPU when it has no
    float parameter)."""
    import torch

    try:
        param = next(model.parameters())
        return (param.dtype if param.dtype.is_floating_point else torch.float32), param.device
    except (StopIteration, AttributeError):
        return torch.float32, torch.device("cpu")
