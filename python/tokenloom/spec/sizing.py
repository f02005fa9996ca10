"""Hardware-aware tree sizing.

Two ingredients, both method-agnostic:

* :class:`StepCost` — seconds of one verify step against the number of tree tokens T, measured
  once per (model config, dtype, device, machine, torch threads, linear kernel) by
  :func:`calibrate_step_cost` (timed tree forwards on a dummy cache, with the top-k/argmax the
  step also pays; medians of interleaved repeats), cached in the process and on disk
  (``$TOKENLOOM_CACHE_DIR`` or ``~/.cache/tokenloom``; set ``TOKENLOOM_NO_DISK_CACHE=1`` to skip
  the disk) under the rules of :mod:`tokenloom.spec.calibration` (load, probe, another
  machine). Linear interpolation between measured sizes.
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

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom.spec.calibration import (
    KERNELS,
    Timer,
    calibration_key,
    disk_enabled,
    kernel_of,
    load_record,
    medians_and_verdict,
    probe_disagrees,
    probe_one_token,
    read_loads,
    save_record,
    time_steps,
    warn_once,
)

__all__ = [
    "AcceptanceStats",
    "StatsMemory",
    "StepCost",
    "calibrate_step_cost",
    "calibration_key",
    "choose_template",
    "clear_step_cost_cache",
    "covers",
    "monotone",
    "order_by_probability",
]

DEFAULT_TOKENS = (1, 2, 5, 9, 17, 33, 49, 81)

# Prior rate that the rank-r candidate of an accepted node is the next token.
RANK_PRIOR = np.array([0.45, 0.12, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01])


@dataclass(frozen=True)
class StepCost:
    """Seconds per verify step for ``tokens[i]`` tree tokens (root included); interpolated.

    ``kernel`` ("packed" / "unpacked"), ``past_len`` (cached tokens under the timed steps) and
    ``load`` (:func:`tokenloom.spec.calibration.load_verdict` of the measurement) say how it was
    measured; they do not take part in comparisons."""

    tokens: Tuple[int, ...]
    seconds: Tuple[float, ...]
    key: str = ""
    kernel: str = field(default="unpacked", compare=False)
    past_len: int = field(default=128, compare=False)
    load: Dict[str, Any] = field(default_factory=dict, compare=False)

    def __call__(self, t: float) -> float:
        return float(np.interp(t, self.tokens, self.seconds))

    def to_json(self) -> Dict[str, Any]:
        return {"tokens": list(self.tokens), "seconds": list(self.seconds), "key": self.key, "kernel": self.kernel,
                "past_len": self.past_len}

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
        kernel, past = data.get("kernel", "unpacked"), data.get("past_len", 128)
        if kernel not in KERNELS or isinstance(past, bool) or not isinstance(past, int) or past < 1:
            raise ValueError(f"step cost: expected a kernel of {KERNELS} and past_len >= 1, got {kernel!r}, {past!r}")
        raw_load = data.get("load")
        load: Dict[str, Any] = raw_load if isinstance(raw_load, dict) else {}
        return cls(tuple(tokens), tuple(float(x) for x in seconds), key, kernel, past, load)


_COSTS: Dict[str, StepCost] = {}
#: The step-cost curve's name and format version in :mod:`tokenloom.spec.persist`'s state folder
#: (one on-disk format for every state: checksummed, atomic writes with unique temporary names).
#: Version 2: the payload names the kernel, the machine and the load it was measured under.
STEP_COST_STATE, STEP_COST_VERSION = "stepcost", 2
_COSTS_LOCK = threading.Lock()


def covers(cost: StepCost, tokens: Sequence[int]) -> bool:
    """Whether ``cost`` was measured at every tree size of ``tokens``."""
    return set(int(t) for t in tokens) <= set(cost.tokens)


def clear_step_cost_cache() -> None:
    """Forget the in-process calibrations (the disk cache is kept)."""
    with _COSTS_LOCK:
        _COSTS.clear()


def calibrate_step_cost(
    model: Any,
    tokens: Sequence[int] = DEFAULT_TOKENS,
    *,
    past_len: int = 128,
    repeats: int = 3,
    k: int = 8,
    disk: Optional[bool] = None,
    force: bool = False,
    timer: Optional[Timer] = None,
    loadavg: Optional[Callable[[], float]] = None,
    progress: Optional[Callable[[], None]] = None,
    rows: int = 1,
) -> StepCost:
    """Time one tree step (forward + argmax + top-k) for each tree size in ``tokens``, with the
    linear kernel in use (inside ``packed_linears``: the packed one; the key says which).

    ``rows > 1``: the curve of a batched step, ``rows`` rows each with a tree of ``tokens[i]``
    nodes (one forward of ``rows x tokens[i]`` tokens; the batch budget of
    :mod:`tokenloom.spec.batchbudget`), measured, cached and checked by the same rules under
    its own key (:func:`calibration_key` + the row count).

    Measured by :func:`tokenloom.spec.calibration.time_steps` (a warm-up round, then
    ``repeats`` rounds over the sizes); the median per size is kept and the curve made
    non-decreasing in T (:func:`monotone`). The result is cached per :func:`calibration_key`
    in the process and, unless ``disk`` is False or ``TOKENLOOM_NO_DISK_CACHE=1``, on disk as
    the persisted state ``stepcost`` of :mod:`tokenloom.spec.persist`, following the rules of
    :mod:`tokenloom.spec.calibration`: not saved when measured under heavy load (one warning);
    a saved curve is checked with a one-token probe and measured again when the probe disagrees,
    when it comes from another machine or is not a valid curve (one warning each).

    A cached or saved curve is reused only when it was measured at every size of ``tokens``
    (:func:`covers`): a curve timed at other sizes (``tokenloom calibrate --tokens 1,17``) would
    be interpolated between far-apart sizes and held flat past its last one, so a budget priced
    from it would think a 33-token tree costs what a 17-token tree costs. It is measured again.

    Args:
        timer, loadavg: injected clock and load average (tests); default: the real ones.
        progress: called after every timed step (a progress bar).
    """
    key = calibration_key(model) if rows == 1 else f"{calibration_key(model)}-rows{int(rows)}"
    with _COSTS_LOCK:
        if not force and key in _COSTS and covers(_COSTS[key], tokens):
            return _COSTS[key]
    disk = disk_enabled(disk)
    kernel = kernel_of(model)
    if disk and not force:
        saved = load_record(key, STEP_COST_STATE, STEP_COST_VERSION, StepCost.from_json)
        if saved is not None and covers(saved, tokens):
            probe = probe_one_token(model, kernel, past_len=saved.past_len, timer=timer, rows=rows)
            if not probe_disagrees(saved(1), probe):
                with _COSTS_LOCK:
                    _COSTS[key] = saved
                return saved
            warn_once(key, "stepcost-probe", f"tokenloom: a one-token step now takes {probe * 1e3:.2f} ms, the saved step-cost "
                      f"curve says {saved(1) * 1e3:.2f} ms; measuring the curve again")
    load1, own = read_loads(loadavg)
    times = time_steps(model, tokens, (kernel,), repeats=repeats, past_len=past_len, k=k, timer=timer, progress=progress,
                       rows=rows)
    medians, verdict = medians_and_verdict(times, load1, own)
    sizes = sorted(medians[kernel])
    cost = StepCost(tuple(sizes), tuple(monotone([medians[kernel][t] for t in sizes])), key, kernel, past_len, verdict)
    with _COSTS_LOCK:
        _COSTS[key] = cost
    if disk:
        save_record(key, STEP_COST_STATE, STEP_COST_VERSION, cost.to_json(), verdict)  # heavy load: one warning, not saved
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
