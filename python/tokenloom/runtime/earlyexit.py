"""Early exit, in one home: the first layers of a Llama-style decoder, then its final norm and
output head, as a regular Hugging Face causal LM sharing the original's weights. The cascades'
cheaper sibling (:mod:`tokenloom.cascades.models`) and DySpec's self-speculative draft
(:class:`~tokenloom.spec.dyspec.drafts.EarlyExitDraft`) both run it."""

from __future__ import annotations

import copy
from typing import Any, Tuple

__all__ = ["decoder_layers", "early_exit_model"]


def decoder_layers(model: Any, who: str) -> Tuple[str, Any, Any]:
    """``(prefix, base model, its layers ModuleList)`` of a Llama-style decoder.

    Raises:
        ValueError: no ``layers`` ModuleList under ``model.<base_model_prefix>`` (the message
            names ``who``).
    """
    import torch

    prefix = getattr(model, "base_model_prefix", "model")
    base = getattr(model, prefix, None)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(f"{who} needs a decoder with a 'layers' ModuleList, got {type(model).__name__}")
    return prefix, base, layers


def _shallow(module: Any) -> Any:
    """A shallow copy of ``module`` with its own child table and its own, empty forward /
    backward hooks: a hook on the original (the whole model) never runs for the copy (the
    shared submodules keep theirs)."""
    import collections

    out = copy.copy(module)
    out._modules = dict(module._modules)
    for name in ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
                 "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks"):
        if isinstance(getattr(module, name, None), dict):
            setattr(out, name, collections.OrderedDict())
    return out


def early_exit_model(model: Any, n_layers: int) -> Any:
    """The first ``n_layers`` decoder layers of ``model``, then its final norm and lm_head, as a
    causal LM object of the same class. Weights are shared (no copy); the original is unchanged
    (a forward hook on it does not run for the early exit; hooks on shared layers do).

    Supports Llama-style decoders (``model.<base>.layers``: Llama, Mistral, Qwen2, SmolLM, ...).

    Raises:
        ValueError: ``n_layers`` outside [1, number of layers], or no ``layers`` list.
    """
    import torch

    prefix, base, layers = decoder_layers(model, "early_exit_model")
    total = len(layers)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not (1 <= n_layers <= total):
        raise ValueError(f"n_layers: expected an int in [1, {total}], got {n_layers!r}")
    config = copy.deepcopy(model.config)
    config.num_hidden_layers = n_layers
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types)[:n_layers]
    new_base = _shallow(base)
    new_base.layers = torch.nn.ModuleList(list(layers)[:n_layers])
    new_base.config = config
    out = _shallow(model)
    setattr(out, prefix, new_base)
    out.config = config
    return out
