"""``tokenloom.generate``: one entry point for every decoding method. It validates the request
up front (before any model work), resolves the method in the explicit table
(:mod:`tokenloom.decoding.methods`), runs it inside ``torch.inference_mode`` and (by default)
pre-packed CPU linears, and returns the sequence and its statistics."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from tokenloom.request.config import DecodeConfig, make_config
from tokenloom.decoding.methods import check_kwargs, methods, register_method, resolve_method
from tokenloom.request.sink import TokenSink
from tokenloom.request.stats import GenerateOutput, GenerateStats

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DecodeConfig", "GenerateOutput", "GenerateStats", "TokenSink", "generate", "methods", "register_method"]


def _check_input_ids(input_ids: Any, vocab: int, device: Any) -> "torch.Tensor":
    import torch

    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids: expected a torch.LongTensor [1, n], got {type(input_ids).__name__}")
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids: expected dtype torch.int64, got {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids: expected shape [1, n] (batch size 1), got {list(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids: the prompt is empty; give at least one token")
    if input_ids.device != device:
        raise ValueError(
            f"input_ids are on {input_ids.device} but the model is on {device}: "
            f"pass input_ids.to({str(device)!r})"
        )
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab:
        bad = lo if lo < 0 else hi
        raise IndexError(f"input_ids: token id {bad} is outside the model's vocabulary [0, {vocab})")
    return input_ids


def _eos_ids(model: Any, eos_token_id: Union[None, int, Sequence[int]]) -> Any:
    from tokenloom.runtime.model import stop_token_ids

    return stop_token_ids(model) if eos_token_id is None else eos_token_id


def generate(
    model: Any,
    input_ids: "torch.Tensor",
    *,
    method: str = "plain",
    max_new_tokens: int = 128,
    eos_token_id: Union[None, int, Sequence[int]] = None,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    min_p: Optional[float] = None,
    seed: Optional[int] = None,
    streamer: Any = None,
    pack: Union[bool, str] = "auto",
    **method_kwargs: Any,
) -> GenerateOutput:
    """Generate with one of tokenloom's decoding methods.

    Args:
        model: a Hugging Face causal LM (``model(input_ids, past_key_values=...)``).
        input_ids: LongTensor [1, n] (a 1-D [n] tensor is taken as one row), ids in [0, V).
        method: ``"plain"`` (alias ``"greedy"``: one forward per token; samples when
            ``temperature > 0``) or a speculative method: ``"recycling"``, ``"dyspec"``,
            ``"lookup"`` (see :func:`methods`). Every method gives exactly the target's greedy
            output at temperature 0 and an exact sample of its distribution otherwise.
        max_new_tokens: most tokens to add (>= 0).
        eos_token_id: stop token(s); default ``model.generation_config.eos_token_id``.
        temperature, top_k, top_p, min_p: sampling transforms; temperature 0 is greedy. All are
            validated whatever the temperature.
        seed: seed of the run (reproducible for a fixed ``tree``; with ``tree="auto"`` the draft
            size follows measured step times, so two sampled runs can differ -- each is still
            an exact sample).
        streamer: HF-style streamer (``put``/``end``); receives the prompt first, as in HF.
        pack: run float32 CPU linears through pre-packed oneDNN weights during the call
            (:mod:`tokenloom.runtime.cpupack`; ``"auto"``: where packing measured faster on this
            machine, :func:`tokenloom.spec.calibration.choose_pack`, measured once and saved;
            ``True``: insist; ``False``: run the model exactly as loaded). Where packing wins,
            small-batch forwards (tree steps) get much cheaper; logits change at float32
            rounding level only.
        **method_kwargs: passed to the method's drafter (e.g. ``recycler=``, ``tree=`` for
            ``"recycling"``); unknown keywords are refused.

    Returns:
        GenerateOutput: ``.sequences`` LongTensor [1, n + new] and ``.stats``
        (``.stats.spec``: typed speculative statistics for speculative methods).

    Raises:
        TypeError: bad ``input_ids`` type, a ``seed`` that is not an int, unknown method keywords.
        ValueError: unknown ``method``, bad sampling values or sizes, ``input_ids`` on another
            device than the model.
        IndexError: prompt or EOS ids outside the model's vocabulary.
    """
    import torch

    from tokenloom.runtime.cpupack import packed_linears
    from tokenloom.spec.calibration import auto_pack
    from tokenloom.runtime.model import logits_width, model_dtype_device

    vocab = logits_width(model)
    fn = resolve_method(method)
    check_kwargs(method, fn, method_kwargs)
    input_ids = _check_input_ids(input_ids, vocab, model_dtype_device(model)[1])
    cfg = make_config(
        max_new_tokens=max_new_tokens,
        eos_token_ids=_eos_ids(model, eos_token_id),
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
        vocab_size=vocab,
    )
    use_pack = auto_pack(model, pack)
    sink = TokenSink(cfg, streamer)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    start = time.perf_counter()
    spec = None
    with torch.inference_mode(), packed_linears(model, use_pack):
        # Called even with nothing to generate: a method checks its arguments first.
        spec = fn(model, input_ids, cfg, sink, **method_kwargs)
    seconds = time.perf_counter() - start
    if streamer is not None:
        streamer.end()
    new = torch.tensor([sink.tokens], dtype=torch.long, device=input_ids.device)
    stats = GenerateStats(steps=sink.steps, new_tokens=len(sink.tokens), seconds=seconds)
    if spec is not None:
        stats.spec = spec
        stats.extra.update(spec.as_dict())
        setup = float(stats.extra.get("setup_seconds", 0.0) or 0.0)
        stats.setup_seconds, stats.seconds = setup, max(seconds - setup, 0.0)
    return GenerateOutput(sequences=torch.cat([input_ids, new.view(1, -1)], dim=1), stats=stats)
