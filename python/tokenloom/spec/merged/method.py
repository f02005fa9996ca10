"""``generate(method="merged")`` and ``generate(method="suffix")``: the factories that build the
:class:`~tokenloom.spec.merged.drafter.MergedDrafter` of one request (the recycler, the
cross-request suffix cache, the budget or ``budget="auto"`` with this machine's step cost)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

from tokenloom.runtime.model import logits_width
from tokenloom.spec.persist import resolve_persist
from tokenloom.spec.recycling.recycler import TokenRecycler, default_recycler, recycler_changed
from tokenloom.spec.sizing import StatsMemory, calibrate_step_cost
from tokenloom.spec.merged.calibration import Calibration
from tokenloom.spec.recycling.drafter import resolve_seed_prefill
from tokenloom.spec.merged.drafter import DEFAULT_MAX_BUDGET, DEFAULT_MAX_MATCH, DEFAULT_TREE_DEPTH, MergedDrafter
from tokenloom.spec.suffix.store import SuffixCache, default_suffix_cache, suffix_cache_changed

__all__ = ["CALIBRATION_MEMORY", "make_merged_drafter", "make_suffix_drafter"]

#: The acceptance calibration handed from one request to the next, per cross-request cache
#: (or recycler) and method (each request's drafter owns a copy).
CALIBRATION_MEMORY = {"merged": StatsMemory(), "suffix": StatsMemory()}


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


def _cache_arg(cache: Any, vocab: int, model: Any, persist: bool) -> Optional[SuffixCache]:
    if cache is None:
        return default_suffix_cache(vocab, model=model, persist=persist)
    if cache is False:
        return None
    if not isinstance(cache, SuffixCache):
        raise TypeError(f"cache: expected a SuffixCache, None (the process-wide one) or False (none), got {type(cache).__name__}")
    cache.check_vocab(vocab)
    return cache


def _build(
    name: str,
    model: Any,
    cfg: Any,
    recycler: Optional[TokenRecycler],
    cache: Optional[SuffixCache],
    budget: Union[int, str],
    finish: Optional[Callable[[], None]],
    **kwargs: Any,
) -> MergedDrafter:
    auto = isinstance(budget, str) and budget == "auto"
    cost = calibrate_step_cost(model, k=recycler.k if recycler is not None else 8) if auto else None
    memory = CALIBRATION_MEMORY[name]
    key = cache if cache is not None else recycler
    k = recycler.k if recycler is not None else 0
    calibration = memory.load(key, k, fresh=lambda: Calibration(k=k)) if key is not None else None
    remember = (lambda c: memory.save(key, c)) if key is not None else None
    return MergedDrafter(
        recycler=recycler, cache=cache, budget=budget, cost=cost, calibration=calibration, remember=remember,
        max_output=cfg.max_new_tokens, eos_token_ids=cfg.eos_token_ids, finish=finish, **kwargs,
    )


def _persisted(model: Any, keep: bool, recycler: Optional[TokenRecycler], cache: Optional[SuffixCache]) -> Optional[Callable[[], None]]:
    """What to save when a request ends: the default recycler and cache (the saving functions
    skip any other object)."""
    if not keep:
        return None

    def finish() -> None:
        if recycler is not None:
            recycler_changed(recycler, model, True)
        if cache is not None:
            suffix_cache_changed(cache, model, True)

    return finish


def make_merged_drafter(
    model: Any,
    cfg: Any,
    next_seed: Callable[[], int],
    *,
    recycler: Optional[TokenRecycler] = None,
    cache: Any = None,
    budget: Union[int, str] = "auto",
    max_budget: int = DEFAULT_MAX_BUDGET,
    max_depth: int = DEFAULT_TREE_DEPTH,
    max_match: int = DEFAULT_MAX_MATCH,
    seed_prefill: Optional[bool] = None,
    persist: Optional[bool] = None,
    cache_output: bool = True,
) -> MergedDrafter:
    """The drafter of ``generate(method="merged")``: suffix matches and recycled candidates in
    one budgeted tree.

    Args (keyword, through ``tokenloom.generate``):
        recycler: the :class:`TokenRecycler` (default: the process-wide one of the model's
            vocabulary, shared with ``method="recycling"``).
        cache: the cross-request :class:`~tokenloom.spec.suffix.store.SuffixCache` (None: the
            process-wide one of the model's vocabulary; False: none).
        budget: draft nodes per tree, or ``"auto"`` (default: the best prefix of up to
            ``max_budget`` nodes for this machine's calibrated step cost).
        max_depth: deepest draft node. max_match: longest context suffix matched.
        seed_prefill: seed recycler rows from the prompt's prefill top-k (None: the default
            :data:`~tokenloom.spec.recycling.drafter.SEED_FROM_PREFILL`, off).
        persist: keep the default recycler and cache across processes (loaded when created,
            saved after the request, throttled; :mod:`tokenloom.spec.persist`). None
            (default): on unless ``TOKENLOOM_PERSIST=0``. Ignored for a given recycler / cache.
        cache_output: add this request's output to the cross-request cache when it ends
            (default True; False: draft from the cache without growing it, e.g. when timing the
            same prompt repeatedly).

    Raises:
        TypeError: ``recycler`` / ``cache`` of the wrong type.
        ValueError: the recycler or the cache does not fit the model's vocabulary (fewer rows,
            or an id past it); a bad size.
    """
    vocab = logits_width(model)
    if recycler is not None and not isinstance(recycler, TokenRecycler):
        raise TypeError(f"recycler: expected a tokenloom.TokenRecycler, got {type(recycler).__name__}")
    keep = resolve_persist(persist)
    rec = recycler if recycler is not None else default_recycler(vocab, model=model, persist=keep)
    rec.check_vocab(vocab)
    store = _cache_arg(cache, vocab, model, keep)
    return _build(
        "merged", model, cfg, rec, store, budget, _persisted(model, keep, rec, store),
        max_budget=max_budget, max_depth=max_depth, max_match=max_match,
        seed_prefill=resolve_seed_prefill(seed_prefill),
        cache_output=_flag(cache_output, "cache_output"),
    )


def make_suffix_drafter(
    model: Any,
    cfg: Any,
    next_seed: Callable[[], int],
    *,
    cache: Any = None,
    budget: Union[int, str] = "auto",
    max_budget: int = DEFAULT_MAX_BUDGET,
    max_depth: int = DEFAULT_TREE_DEPTH,
    max_match: int = DEFAULT_MAX_MATCH,
    persist: Optional[bool] = None,
    cache_output: bool = True,
) -> MergedDrafter:
    """The drafter of ``generate(method="suffix")``: suffix matches alone (this request's
    tokens and the cross-request cache), keywords as :func:`make_merged_drafter`."""
    vocab = logits_width(model)
    keep = resolve_persist(persist)
    store = _cache_arg(cache, vocab, model, keep)
    return _build(
        "suffix", model, cfg, None, store, budget, _persisted(model, keep, None, store),
        max_budget=max_budget, max_depth=max_depth, max_match=max_match,
        cache_output=_flag(cache_output, "cache_output"),
    )
