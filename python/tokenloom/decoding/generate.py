"""tokenloom's own decoding loop, shared by every method (plain decoding, Token Recycling,
DySpec, ...). A method is a function registered with :func:`register_method`; it drives the
model and hands every step's emitted tokens to a :class:`TokenSink`, which applies the stop
rules, feeds the streamer and keeps the statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "DecodeConfig",
    "GenerateOutput",
    "GenerateStats",
    "TokenSink",
    "generate",
    "methods",
    "register_method",
]


@dataclass
class GenerateStats:
    """Statistics of one :func:`generate` call.

    ``steps`` counts target-model forwards that emitted tokens, the prefill included, so plain
    decoding has ``mean_accepted == 1.0`` and a speculative method's ``mean_accepted`` is its
    mean accepted tokens per step (bonus token included, as in the papers' MAT).
    """

    steps: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)

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
        )


@dataclass
class GenerateOutput:
    """``sequences``: LongTensor [1, prompt_len + new_tokens]; ``stats``: :class:`GenerateStats`."""

    sequences: "torch.Tensor"
    stats: GenerateStats


@dataclass(frozen=True)
class DecodeConfig:
    """What every method needs to know about the request.

    ``temperature == 0`` means greedy. The sampling transforms apply in the order
    temperature -> top-k -> top-p -> min-p (see :mod:`tokenloom.sampling`).
    """

    max_new_tokens: int
    eos_token_ids: FrozenSet[int]
    temperature: float = 0.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenSink:
    """Collects emitted tokens, stops at EOS or ``max_new_tokens``, streams, counts steps."""

    def __init__(self, cfg: DecodeConfig, streamer: Any = None):
        self.cfg = cfg
        self.streamer = streamer
        self.tokens: List[int] = []
        self.steps = 0
        self.done = cfg.max_new_tokens <= 0

    def emit(self, tokens: Iterable[int]) -> bool:
        """Record one step's tokens (truncated at EOS / the token budget). Returns ``done``."""
        self.steps += 1
        kept: List[int] = []
        for t in tokens:
            if self.done:
                break
            t = int(t)
            kept.append(t)
            self.tokens.append(t)
            if t in self.cfg.eos_token_ids or len(self.tokens) >= self.cfg.max_new_tokens:
                self.done = True
        if self.streamer is not None and kept:
            import torch

            self.streamer.put(torch.tensor([kept], dtype=torch.long))
        return self.done


MethodFn = Callable[..., None]
_METHODS: Dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Register ``fn(model, input_ids, cfg, sink, **kwargs)`` as ``generate(method=name)``."""

    def deco(fn: MethodFn) -> MethodFn:
        _METHODS[name] = fn
        return fn

    return deco


def methods() -> List[str]:
    """Names accepted by ``generate(method=...)``."""
    _load_methods()
    return sorted(_METHODS)


def _load_methods() -> None:
    # Importing the method modules registers them.
    import tokenloom.decoding.plain  # noqa: F401
    import tokenloom.spec.dyspec.drafter  # noqa: F401
    import tokenloom.spec.recycling.drafter  # noqa: F401


def _check_input_ids(input_ids: Any) -> "torch.Tensor":
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
    return input_ids


def _eos_set(model: Any, eos_token_id: Union[None, int, Sequence[int]]) -> FrozenSet[int]:
    from tokenloom.integrations.hf.models import stop_token_ids

    if eos_token_id is None:
        return frozenset(stop_token_ids(model))
    if isinstance(eos_token_id, int):
        return frozenset([eos_token_id])
    return frozenset(int(e) for e in eos_token_id)


def generate(
    model: Any,
    input_ids: "torch.Tensor",
    *,
    method: str = "greedy",
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
        input_ids: LongTensor [1, n] (a 1-D [n] tensor is taken as one row).
        method: ``"greedy"`` (plain decoding; samples when ``temperature > 0``) or a
            speculative method, see :func:`methods`.
        max_new_tokens: most tokens to add.
        eos_token_id: stop token(s); default ``model.generation_config.eos_token_id``.
        temperature, top_k, top_p, min_p: sampling transforms; temperature 0 is greedy.
        seed: seed of the sampler (reproducible runs for a fixed ``tree``; with ``tree="auto"``
            the draft size follows measured step times, so two sampled runs can differ -- each
            is still an exact sample).
        streamer: HF-style streamer (``put``/``end``); receives the prompt first, as in HF.
        pack: run float32 CPU linears through pre-packed oneDNN weights during the call
            (:mod:`tokenloom.cpupack`; ``"auto"``: when possible, ``True``: insist,
            ``False``: run the model exactly as loaded). Small-batch forwards (tree steps) get
            much cheaper; logits change at float32 rounding level only.
        **method_kwargs: passed to the method (e.g. ``recycler=`` for ``"recycling"``).

    Returns:
        GenerateOutput: ``.sequences`` LongTensor [1, n + new] and ``.stats``.

    Raises:
        TypeError / ValueError: bad ``input_ids``, unknown ``method``, bad sampling values.
    """
    import torch

    input_ids = _check_input_ids(input_ids)
    _load_methods()
    if method not in _METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(_METHODS)}")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens!r}")
    if not (temperature >= 0.0):
        raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
    cfg = DecodeConfig(
        max_new_tokens=max_new_tokens,
        eos_token_ids=_eos_set(model, eos_token_id),
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
    )
    sink = TokenSink(cfg, streamer)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    from tokenloom.runtime.cpupack import packed_linears, resolve_pack

    use_pack = resolve_pack(model, pack)
    start = time.perf_counter()
    with torch.inference_mode(), packed_linears(model, use_pack):
        if not sink.done:
            _METHODS[method](model, input_ids, cfg, sink, **method_kwargs)
    seconds = time.perf_counter() - start
    if streamer is not None:
        streamer.end()
    new = torch.tensor([sink.tokens], dtype=torch.long, device=input_ids.device)
    stats = GenerateStats(steps=sink.steps, new_tokens=len(sink.tokens), seconds=seconds)
    extra = getattr(sink, "extra", None)
    if extra:
        stats.extra.update(extra)
    return GenerateOutput(sequences=torch.cat([input_ids, new.view(1, -1)], dim=1), stats=stats)
