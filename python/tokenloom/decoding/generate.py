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
        raise TypeError(f"input_ids: expected a torch.LongTensor [B, n], got {type(input_ids).__name__}")
    if input_ids.dtype != torch.long:
        raise ValueError(f"input_ids: expected dtype torch.int64, got {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected shape [B, n] (one row per request), got {list(input_ids.shape)}")
    if input_ids.shape[0] == 0:
        raise ValueError("input_ids: the batch is empty (B = 0); give at least one row")
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
    attention_mask: Optional["torch.Tensor"] = None,
    pad_token_id: Optional[int] = None,
    batch_budget: Union[str, int, None] = "auto",
    exact_rows: bool = False,
    **method_kwargs: Any,
) -> GenerateOutput:
    """Generate with one of tokenloom's decoding methods.

    Args:
        model: a Hugging Face causal LM (``model(input_ids, past_key_values=...)``).
        input_ids: LongTensor [B, n] (a 1-D [n] tensor is taken as one row), ids in [0, V).
            B > 1 rows are decoded together, one loop with every row's tree in one forward
            (:mod:`tokenloom.decoding.batch`): give their ``attention_mask``.
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
        pack: run CPU linears through pre-packed weights during the call
            (:mod:`tokenloom.runtime.cpupack`; ``"auto"``: the kernel measured fastest on this
            machine, :func:`tokenloom.spec.calibration.choose_pack`, measured once and saved;
            ``True``: insist on oneDNN (float32; bfloat16 where oneDNN runs it natively: AVX-512,
            AMX); ``"tiles"``: insist on tokenloom's small-M
            kernel (float32 / bfloat16); ``"packed-trees"`` / ``"tiles-trees"``: that kernel
            for tree steps and the model as loaded for one-token steps; ``"tiles-packed"``:
            tiles for one-token steps, oneDNN for tree steps; ``False``: run the
            model exactly as loaded). Where
            packing wins, small-batch forwards (tree steps) get much cheaper; logits change at
            float32 rounding level only.
        attention_mask: [B, n] of 0/1 (None: every position is a token), left padding as HF
            takes it for decoder-only models (a row's zeros come before its ones). Every row
            is then decoded as if unpadded; with B == 1 the padding is cut off and the one
            request runs as without a mask.
        pad_token_id: the id after a row's last token in ``sequences`` (rows of different
            lengths); default the model's generation config's, else the smallest stop token id,
            else 0.
        batch_budget: B > 1 with a speculative method: how many draft nodes a batched step
            verifies (:mod:`tokenloom.spec.batchbudget`). ``"auto"``: chosen every step from
            the measured cost of a forward of B rows (measured once per model, machine and B,
            saved) and each row's acceptance so far, down to none (plain batched decoding)
            where drafts do not pay; an int >= 0: at most that many per step, to the rows
            most likely to accept them; None: every row's whole tree. Checked, then ignored,
            for B == 1 and for plain decoding.
        exact_rows: compute every tree node's attention as the model's own one-token step
            would (:func:`tokenloom.runtime.gqa.exact_rows`), so a tree step's logits equal
            the greedy steps' bit for bit, bfloat16 included (where a batched attention's
            rounding otherwise flips a near-tie now and then); ``pack="auto"`` then runs
            tokenloom's tiles, whose rows do not depend on the row count (else the model as
            loaded). One attention call per node and layer: a 17-node tree step of the embedded
            model costs ~30% more in bfloat16 on a 2-core CPU. Default False.
        **method_kwargs: passed to the method's drafter (e.g. ``recycler=``, ``tree=`` for
            ``"recycling"``); unknown keywords are refused.

    Returns:
        GenerateOutput: ``.sequences`` LongTensor [B, n + new] and ``.stats``
        (``.stats.spec``: typed speculative statistics for speculative methods; for B > 1,
        ``.stats.rows``: each row's statistics, and ``.attention_mask`` marks each row's
        tokens; the input's left padding is kept and shorter rows end in ``pad_token_id``).

    Raises:
        TypeError: bad ``input_ids`` type, a ``seed`` that is not an int, unknown method keywords.
        ValueError: unknown ``method``, bad sampling values or sizes, ``input_ids`` on another
            device than the model, B == 0, a bad ``attention_mask`` (another shape, right
            padding, a row without a token, a row longer than the model's context), a streamer
            or a method without a batch form with B > 1, a ``batch_budget`` other than
            ``"auto"``, None or an int >= 0.
        IndexError: prompt or EOS ids outside the model's vocabulary.
    """
    import torch

    from tokenloom.runtime.cpupack import packed_linears, row_invariant_pack
    from tokenloom.runtime.gqa import exact_rows_block
    from tokenloom.spec.calibration import auto_pack
    from tokenloom.runtime.model import logits_width, model_dtype_device

    from tokenloom.spec.batchbudget import check_batch_budget

    if not isinstance(exact_rows, bool):
        raise TypeError(f"exact_rows: expected a bool, got {type(exact_rows).__name__}")
    vocab = logits_width(model)
    batch_budget = check_batch_budget(batch_budget)
    if exact_rows and pack == "auto":
        pack = row_invariant_pack(model)
    fn = resolve_method(method)
    check_kwargs(method, fn, method_kwargs)
    input_ids = _check_input_ids(input_ids, vocab, model_dtype_device(model)[1])
    mask = None
    if attention_mask is not None or input_ids.shape[0] > 1:
        from tokenloom.decoding.batch import check_attention_mask
        from tokenloom.runtime.model import context_length

        given = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = check_attention_mask(input_ids, given, context_length(model))
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
    if input_ids.shape[0] > 1:  # every refusal before the kernel choice (it may time the model)
        from tokenloom.decoding.batch import batch_factory, pad_id
        from tokenloom.decoding.plain import decode_plain

        if streamer is not None:
            raise ValueError(f"streamer: streams one request; got a batch of {input_ids.shape[0]} rows")
        factory = batch_factory(method, fn, method_kwargs)
        pad = pad_id(model, pad_token_id, sorted(cfg.eos_token_ids))
        with exact_rows_block(exact_rows):
            return _generate_batch(model, input_ids, mask, cfg, factory, fn is decode_plain, auto_pack(model, pack), pad,
                                   batch_budget)
    use_pack = auto_pack(model, pack)
    full, cut = input_ids, 0
    if mask is not None:  # one row: decode it unpadded, keep its padding in the output
        cut = int(input_ids.shape[1] - mask.sum())
        input_ids = input_ids[:, cut:]
    sink = TokenSink(cfg, streamer)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    start = time.perf_counter()
    spec = None
    with torch.inference_mode(), packed_linears(model, use_pack), exact_rows_block(exact_rows):
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
    sequences = torch.cat([full, new.view(1, -1)], dim=1)
    out_mask = None
    if mask is not None:
        out_mask = torch.ones_like(sequences)
        out_mask[0, :cut] = 0
    return GenerateOutput(sequences=sequences, stats=stats, attention_mask=out_mask)


def _generate_batch(
    model: Any, input_ids: Any, mask: Any, cfg: DecodeConfig, factory: Any, plain: bool, use_pack: Union[bool, str], pad: int,
    batch_budget: Any = "auto",
) -> GenerateOutput:
    """:func:`generate` of B > 1 left-padded rows (:mod:`tokenloom.decoding.batch`), the request
    checked: ``factory`` makes each row's drafter, ``pad`` follows a row's last token,
    ``batch_budget`` the draft nodes of each step."""
    import torch

    from tokenloom.decoding.batch import batch_stats, decode_batch
    from tokenloom.runtime.cpupack import packed_linears

    start = time.perf_counter()
    with torch.inference_mode(), packed_linears(model, use_pack):
        sinks, specs = decode_batch(model, input_ids, mask, cfg, factory, batch_budget)
    seconds = time.perf_counter() - start
    width = max(len(s.tokens) for s in sinks)
    rows, n = int(input_ids.shape[0]), int(input_ids.shape[1])
    new = torch.full((rows, width), pad, dtype=torch.long)
    out_mask = torch.zeros((rows, n + width), dtype=torch.long)
    out_mask[:, :n] = mask.long().cpu()
    for b, sink in enumerate(sinks):
        new[b, : len(sink.tokens)] = torch.tensor(sink.tokens, dtype=torch.long)
        out_mask[b, n : n + len(sink.tokens)] = 1
    dev = input_ids.device
    return GenerateOutput(
        sequences=torch.cat([input_ids, new.to(dev)], dim=1),
        stats=batch_stats(sinks, specs, seconds, plain),
        attention_mask=out_mask.to(dev),
    )
