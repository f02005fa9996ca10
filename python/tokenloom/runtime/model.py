"""Facts about a Hugging Face causal LM that every part of tokenloom needs: the width of its
logits rows, the dtype / device its forwards run in and its stop tokens. One home for each."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

__all__ = ["context_length", "logits_width", "model_dtype_device", "stop_token_ids"]


def logits_width(model: Any) -> int:
    """V, the width of one logits row: the output embedding's rows (which may exceed the
    tokenizer's vocabulary: padding rows), else ``model.config.vocab_size``."""
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    return int(model.config.vocab_size)


def context_length(model: Any) -> Optional[int]:
    """The longest sequence the model was built for (``max_position_embeddings`` of its text
    config), or None when the config does not say."""
    cfg: Any = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(cfg, "max_position_embeddings", None)
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def model_dtype_device(model: Any) -> Tuple[Any, Any]:
    """``(float dtype, device)`` of the model's first parameter (float32 / CPU when it has no
    float parameter)."""
    import torch

    try:
        param = next(model.parameters())
        return (param.dtype if param.dtype.is_floating_point else torch.float32), param.device
    except (StopIteration, AttributeError):
        return torch.float32, torch.device("cpu")


def stop_token_ids(model: Any, tokenizer: Any = None) -> List[int]:
    """Stop tokens as HF ``generate`` takes them: from ``model.generation_config``, falling back
    to the model config and then to the tokenizer.

    transformers 4.57's conversion of a GGUF tokenizer reports the BOS token as EOS
    (:func:`tokenloom.integrations.hf.models.load_tokenizer` corrects that); the generation config holds the file's EOS, which
    is why the config comes first.
    """
    for source in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        eos = getattr(source, "eos_token_id", None)
        if eos is not None:
            return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return [int(tokenizer.eos_token_id)]
    return []
