"""Hardware-aware tree sizing.

Two ingredients, both method-agnostic:

* :class:`StepCost` — seconds of one verify step against the number of tree tokens T, measured
  once per (model config, dtype, device, torch threads) by :func:`calibrate_step_cost` (a few
  timed tree forwards on a dummy cache, with the top-k/argmax the step also pays), cached in the
  process and on disk (``$TOKENLOOM_CACHE_DIR`` or ``~/.cache/tokenloom``; set
  ``TOKENLOOM_NO_DISK_CACHE=1`` to skip the disk). Linear interpolation between measured sizes.
* :class:`AcceptanceStats` — exponentially decayed counts, per depth ``d`` of an accepted node
  and per rank ``r``, of "the target's next token is the rank-r candidate of that node's row".
  Under greedy verification a template node with rank path ``(r1, ..., rm)`` is accepted exactly
  when every step of its path matches, so its acceptance probability is estimated as
  ``prod_j c[j-1, r_j]`` and the expected tokens per step of a template is
  ``1 + sum over its nodes`` (accepted nodes + the bonus token). The counts are taken from the
  whole row of every accepted node (not only the ranks the current template holds), so the
  estimates for nodes outside the current template stay honest; depths never reached borrow the
  depth-pooled rate (shrinkage).

:func:`choose_template` combines them: among the first N paths of the candidate set ordered by
estimated probability (every prefix is subtree-closed) for N in the nested sizes, it picks the N
maximising ``E[tokens | N] / cost(N + 1)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom.spec.persist import PersistWarning, load_state, save_state
from tokenloom.runtime.compat import cache_arg
from tokenloom.device import device_name, synchronize
from tokenloom.spec.topk import top_k_ids

__all__ = [
    "AcceptanceStats",
    "StatsMemory",
    "StepCost",
    "calibrate_step_cost",
    "choose_template",
    "clear_step_cost_cache",
    "monotone",
    "order_by_probability",
]

DEFAULT_TOKENS = (1, 2, 5, 9, 17, 33, 49, 81)

# Prior rate that the rank-r candidate of an accepted node is the next token.
RANK_PRIOR = np.array([0.45, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01])


@dataclass(frozen=True)
class StepCost:
    """Seconds per verify step for ``tokens[i]`` tree tokens (root included); interpolated."""

    tokens: Tuple[int, ...]
    seconds: Tuple[float, ...]
    key: str = ""

    def __call__(self, t: float) -> float:
        return float(np.interp(t, self.tokens, self.seconds))

    def to_json(self) -> Dict[str, Any]:
        return {"tokens": list(self.tokens), "seconds": list(self.seconds), "key": self.key}

    @classmethod
    def from_json(cls, data: Any, key: str) -> "StepCost":
        """The curve :meth:`to_json` wrote for ``key``, checked as a measured curve is: tree
        sizes increasing ints >= 1, as many finite, positive, non-decreasing seconds.

        Raises:
            ValueError: anything else (a file from elsewhere, edited or corrupted).
        """
        if not isinstance(data, dict) or data.get("key", key) != key:
            raise ValueError(f"step cost: expected the calibration of {key!r}")
        tokens, seconds = data.get("tokens"), data.get("seconds")
        if not isinstance(tokens, list) or not isinstance(seconds, list) or not tokens or len(tokens) != len(seconds):
            raise ValueError("step cost: expected equally long, non-empty 'tokens' and 'seconds' lists")
        if any(isinstance(t, bool) or not isinstance(t, int) for t in tokens) or tokens[0] < 1 or any(
            b <= a for a, b in zip(tokens, tokens[1:])
        ):
            raise ValueError(f"step cost: expected increasing int tree sizes >= 1, got {tokens!r}")
        if any(isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < float("inf") for x in seconds) or any(
            b < a for a, b in zip(seconds, seconds[1:])
        ):
            raise ValueError(f"step cost: expected finite, positive, non-decreasing seconds, got {seconds!r}")
        return cls(tuple(tokens), tuple(float(x) for x in seconds), key)


_COSTS: Dict[str, StepCost] = {}
#: The step-cost curve's name and format version in :mod:`tokenloom.spec.persist`'s state folder
#: (one on-disk format for every state: checksummed, atomic writes with unique temporary names).
STEP_COST_STATE, STEP_COST_VERSION = "stepcost", 1
_COSTS_LOCK = threading.Lock()


def clear_step_cost_cache() -> None:
    """Forget the in-process calibrations (the disk cache is kept)."""
    with _COSTS_LOCK:
        _COSTS.clear()


def calibration_key(model: Any) -> str:
    """Hash of the model config, dtype, device, torch thread count and linear packing."""
    import torch

    param = next(model.parameters())
    cfg = model.config.to_json_string(use_diff=False) if hasattr(model, "config") else type(model).__name__
    dev_name = device_name(param.device)
    from tokenloom.runtime.cpupack import is_packed

    packed = "|packed" if is_packed(model) else ""
    raw = f"{cfg}|{param.dtype}|{dev_name}|threads={torch.get_num_threads()}|torch={torch.__version__}{packed}"
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


def _chain_parents(t: int) -> np.ndarray:
    return np.arange(-1, t - 1, dtype=np.int64)


def calibrate_step_cost(
    model: Any,
    tokens: Sequence[int] = DEFAULT_TOKENS,
    *,
    past_len: int = 128,
    repeats: int = 3,
    k: int = 8,
    disk: Optional[bool] = None,
    force: bool = False,
) -> StepCost:
    """Time one tree step (forward + argmax + top-k) for each tree size in ``tokens``.

    Sizes are measured round-robin (``repeats`` rounds after one warm-up round); the fastest
    time per size is kept (the least disturbed by other processes on a shared machine) and the
    curve is made non-decreasing in T (:func:`monotone`). The result is cached per
    :func:`calibration_key` in the process and, unless ``disk`` is False or
    ``TOKENLOOM_NO_DISK_CACHE=1``, on disk as the persisted state ``stepcost`` of
    :mod:`tokenloom.spec.persist` (checksummed; a corrupted or foreign file is measured again with one
    warning).
    """
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import crop_cache
    from tokenloom.runtime.treeattn import tree_forward

    key = calibration_key(model)
    with _COSTS_LOCK:
        if not force and key in _COSTS:
            return _COSTS[key]
    if disk is None:
        disk = os.environ.get("TOKENLOOM_NO_DISK_CACHE", "") not in ("1", "true", "yes")
    if disk and not force:
        data = load_state(key, STEP_COST_STATE, STEP_COST_VERSION)  # None: missing or unusable (warned)
        if data is not None:
            try:
                cost = StepCost.from_json(json.loads(data), key)
                with _COSTS_LOCK:
                    _COSTS[key] = cost
                return cost
            except (ValueError, RecursionError) as e:
                warnings.warn(f"tokenloom: the saved step-cost curve is not a valid curve ({e}); measuring again", PersistWarning, stacklevel=2)
    param = next(model.parameters())
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (1, past_len), generator=gen).to(param.device)
    sizes = sorted(set(int(t) for t in tokens))
    times: Dict[int, List[float]] = {t: [] for t in sizes}
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=prefix, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
        for rnd in range(repeats + 1):
            for t in sizes:
                toks = torch.randint(0, vocab, (t,), generator=gen)
                synchronize(param.device)
                start = time.perf_counter()
                logits = tree_forward(model, cache, toks, _chain_parents(t), past_len=past_len)
                logits.argmax(-1)
                top_k_ids(logits, min(k, vocab))  # what a recycling drafter does after each step
                synchronize(param.device)
                elapsed = time.perf_counter() - start
                crop_cache(cache, past_len)
                if rnd > 0:
                    times[t].append(elapsed)
    cost = StepCost(tuple(sizes), tuple(monotone([min(times[t]) for t in sizes])), key)
    with _COSTS_LOCK:
        _COSTS[key] = cost
    if disk:
        save_state(key, STEP_COST_STATE, STEP_COST_VERSION, json.dumps(cost.to_json()).encode())  # a failure warns once
    return cost


def monotone(values: Sequence[float]) -> List[float]:
    """Least-squares non-decreasing fit (pool-adjacent-violators) of ``values``."""
    blocks: List[List[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: List[float] = []
    for s, c in blocks:
        out.extend([s / c] * int(c))
    return out


class AcceptanceStats:
    """Decayed counts ``counts[d, r]`` of "next token = rank-r candidate of the accepted node at
    depth d" out of ``reached[d]`` observations.

    Args:
        k: candidates per row.
        max_depth: deepest parent depth tracked (deeper observations pool into the last).
        decay: multiplier applied to all counts before each observation (1.0 = no forgetting).
        prior_weight: pseudo-observations of the rank prior in the depth-pooled rates, and of
            the pooled rates in every depth's rates.
    """

    def __init__(self, k: int = 8, max_depth: int = 16, decay: float = 0.995, prior_weight: float = 4.0):
        self.k = k
        self.max_depth = max_depth
        self.decay = decay
        self.prior_weight = prior_weight
        self.counts = np.zeros((max_depth + 1, k))
        self.reached = np.zeros(max_depth + 1)
        self.observations = 0

    def copy(self) -> "AcceptanceStats":
        """An independent copy (same counts, same parameters)."""
        out = AcceptanceStats(self.k, self.max_depth, self.decay, self.prior_weight)
        out.counts = self.counts.copy()
        out.reached = self.reached.copy()
        out.observations = self.observations
        return out

    def observe(self, ranks: Sequence[int]) -> None:
        """One step: ``ranks[d]`` is the rank of the token that followed the accepted node at
        depth ``d`` in that node's row (-1 when not in the row)."""
        self.counts *= self.decay
        self.reached *= self.decay
        for d, r in enumerate(ranks):
            d = min(d, self.max_depth)
            self.reached[d] += 1.0
            if 0 <= r < self.k:
                self.counts[d, int(r)] += 1.0
        self.observations += 1

    def rates(self) -> np.ndarray:
        """float [max_depth + 1, k]: estimated ``P(next = rank r | accepted at depth d)``."""
        prior = np.zeros(self.k)
        m = min(self.k, RANK_PRIOR.size)
        prior[:m] = RANK_PRIOR[:m]
        w = self.prior_weight
        pooled = (self.counts.sum(0) + w * prior) / (self.reached.sum() + w)
        return (self.counts + w * pooled[None, :]) / (self.reached[:, None] + w)

    def path_probabilities(self, paths: Sequence[Sequence[int]]) -> np.ndarray:
        """Estimated acceptance probability of every rank path."""
        c = self.rates()
        out = np.empty(len(paths))
        for i, p in enumerate(paths):
            prob = 1.0
            for d, r in enumerate(p):
                prob *= c[min(d, self.max_depth), r] if r < self.k else 0.0
            out[i] = prob
        return out

    def depth_acceptance(self) -> List[float]:
        """Observed P(some candidate of the row matches | accepted at depth d), per depth."""
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = self.counts.sum(1) / self.reached
        return [float(a) for a in acc[self.reached > 0]]


class StatsMemory:
    """Acceptance statistics remembered from one request to the next, per shared object (e.g. a
    :class:`~tokenloom.spec.recycling.recycler.TokenRecycler`, held weakly).

    Each request's drafter works on its own copy (:meth:`load`) and publishes a copy back from
    time to time (:meth:`save`; the last writer wins), so concurrent requests never share a live
    object. Locked: safe from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()

    def load(self, key: Any, k: int, fresh: Optional[Callable[[], Any]] = None) -> Any:
        """A copy of the statistics remembered for ``key`` (fresh ones for another ``k``:
        ``fresh()``, default ``AcceptanceStats(k=k)``). Any object with ``k`` and ``copy()``
        can be remembered."""
        with self._lock:
            stats = self._store.get(key)
            if stats is not None and stats.k == k:
                return stats.copy()
        return fresh() if fresh is not None else AcceptanceStats(k=k)

    def save(self, key: Any, stats: Any) -> None:
        """Remember a copy of ``stats`` for ``key``."""
        snapshot = stats.copy()
        with self._lock:
            self._store[key] = snapshot

    def clear(self) -> None:
        with self._lock:
            self._store.clear()


def order_by_probability(paths: Sequence[Sequence[int]], probs: np.ndarray) -> List[List[int]]:
    """``paths`` sorted by decreasing probability, ties by (depth, path): every prefix of the
    result is subtree-closed when a child's probability never exceeds its parent's."""
    order = sorted(range(len(paths)), key=lambda i: (-probs[i], len(paths[i]), list(paths[i])))
    return [list(paths[i]) for i in order]


def choose_template(
    candidates: Sequence[Sequence[int]],
    stats: AcceptanceStats,
    cost: StepCost,
    sizes: Sequence[int],
) -> Tuple[List[List[int]], Dict[str, float]]:
    """Pick the first-N prefix (N in ``sizes``) of ``candidates`` ordered by estimated
    acceptance probability that maximises expected tokens per second. ``N = 0`` (no draft: a
    plain step) is allowed when listed in ``sizes``.

    Returns:
        (paths, info): the chosen paths and ``{"n", "expected_tokens", "step_seconds",
        "tokens_per_second"}``.
    """
    probs = stats.path_probabilities(candidates)
    ordered = order_by_probability(candidates, probs)
    sorted_probs = np.sort(probs)[::-1]
    cum = np.concatenate([[0.0], np.cumsum(sorted_probs)])
    best: Optional[Tuple[float, int]] = None
    for n in sizes:
        n = min(int(n), len(ordered))
        if n < 0:
            continue
        e = 1.0 + cum[n]
        rate = e / cost(n + 1)
        if best is None or rate > best[0]:
            best = (rate, n)
    if best is None:
        raise ValueError("choose_template: no candidate size")
    rate, n = best
    info = {
        "n": float(n),
        "expected_tokens": float(1.0 + cum[n]),
        "step_seconds": cost(n + 1),
        "tokens_per_second": float(rate),
    }
    return ordered[:n], info
