"""Token Recycling inside Hugging Face transformers' own ``generate`` (4.57 and 5.x).

Two ways in:

* :func:`recycling_generate` — ``model.generate(ids, custom_generate=tokenloom.hf.recycling_generate,
  max_new_tokens=..., do_sample=False)``: HF prepares the generation config, then tokenloom's
  tree loop (``tokenloom.generate(method="recycling")``) does the decoding. Trees of up to 81
  tokens per forward, verified losslessly.
* :class:`RecyclingCandidateGenerator` — a transformers ``CandidateGenerator`` proposing the
  recycler's rank-0 CHAIN (HF's assisted loop verifies chains, not trees) and updating the
  recycler from the scores HF passes back; :func:`recycling_assisted_generate` runs it inside
  HF's own ``_assisted_decoding`` (``custom_generate=tokenloom.hf.recycling_assisted_generate``).

Both take extra ``generate`` keywords: ``recycler=`` (a :class:`~tokenloom.TokenRecycler`,
default the process-wide one, so the hot start carries across calls).
:func:`recycling_generate` takes batches (B > 1 left-padded prompts, as HF's ``generate`` takes
them: ``tokenloom.generate``'s batched loop, every row's tree in one forward); the assisted
path takes batch size 1 (HF's assisted loop does). What :func:`recycling_generate` cannot
honour (custom logits processors beyond temperature / top-k / top-p / min-p, stopping criteria
beyond max length and EOS, right padding, beams, ``output_scores`` and friends) is refused
with a ValueError naming it.

Streaming: pass ``token_streamer=<streamer>`` to ``model.generate`` (it reaches the callable as an
extra keyword). transformers 4.57 does not forward ``streamer=`` to a ``custom_generate`` callable
(it streams the prompt, then drops the argument); as a fallback both functions find it in the
calling ``generate`` frame and warn.
"""

from __future__ import annotations

import inspect
import threading
import warnings
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

try:
    import torch
    from transformers.generation.candidate_generator import CandidateGenerator
except ImportError as e:  # pragma: no cover - the hf extra is missing
    raise ImportError("tokenloom.hf needs torch and transformers: pip install 'tokenloom[hf]'") from e

from tokenloom.runtime.compat import CACHE_KWARGS, is_default_position_ids
from tokenloom.runtime.model import logits_width
from tokenloom.spec.base import DraftTree
from tokenloom.spec.recycling.drafter import RecyclingDrafter
from tokenloom.spec.recycling.recycler import TokenRecycler, default_recycler, recycler_changed
from tokenloom.spec.templates import chain_paths
from tokenloom.verify.kernels import VerifyResult

if TYPE_CHECKING:  # pragma: no cover
    from transformers import GenerationConfig

__all__ = ["RecyclingCandidateGenerator", "recycling_assisted_generate", "recycling_generate"]

#: Chain length proposed per step by :class:`RecyclingCandidateGenerator` (default).
DEFAULT_NUM_TOKENS = 6

# model_kwargs that HF's generate adds itself and that carry no request semantics for us.
_BENIGN_MODEL_KWARGS = frozenset(
    {"attention_mask", *CACHE_KWARGS, "use_cache", "logits_to_keep", "cache_position", "return_dict"}
)


# --- shared helpers ----------------------------------------------------------------------------


class _AfterPrompt:
    """Streamer proxy dropping the first ``put`` (HF's generate already streamed the prompt)."""

    def __init__(self, streamer: Any):
        self.streamer = streamer
        self.first = True

    def put(self, value: Any) -> None:
        if self.first:
            self.first = False
            return
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


def _caller_streamer(model: Any) -> Any:
    """The ``streamer`` argument of the ``model.generate`` call that invoked us (transformers
    4.57 streams the prompt but does not forward ``streamer`` to custom_generate callables)."""
    frame = inspect.currentframe()
    try:
        f = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(6):
            if f is None:
                return None
            if f.f_code.co_name == "generate" and f.f_locals.get("self") is model and "streamer" in f.f_locals:
                return f.f_locals["streamer"]
            f = f.f_back
        return None
    finally:
        del frame


def _resolve_streamer(model: Any, streamer: Any, token_streamer: Any, who: str) -> Tuple[Any, bool]:
    """``(streamer, prompt_streamed)``: the streamer to feed and whether HF already streamed the
    prompt. An explicit ``token_streamer=`` wins; ``streamer=`` is used when transformers
    forwarded it; else the ``streamer`` of the calling ``model.generate`` frame is used with a
    warning (transformers 4.57 streams the prompt but does not forward ``streamer`` to a
    ``custom_generate`` callable)."""
    if token_streamer is not None:
        return token_streamer, False
    if streamer is not None:
        return streamer, True
    found = _caller_streamer(model)
    if found is not None:
        warnings.warn(
            f"{who}: transformers did not pass streamer= to custom_generate; found it in the calling "
            "generate() frame. Pass token_streamer=<streamer> to model.generate instead (no prompt echo).",
            UserWarning,
            stacklevel=4,
        )
    return found, found is not None


def _check_batch(input_ids: Any, who: str) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{who}: expected input_ids LongTensor [1, n], got {getattr(input_ids, 'shape', input_ids)!r}")
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"{who}: batch size 1 only (got input_ids of shape {list(input_ids.shape)}; "
            "num_return_sequences > 1 also makes a batch); loop over the prompts instead"
        )


def _check_position_ids(position_ids: Any, attention_mask: Any, length: int, who: str) -> None:
    """Refuse position ids other than what HF builds for the prompt: none, ``arange(n)`` or,
    with a padding mask, the mask's running count (``cumsum - 1``) at every token."""
    if is_default_position_ids(position_ids, length):
        return
    if attention_mask is not None and isinstance(position_ids, torch.Tensor) and position_ids.shape == attention_mask.shape:
        tokens = attention_mask.bool()
        counted = attention_mask.long().cumsum(-1) - 1
        if bool(torch.equal(position_ids[tokens].long(), counted[tokens])):
            return
    raise ValueError(f"{who}: custom position_ids are not supported (only those HF builds from the prompt and its mask)")



# --- custom_generate: tokenloom's tree loop --------------------------------------------------


def _sampling_from_processors(processors: Sequence[Any], do_sample: bool) -> Dict[str, Any]:
    """Map HF's prepared logits processors onto tokenloom's transforms, refusing the rest."""
    from transformers.generation.logits_process import (
        MinPLogitsWarper,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    order = [TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper]
    out: Dict[str, Any] = {"temperature": 1.0, "top_k": None, "top_p": None, "min_p": None}
    last = -1
    for p in processors:
        kind = type(p)
        if kind not in order:
            raise ValueError(
                f"recycling_generate: logits processor {kind.__name__} is not supported (only temperature, "
                "top_k, top_p and min_p, which tokenloom applies exactly); drop it or use plain model.generate"
            )
        i = order.index(kind)
        if i <= last:
            raise ValueError(
                "recycling_generate: logits warpers must come once each, in the order temperature, top_k, "
                f"top_p, min_p (got {[type(q).__name__ for q in processors]})"
            )
        last = i
        if getattr(p, "min_tokens_to_keep", 1) != 1:
            raise ValueError(f"recycling_generate: {kind.__name__}(min_tokens_to_keep != 1) is not supported")
        if kind is TemperatureLogitsWarper:
            out["temperature"] = float(p.temperature)
        elif kind is TopKLogitsWarper:
            out["top_k"] = int(p.top_k)
        elif kind is TopPLogitsWarper:
            out["top_p"] = float(p.top_p)
        else:
            out["min_p"] = float(p.min_p)
    if not do_sample:  # every allowed warper keeps the argmax: greedy is greedy
        return {"temperature": 0.0, "top_k": None, "top_p": None, "min_p": None}
    return out


def _stop_rules(stopping_criteria: Sequence[Any], generation_config: Any, prompt_len: int) -> Tuple[int, List[int]]:
    from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria

    max_length = generation_config.max_length
    eos: List[int] = []
    for c in stopping_criteria:
        if isinstance(c, MaxLengthCriteria):
            max_length = c.max_length if max_length is None else min(max_length, c.max_length)
        elif isinstance(c, EosTokenCriteria):
            eos += [int(t) for t in torch.as_tensor(c.eos_token_id).flatten().tolist()]
        else:
            raise ValueError(
                f"recycling_generate: stopping criterion {type(c).__name__} is not supported (only max length "
                "and EOS); drop it or use plain model.generate"
            )
    if max_length is None:
        raise ValueError("recycling_generate: no max_length / max_new_tokens in the generation config")
    return max(0, int(max_length) - prompt_len), sorted(set(eos))


def _pad_id(generation_config: Any) -> Optional[int]:
    """HF's pad id for finished rows: the config's ``pad_token_id``, else its first EOS."""
    for value in (generation_config.pad_token_id, generation_config.eos_token_id):
        ids = torch.as_tensor(value).flatten().tolist() if value is not None else []
        if ids:
            return int(ids[0])
    return None


def recycling_generate(
    model: Any,
    input_ids: "torch.LongTensor",
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: Optional["GenerationConfig"] = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    recycler: Optional[TokenRecycler] = None,
    tree: Any = "auto",
    seed: Optional[int] = None,
    token_streamer: Any = None,
    exact_rows: bool = False,
    **model_kwargs: Any,
) -> Any:
    """``custom_generate`` callable: HF's ``generate`` front end, tokenloom's tree loop.

    Use as ``model.generate(input_ids, custom_generate=tokenloom.hf.recycling_generate,
    max_new_tokens=64, do_sample=False)``; the extra keywords ``recycler=``, ``tree=`` (as in
    ``tokenloom.generate(method="recycling")``), ``seed=``, ``token_streamer=`` (stream the
    new tokens; transformers 4.57 drops ``streamer=`` for custom_generate callables) and
    ``exact_rows=`` (tree nodes computed as their own one-token steps: bit-exact greedy in
    bfloat16 too, see ``tokenloom.generate``) pass through ``generate``.

    Mapped: ``max_new_tokens`` / ``max_length``, ``eos_token_id``, ``do_sample`` with
    ``temperature`` / ``top_k`` / ``top_p`` / ``min_p`` (HF's defaults included, e.g. top_k=50),
    ``streamer``. Sampling draws its seed from torch's global generator when ``seed`` is None,
    so ``torch.manual_seed`` makes runs reproducible as with HF (the draws differ from HF's)
    when the drafts are the same too: a fixed ``tree`` and the same recycler state (a
    ``recycler=`` of your own; the process-wide one learns from every run).

    Batches: B > 1 left-padded prompts (``attention_mask`` from the tokenizer with
    ``padding_side="left"``) run in tokenloom's batched loop; rows that stop early are padded
    with the generation config's ``pad_token_id`` (else the first EOS), as HF pads them.

    Returns:
        LongTensor [B, prompt + new] (HF's default), or ``GenerateDecoderOnlyOutput`` with
        ``sequences`` when ``return_dict_in_generate=True``.

    Raises:
        ValueError: right padding in the attention mask, a streamer with B > 1, beams, a non-empty incoming cache,
        ``output_scores`` / ``output_logits`` / ``output_attentions`` / ``output_hidden_states``,
        logits processors or stopping criteria it cannot honour, unknown model kwargs.
    """
    from tokenloom.decoding.generate import generate

    who = "recycling_generate"
    if generation_config is None:
        raise TypeError(f"{who}: call it through model.generate(..., custom_generate=tokenloom.hf.{who})")
    if (generation_config.num_beams or 1) != 1:
        raise ValueError(f"{who}: beam search is not supported (num_beams={generation_config.num_beams})")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{who}: expected input_ids LongTensor [B, n], got {getattr(input_ids, 'shape', input_ids)!r}")
    if synced_gpus:
        raise ValueError(f"{who}: synced_gpus (multi-GPU sharded generation) is not supported")
    if generation_config.return_dict_in_generate:
        for flag in ("output_scores", "output_logits", "output_attentions", "output_hidden_states"):
            if getattr(generation_config, flag, False):
                raise ValueError(f"{who}: {flag}=True is not supported (only sequences are returned)")
    mask = model_kwargs.get("attention_mask")
    for name in CACHE_KWARGS:
        cache = model_kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0:
            raise ValueError(f"{who}: an incoming {name} with cached tokens is not supported")
    _check_position_ids(model_kwargs.get("position_ids"), mask, int(input_ids.shape[1]), who)
    extra = sorted(
        k for k, v in model_kwargs.items() if k not in _BENIGN_MODEL_KWARGS and k != "position_ids" and v is not None
    )
    if extra:
        raise ValueError(f"{who}: unsupported model kwargs {extra} (decoder-only text models, input_ids only)")
    if model_kwargs.get("use_cache") is False:
        raise ValueError(f"{who}: use_cache=False is not supported (the tree loop needs the KV cache)")
    sampling = _sampling_from_processors(list(logits_processor or []), bool(generation_config.do_sample))
    max_new, eos = _stop_rules(list(stopping_criteria or []), generation_config, int(input_ids.shape[1]))
    if sampling["temperature"] > 0 and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    streamer, prompt_streamed = _resolve_streamer(model, streamer, token_streamer, who)
    if streamer is not None and prompt_streamed:
        streamer = _AfterPrompt(streamer)
    out = generate(
        model,
        input_ids,
        method="recycling",
        max_new_tokens=max_new,
        eos_token_id=eos,
        seed=seed,
        streamer=streamer,
        recycler=recycler,
        tree=tree,
        attention_mask=mask,
        pad_token_id=_pad_id(generation_config),
        exact_rows=exact_rows,
        **sampling,
    )
    if generation_config.return_dict_in_generate:
        from transformers.generation.utils import GenerateDecoderOnlyOutput

        return GenerateDecoderOnlyOutput(sequences=out.sequences)
    return out.sequences


# --- assisted generation: the recycler as HF's candidate generator ---------------------------


class RecyclingCandidateGenerator(CandidateGenerator):  # type: ignore[misc]
    """A transformers ``CandidateGenerator`` over Token Recycling's drafter.

    ``get_candidates`` proposes the drafter's rank-0 chain below the last token (``A[t, 0]``,
    then that token's rank-0 candidate, ...; HF verifies chains), cut before an EOS and to the
    length budget; ``update_candidate_strategy`` hands HF's verdict to the drafter's
    ``accept`` (rows of the root and every proposed token := the top-k of HF's processed scores
    there; acceptance statistics). The drafter owns its chain template: a shared recycler's
    own template is never touched.

    Args:
        recycler: the recycler (its ``k`` sets the top-k of the update).
        num_tokens: chain length proposed per step (>= 1).
        eos_token_id: id(s) the chain must not run through (int, sequence or tensor).
        max_length: HF's ``generation_config.max_length`` (prompt included), or None.

    Attributes:
        drafter: the :class:`~tokenloom.spec.recycling.drafter.RecyclingDrafter`.
        steps, matches: verify steps and accepted candidates so far (``1 + matches / steps`` is
        the mean accepted tokens per forward).
    """

    def __init__(
        self,
        recycler: TokenRecycler,
        num_tokens: int = DEFAULT_NUM_TOKENS,
        *,
        eos_token_id: Any = None,
        max_length: Optional[int] = None,
    ):
        if not isinstance(recycler, TokenRecycler):
            raise TypeError(f"recycler: expected a tokenloom.TokenRecycler, got {type(recycler).__name__}")
        if isinstance(num_tokens, bool) or not isinstance(num_tokens, int) or num_tokens < 1:
            raise ValueError(f"num_tokens: expected an int >= 1, got {num_tokens!r}")
        self.recycler = recycler
        self.num_tokens = num_tokens
        self.drafter = RecyclingDrafter(recycler, tree=chain_paths(num_tokens), seed_prefill=False)
        self.eos = set() if eos_token_id is None else {int(t) for t in torch.as_tensor(eos_token_id).flatten().tolist()}
        self.max_length = max_length
        self.steps = 0
        self.matches = 0
        self._last: Optional[DraftTree] = None

    def get_candidates(self, input_ids: "torch.LongTensor") -> Tuple["torch.LongTensor", None]:
        """``(input_ids + chain [1, n + m], None)``; ``m = 0`` (no candidates) near the length
        budget."""
        _check_batch(input_ids, "RecyclingCandidateGenerator")
        root = int(input_ids[0, -1])
        n = self.num_tokens
        if self.max_length is not None:
            n = min(n, int(self.max_length) - int(input_ids.shape[1]) - 1)
        tree = self.drafter.propose(root, int(input_ids.shape[1]) - 1)
        m = max(0, n)
        for i, tok in enumerate(tree.tokens[1 : m + 1].tolist()):
            if tok in self.eos:
                m = i
                break
        m = min(m, tree.size - 1)
        tree = DraftTree(tree.tokens[: m + 1], tree.parents[: m + 1], tree.depths[: m + 1])
        self._last = tree
        if m == 0:
            return input_ids, None
        cand = torch.from_numpy(tree.tokens[1:]).to(input_ids.device).view(1, -1)
        return torch.cat([input_ids, cand], dim=1), None

    def update_candidate_strategy(self, input_ids: "torch.LongTensor", scores: "torch.FloatTensor", num_matches: int) -> None:
        """Hand HF's verdict to the drafter: ``scores`` [1, m + 1, V] are HF's processed scores
        after the root and the m candidates; the last ``num_matches + 1`` tokens of
        ``input_ids`` are what HF emitted."""
        if self._last is None:
            return
        tree, self._last = self._last, None
        rows = scores[0] if scores.dim() == 3 else scores
        if rows.shape[0] != tree.size:
            raise ValueError(
                f"update_candidate_strategy: expected scores for {tree.size} positions (root + candidates), "
                f"got shape {list(scores.shape)}"
            )
        a = int(num_matches)
        emitted = input_ids[0, -(a + 1) :].cpu().numpy().astype(np.int64)
        self.drafter.accept(tree, VerifyResult(np.arange(a + 1, dtype=np.int64), emitted), rows)
        self.steps += 1
        self.matches += a

    @property
    def num_drafting_tokens(self) -> int:
        """Most candidate tokens proposed per step (``num_tokens``): transformers >= 5.2x reads
        it to size the cache's past recording before its assisted loop starts."""
        return self.num_tokens

    @property
    def mean_accepted(self) -> float:
        """Mean tokens emitted per verify forward (accepted candidates + 1)."""
        return 1.0 + self.matches / self.steps if self.steps else 0.0


def recycling_assisted_generate(
    model: Any,
    input_ids: "torch.LongTensor",
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: Optional["GenerationConfig"] = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    inputs_tensor: Any = None,
    recycler: Optional[TokenRecycler] = None,
    num_tokens: int = DEFAULT_NUM_TOKENS,
    candidate_generator: Optional[RecyclingCandidateGenerator] = None,
    token_streamer: Any = None,
    **model_kwargs: Any,
) -> Any:
    """``custom_generate`` callable running HF's own assisted loop (``model._assisted_decoding``)
    with a :class:`RecyclingCandidateGenerator`; greedy and sampling (HF's per-position
    sampling of a deterministic chain, lossless), every HF logits processor and stopping
    criterion honoured by HF itself.

    Use as ``model.generate(ids, custom_generate=tokenloom.hf.recycling_assisted_generate,
    max_new_tokens=64)``; extra keywords ``recycler=``, ``num_tokens=`` or a ready
    ``candidate_generator=`` (to read its ``mean_accepted`` afterwards).

    HF's assisted loop asks ``model._get_candidate_generator`` for its drafter, so that method
    is replaced on the instance for the call only and restored afterwards (also on error).
    Calls on one model instance are serialised by a per-model lock (two threads may share a
    model; their assisted calls then run one after the other), so the replacement is never
    seen by another call.

    Raises:
        ValueError: batch > 1 (HF's assisted loop takes one sequence).
    """
    who = "recycling_assisted_generate"
    if generation_config is None:
        raise TypeError(f"{who}: call it through model.generate(..., custom_generate=tokenloom.hf.{who})")
    if (generation_config.num_beams or 1) != 1:
        raise ValueError(f"{who}: beam search is not supported (num_beams={generation_config.num_beams})")
    _check_batch(input_ids, who)
    gen = candidate_generator
    if gen is None:
        rec = recycler if recycler is not None else default_recycler(logits_width(model), model=model)
        gen = RecyclingCandidateGenerator(
            rec,
            num_tokens,
            eos_token_id=getattr(generation_config, "_eos_token_tensor", None),
            max_length=generation_config.max_length,
        )
    elif gen.max_length is None:
        gen.max_length = generation_config.max_length
    streamer, prompt_streamed = _resolve_streamer(model, streamer, token_streamer, who)
    if streamer is not None and not prompt_streamed:
        streamer.put(input_ids.cpu())

    def _candidate_generator(*args: Any, **kwargs: Any) -> RecyclingCandidateGenerator:
        return gen

    with _patch_lock(model):
        had = "_get_candidate_generator" in vars(model)
        saved = vars(model).get("_get_candidate_generator")
        model._get_candidate_generator = _candidate_generator
        try:
            out = model._assisted_decoding(
                input_ids,
                logits_processor=logits_processor,
                stopping_criteria=stopping_criteria,
                generation_config=generation_config,
                synced_gpus=synced_gpus,
                streamer=streamer,
                inputs_tensor=inputs_tensor,
                **model_kwargs,
            )
        finally:
            if had:
                model._get_candidate_generator = saved
            else:
                del model._get_candidate_generator
    if candidate_generator is None and recycler is None:
        recycler_changed(gen.recycler, model)  # persist the per-model default recycler (throttled)
    return out


_PATCH_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_PATCH_LOCKS_GUARD = threading.Lock()


def _patch_lock(model: Any) -> "threading.RLock":
    """The lock serialising instance patches of ``model`` (one per model, freed with it)."""
    with _PATCH_LOCKS_GUARD:
        lock = _PATCH_LOCKS.get(model)
        if lock is None:
            lock = _PATCH_LOCKS[model] = threading.RLock()
        return lock
