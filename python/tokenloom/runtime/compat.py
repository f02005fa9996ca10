"""Every difference between the supported transformers lines (4.57 and 5.x) in one place.

The rest of tokenloom calls these functions instead of testing versions itself:

* :func:`init_cache_layer` — ``DynamicLayer.lazy_initialization`` takes ``(keys)`` on 4.57 and
  ``(keys, values)`` on 5.x (DySpec's early-exit draft builds layers from the target's cache).
* Cropping a ``DynamicCache``: ``cache.crop(n)`` keeps ``n`` tokens on 4.57, warns on early 5.x and
  refuses ``n > 0`` from 5.2x on (there it means "remove -n tokens"). tokenloom never calls it:
  :func:`tokenloom.runtime.kvcache.crop_cache` writes the layers' tensors itself on every line.
* :func:`cache_arg` / :func:`output_cache` — the KV-cache keyword of a forward: ``past_key_values``
  on 4.57, ``cache`` from 5.2x on (``past_key_values`` still accepted there with a deprecation
  warning, and due to go away); the same for the output field.
* :func:`chat_ids` — ``apply_chat_template(..., return_tensors="pt")`` returns the ids tensor on
  4.57 and a ``BatchEncoding`` on 5.x.
* ``custom_generate`` callables get the cache as ``cache=`` on newer 5.x (:data:`CACHE_KWARGS`).
* Candidate generators: 5.25's assisted loop reads ``candidate_generator.num_drafting_tokens``
  before it starts (4.57 does not); ``RecyclingCandidateGenerator`` has it on every line, and
  ``tests/integrations/hf/test_custom_generate_contract.py`` derives the contract from the installed transformers.
* :func:`is_default_position_ids` — transformers 5 hands ``custom_generate`` callables the
  ``position_ids`` it built (``arange`` for an unpadded prompt); 4.57 does not.
* :func:`normalize_gguf_tokenizer` — the tokenizer converted from a GGUF file: 4.57 builds a
  ``LlamaTokenizerFast`` that prepends BOS and reports the BOS token as EOS, whatever the file
  says, and cleans up spaces before punctuation when decoding; 5.x builds a
  ``TokenizersBackend`` that follows the file. Both are brought to what the file says (the
  embedded SmolLM2: no BOS added, EOS ``<|im_end|>``) and decode exactly, so a text encodes to
  the same ids and decodes back to itself on both lines.
* :func:`drop_gguf_quantizer` — 5.x keeps a GGUF "quantizer" on a model loaded from a GGUF file
  although its weights are dequantised, and ``save_pretrained`` refuses to save it.
* :data:`TOKENIZER_CLASS` — the class name written into an exported ``tokenizer_config.json``
  that both lines load verbatim from ``tokenizer.json`` (see
  :mod:`tokenloom.integrations.hf.export`): a ``LlamaTokenizer`` name makes 5.x rebuild a
  sentencepiece-style pipeline that decodes byte-level BPE without spaces.

Importing this module imports nothing heavy; transformers is imported on first use.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Dict, Optional, Tuple

__all__ = [
    "CACHE_KWARGS",
    "drop_gguf_quantizer",
    "SUPPORTED_TRANSFORMERS",
    "cache_arg",
    "chat_ids",
    "output_cache",
    "TOKENIZER_CLASS",
    "init_cache_layer",
    "is_default_position_ids",
    "normalize_gguf_tokenizer",
    "transformers_version",
]

#: The transformers range tokenloom supports (pyproject's ``hf`` extra says the same).
SUPPORTED_TRANSFORMERS = ">=4.57,<6"

#: ``tokenizer_class`` of an exported tokenizer: loads ``tokenizer.json`` as it is on 4.57
#: (``PreTrainedTokenizerFast``) and 5.x (an alias of ``TokenizersBackend``).
TOKENIZER_CLASS = "PreTrainedTokenizerFast"


#: Names under which transformers hands a ``custom_generate`` callable the KV cache.
CACHE_KWARGS = ("past_key_values", "cache")


@functools.lru_cache(maxsize=None)
def _cache_kwarg_of(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters  # follows deprecate_kwarg's __wrapped__
    except (TypeError, ValueError, AttributeError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_arg(module: Any, cache: Any) -> Dict[str, Any]:
    """``{name: cache}`` for ``module(**inputs, **cache_arg(module, cache))``: the keyword its
    ``forward`` takes (``cache`` on transformers >= 5.2x, else ``past_key_values``). Works for a
    whole model and for one decoder layer."""
    return {_cache_kwarg_of(type(module)): cache}


def output_cache(out: Any) -> Any:
    """The KV cache of a model output (``out.cache`` on newer 5.x, ``out.past_key_values``
    before), without tripping the deprecated alias."""
    cache = out.get("cache") if hasattr(out, "get") else getattr(out, "cache", None)
    if cache is not None:
        return cache
    return out.get("past_key_values") if hasattr(out, "get") else getattr(out, "past_key_values", None)


def chat_ids(tokenizer: Any, messages: Any) -> Any:
    """LongTensor [1, n]: ``messages`` through the tokenizer's chat template with the generation
    prompt added (4.57 returns the tensor; 5.x a ``BatchEncoding`` holding it)."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    if not hasattr(out, "shape") and hasattr(out, "__getitem__"):
        out = out["input_ids"]
    return out


@functools.lru_cache(maxsize=None)
def transformers_version() -> Tuple[int, int]:
    """``(major, minor)`` of the installed transformers.

    Raises:
        ImportError: transformers is not installed (``pip install 'tokenloom[hf]'``).
    """
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - the hf extra is missing
        raise ImportError("tokenloom needs transformers for this: pip install 'tokenloom[hf]'") from e
    parts = transformers.__version__.split(".")
    return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)


@functools.lru_cache(maxsize=None)
def _lazy_init_takes_values() -> bool:
    from transformers.cache_utils import DynamicLayer

    params = list(inspect.signature(DynamicLayer.lazy_initialization).parameters)
    return len(params) >= 3  # (self, key_states, value_states) on 5.x; (self, key_states) on 4.57


def init_cache_layer(layer: Any, keys: Any, values: Any) -> None:
    """Initialise an empty ``DynamicLayer`` for tensors like ``keys`` / ``values`` [B, H, S, D]
    (dtype and device), then hold exactly those tensors (views are kept, nothing is copied)."""
    if _lazy_init_takes_values():
        layer.lazy_initialization(keys, values)
    else:
        layer.lazy_initialization(keys)
    layer.keys = keys
    layer.values = values


def is_default_position_ids(position_ids: Any, length: int) -> bool:
    """Whether ``position_ids`` is what transformers builds for an unpadded batch-1 prompt of
    ``length`` tokens (``arange(length)`` in shape [1, length] or [length]), i.e. carries no
    information beyond the prompt itself. None counts as default (4.57 passes none)."""
    if position_ids is None:
        return True
    import torch

    if not isinstance(position_ids, torch.Tensor) or position_ids.numel() != length:
        return False
    expected = torch.arange(length, device=position_ids.device, dtype=position_ids.dtype)
    return bool(torch.equal(position_ids.reshape(-1), expected))


def normalize_gguf_tokenizer(tokenizer: Any, *, add_bos: bool, eos_token_id: Optional[int]) -> Any:
    """Bring a tokenizer converted from a GGUF file to what the file says, on every line.

    Args:
        tokenizer: the fast tokenizer ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` built.
        add_bos: the file's ``tokenizer.ggml.add_bos_token`` (False when absent: 5.x's default).
            When False, a BOS that the converted tokenizer prepends (4.57) is switched off.
        eos_token_id: the file's ``tokenizer.ggml.eos_token_id``, or None to leave EOS alone.

    Decoding is made exact too (``clean_up_tokenization_spaces = False``: 4.57's default strips
    spaces before punctuation).

    Returns:
        The same tokenizer, changed in place.

    Raises:
        RuntimeError: the tokenizer still prepends tokens after ``add_bos_token = False``.
    """
    if not add_bos and _prefix_len(tokenizer):
        tokenizer.add_bos_token = False  # 4.57's LlamaTokenizerFast rebuilds its post-processor
        if _prefix_len(tokenizer):
            raise RuntimeError(
                f"{type(tokenizer).__name__} still prepends special tokens after add_bos_token=False; "
                f"transformers {'.'.join(map(str, transformers_version()))} is not handled by tokenloom.runtime.compat"
            )
    # 4.57 sets clean_up_tokenization_spaces=True, which strips spaces before punctuation when
    # decoding ("a , b" -> "a, b"); byte-level BPE decodes exactly without it (5.x ignores it).
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        tokenizer.clean_up_tokenization_spaces = False
    if eos_token_id is not None:
        token = tokenizer.convert_ids_to_tokens(int(eos_token_id))
        if token is not None and tokenizer.eos_token != token:
            tokenizer.eos_token = token
    return tokenizer


def _prefix_len(tokenizer: Any) -> int:
    """How many ids encoding adds before the text ("a" with and without special tokens)."""
    with_sp = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(with_sp) - len(without)


def drop_gguf_quantizer(model: Any) -> Any:
    """Forget the GGUF "quantizer" transformers 5.x attaches to a model loaded from a GGUF file
    (its weights are already dequantised to the load dtype), so that ``save_pretrained`` writes
    plain weights and a config without ``quantization_config``; a no-op on 4.57 and for models
    quantized any other way (those are left alone). Returns the model."""
    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)).lower() != "gguf":
        return model
    model.hf_quantizer = None
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            try:
                delattr(obj, "quantization_config")
            except AttributeError:
                obj.quantization_config = None
    if hasattr(model, "is_quantized") and not isinstance(type(model).__dict__.get("is_quantized"), property):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model
