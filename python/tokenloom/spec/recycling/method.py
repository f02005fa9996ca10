"""``generate(method="recycling")``: the factory that builds Token Recycling's drafter for one
request (the recycler, the template or ``tree="auto"`` with this machine's step cost)."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Union

from tokenloom.runtime.model import logits_width
from tokenloom.spec.recycling.drafter import RESIZE_EVERY, RecyclingDrafter, resolve_seed_prefill
from tokenloom.spec.persist import resolve_persist
from tokenloom.spec.recycling.recycler import TokenRecycler, default_recycler, recycler_changed
from tokenloom.spec.sizing import StatsMemory, calibrate_step_cost
from tokenloom.spec.templates import TemplateSpec

__all__ = ["SIZING_MEMORY", "make_recycling_drafter"]

#: What ``tree="auto"`` learned about acceptance, per recycler, handed from one request to the
#: next (each request's drafter owns a copy; see :class:`~tokenloom.spec.sizing.StatsMemory`).
SIZING_MEMORY = StatsMemory()


def make_recycling_drafter(
    model: Any,
    cfg: Any,
    next_seed: Callable[[], int],
    *,
    recycler: Optional[TokenRecycler] = None,
    tree: Union[str, TemplateSpec] = "auto",
    seed_prefill: Optional[bool] = None,
    resize_every: int = RESIZE_EVERY,
    persist: Optional[bool] = None,
) -> RecyclingDrafter:
    """The drafter of ``generate(method="recycling")``.

    Args (keyword, through ``tokenloom.generate``):
        recycler: the :class:`TokenRecycler` to draft from and update (default: the
            process-wide one for the model's vocabulary, so the hot start is kept across calls).
        tree: ``"auto"`` (hardware-aware size, default), a template name (``"2.2.2"``,
            ``"2.2.2-N"``) or a list of rank paths.
        seed_prefill: seed rows from the prompt's prefill top-k (default :data:`SEED_FROM_PREFILL`).
        resize_every: steps between template decisions in auto mode. In auto mode the
            drafter starts from the acceptance statistics the last request on the same
            recycler published (:data:`SIZING_MEMORY`).
        persist: keep the default recycler's matrix across processes (load it when the
            per-model default recycler is created, save it after the request, throttled; see
            :mod:`tokenloom.spec.persist`). None (default): on unless ``TOKENLOOM_PERSIST=0``.
            Ignored when ``recycler`` is given.

    Stats (``GenerateStats.extra``): ``depth_acceptance`` (estimated P(match | reached depth d)),
    ``calibration`` (auto mode: tree tokens -> seconds), ``setup_seconds`` (auto mode: time
    spent getting the calibration, reported apart by ``generate``), ``seeded``, plus the loop's
    ``tree_sizes`` / ``accepted_hist``.

    Raises:
        TypeError: ``recycler`` is not a TokenRecycler.
        ValueError: the recycler does not fit the model's vocabulary (fewer rows, or a candidate
            past it); a bad ``tree``.
    """
    vocab = logits_width(model)
    if recycler is not None and not isinstance(recycler, TokenRecycler):
        raise TypeError(f"recycler: expected a tokenloom.TokenRecycler, got {type(recycler).__name__}")
    keep = resolve_persist(persist)
    rec = recycler if recycler is not None else default_recycler(vocab, model=model, persist=keep)
    finish = None if recycler is not None or not keep else (lambda: recycler_changed(rec, model, True))
    rec.check_vocab(vocab)
    auto = isinstance(tree, str) and tree == "auto"
    start = time.perf_counter()
    cost = calibrate_step_cost(model, k=rec.k) if auto else None
    setup = time.perf_counter() - start  # measured once per model and machine, then cached
    seed = resolve_seed_prefill(seed_prefill)
    if not auto:
        return RecyclingDrafter(rec, tree=tree, seed_prefill=seed, resize_every=resize_every, finish=finish)
    return RecyclingDrafter(
        rec,
        tree=tree,
        seed_prefill=seed,
        cost=cost,
        resize_every=resize_every,
        acceptance=SIZING_MEMORY.load(rec, rec.k),
        remember=lambda stats: SIZING_MEMORY.save(rec, stats),
        finish=finish,
        setup_seconds=setup,
    )
