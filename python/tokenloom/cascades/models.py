"""A cheaper model that shares the tokenizer of a given one, when no smaller sibling is at hand:
the first layers of the model itself (an early exit), as a regular Hugging Face causal LM."""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["early_exit_model"]


def early_exit_model(model: Any, n_layers: int) -> Any:
    """The first ``n_layers`` decoder layers of ``model``, then its final norm and lm_head, as a
    causal LM object of the same class. Weights are shared (no copy); the original is unchanged.

    Supports Llama-style decoders (``model.<base>.layers``: Llama, Mistral, Qwen2, SmolLM, ...).

    Raises:
        ValueError: ``n_layers`` outside [1, number of layers], or no ``layers`` list.
    """
    import torch

    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"early_exit_model needs a decoder with a 'layers' ModuleList, got {type(model).__name__}")
    total = len(layers)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not (1 <= n_layers <= total):
        raise ValueError(f"n_layers: expected an int in [1, {total}], got {n_layers!r}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:n_layers]
    new_base = copy.copy(base)
    new_base._modules = dict(base._modules)
    new_base.layers = torch.nn.ModuleList(list(layers)[:n_layers])
    new_base.config = config
    out = copy.copy(model)
    out._modules = dict(model._modules)
    setattr(out, prefix, new_base)
    out.config = config
    return out
