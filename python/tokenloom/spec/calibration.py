"""Measured speed choices, and the rules that keep a measurement honest (the one home of both).

Every choice that decides speed is measured on the machine itself, never assumed, per
:func:`calibration_key` (the model's config, dtype, device, torch threads and build, CPU model
and ISA flags, and the linear kernel in use):

* **the linear kernel** (``generate(..., pack="auto")``): :func:`choose_pack` times a one-token
  step and a :data:`PACK_TREE_TOKENS`-token tree step with every kernel the model can run
  (:func:`tokenloom.runtime.cpupack.available_kernels`: as loaded, oneDNN pre-packed, tokenloom's
  tiles), interleaved, and runs the fastest (:func:`decide_kernel` has the rule). Persisted as
  the state ``packchoice``.
* **the step-cost curve** of ``tree="auto"`` / ``budget="auto"``:
  :func:`tokenloom.spec.sizing.calibrate_step_cost`, measured inside the chosen kernel (its key
  says which), persisted as the state ``stepcost``.

Both go through the same rules:

* :func:`time_steps`: one untimed warm-up round, then ``repeats`` rounds; inside a round every
  tree size and every kernel once, the kernels' order rotating from round to round, so a burst
  of other work hits every option alike. Medians are kept.
* :func:`load_verdict`: the 1-minute load average per core (``os.getloadavg``) taken before
  measuring, and the spread of the repeats, are recorded with the result. A result taken under
  heavy load (:data:`HEAVY_LOAD_PER_CORE`, :data:`NOISY_SPREAD`) is used for this process but
  never saved, with ONE :class:`CalibrationWarning` saying so.
* :func:`probe_disagrees`: a saved result is checked at start with a cheap one-token probe
  (median of :data:`PROBE_REPEATS`); when the probe and the saved one-token cost differ by more
  than :data:`PROBE_FACTOR` either way, the machine has changed (or the saved result was
  taken in a bad moment): it is measured again, with one warning.
* A saved result that is corrupted (:mod:`tokenloom.spec.persist` checks the checksum), not a
  valid record, or taken on another machine (its payload names another CPU, ISA flags, torch
  build or thread count) is measured again with one
  :class:`~tokenloom.spec.persist.PersistWarning`; nothing raises. Heavy load and a
  disagreeing probe give a :class:`CalibrationWarning`.

Tests inject ``timer`` (seconds of one step) and ``loadavg`` instead of reading the clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar, Union

from tokenloom.device import device_name, synchronize
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kernels import ONE_ROW_KERNELS, PACK_KERNELS, TREE_KERNELS, kernel_parts
from tokenloom.runtime.machine import machine_fingerprint, machine_info, machine_load, own_load
from tokenloom.spec.persist import PersistWarning, cache_dir, load_state, save_state
from tokenloom.sampling.topk import argmax_ids, top_k_ids

__all__ = [
    "CalibrationWarning",
    "HEAVY_LOAD_PER_CORE",
    "KERNELS",
    "NOISY_SPREAD",
    "PACK_STATE",
    "PACK_TREE_MARGIN",
    "PACK_TREE_TOKENS",
    "PACK_VERSION",
    "PROBE_FACTOR",
    "PROBE_REPEATS",
    "PackChoice",
    "Timer",
    "auto_pack",
    "calibration_key",
    "check_machine",
    "choose_pack",
    "clear_pack_choices",
    "decide_kernel",
    "with_tree_kernels",
    "decide_pack",
    "disk_enabled",
    "load_record",
    "kernel_of",
    "load_verdict",
    "medians_and_verdict",
    "probe_disagrees",
    "probe_one_token",
    "read_load",
    "read_loads",
    "save_record",
    "spread",
    "time_steps",
    "wall_timer",
    "warn_once",
]

#: The linear kernels a CPU step can run with: the model as loaded, oneDNN pre-packed, and
#: tokenloom's tiles (:data:`tokenloom.runtime.kernels.PACK_KERNELS`).
KERNELS = tuple(PACK_KERNELS)
# TREE_KERNELS / ONE_ROW_KERNELS (imported): the row-split kernels and the base kernels they run
# for 2 rows or more / for one row. Their choice costs no extra timing: their one-token step is
# their one-row base's and their tree step their tree base's.
#: The tree step, in tokens (root included), that the kernel choice is checked on: the size of
#: a typical recycling / merged tree.
PACK_TREE_TOKENS = 17
#: A kernel may cost up to this factor of the unpacked one on the tree step (it must win the
#: one-token step).
PACK_TREE_MARGIN = 1.05
#: Load average per core above which a measurement is not saved: on average every core already
#: had another runnable thread before the measurement started.
HEAVY_LOAD_PER_CORE = 1.0
#: Median relative spread ((max - min) / median) of the repeats above which a measurement is
#: not saved: the repeats disagree by half their value, so the machine was disturbed.
NOISY_SPREAD = 0.5
#: A saved one-token cost is re-measured when a probe differs from it by more than this factor,
#: either way (medians of both): far above the repeat-to-repeat noise of an idle machine
#: (a few percent), far below what a change of machine, threads or load does (1.5-3x).
PROBE_FACTOR = 1.5
#: Timed one-token steps of the start probe (after one untimed).
PROBE_REPEATS = 3
#: The persisted state of the kernel choice in :mod:`tokenloom.spec.persist`.
#: Version 2: a choice among all :data:`KERNELS` (a version-1 file is measured again).
PACK_STATE, PACK_VERSION = "packchoice", 2

#: ``timer(kernel, tokens, run) -> seconds``: runs ``run()`` once and says how long one step of
#: ``tokens`` tree tokens with ``kernel`` took (:func:`wall_timer` by default; tests pass fakes).
Timer = Callable[[str, int, Callable[[], Any]], float]

T = TypeVar("T")


class CalibrationWarning(UserWarning):
    """A measurement that was not saved (heavy load), or a saved one measured again because a
    probe disagrees. (A saved file that is unusable -- corrupted, not a valid record, from another
    machine -- gives a :class:`~tokenloom.spec.persist.PersistWarning`, as every state file does.)"""


_WARNED: Set[Tuple[str, str]] = set()
_WARNED_LOCK = threading.Lock()


def warn_once(key: str, what: str, message: str, category: type = CalibrationWarning) -> None:
    """One warning (default :class:`CalibrationWarning`) per ``(key, what)``, cache folder and
    process."""
    once = (f"{cache_dir()}|{key}", what)
    with _WARNED_LOCK:
        if once in _WARNED:
            return
        _WARNED.add(once)
    warnings.warn(message, category, stacklevel=3)


def disk_enabled(disk: Optional[bool] = None) -> bool:
    """``disk``, or (None) unless ``TOKENLOOM_NO_DISK_CACHE`` is 1 / true / yes."""
    if disk is not None:
        return bool(disk)
    return os.environ.get("TOKENLOOM_NO_DISK_CACHE", "") not in ("1", "true", "yes")


def kernel_of(model: Any) -> str:
    """The kernel of the :func:`~tokenloom.runtime.cpupack.packed_linears` block ``model`` is
    in (``"packed"``, ``"tiles"``), else ``"unpacked"``."""
    from tokenloom.runtime.cpupack import active_kernel

    return active_kernel(model)


def calibration_key(model: Any, kernel: Optional[str] = None) -> str:
    """Hash of what a measured step cost depends on: the model config (its shapes; the weights'
    values do not change a step's time), dtype, device, the machine
    (:func:`~tokenloom.runtime.machine.machine_fingerprint`: CPU model, ISA flags, torch build,
    torch threads), the linear ``kernel`` (default: the one in use, :func:`kernel_of`; for
    a kernel with a tiles part its thread count too), the step forward
    (:func:`tokenloom.runtime.leanforward.step_forward`: a curve timed through the module
    forward is not the lean forward's), whether :func:`tokenloom.runtime.gqa.exact_rows` is on
    (each tree node's attention computed alone: a 17-token step costs ~1.3x the batched one, so
    a curve timed without it would size trees too large under it, and one timed under it too
    small without it) and :data:`tokenloom.runtime.cpupack.KERNELS_VERSION` (a choice between
    kernels made before one of them changed is made again)."""
    from tokenloom.runtime.gqa import exact_rows_active
    from tokenloom.runtime.leanforward import step_forward

    param = next(model.parameters())
    cfg = model.config.to_json_string(use_diff=False) if hasattr(model, "config") else type(model).__name__
    from tokenloom.runtime.cpupack import KERNELS_VERSION

    kernel = kernel_of(model) if kernel is None else kernel
    packed = "" if kernel == "unpacked" else f"|{kernel}"
    if "tiles" in kernel_parts(kernel):
        from tokenloom.runtime.cpupack import tiles_threads

        packed += f":{tiles_threads()}"
    exact = "|exact-rows" if exact_rows_active() else ""
    raw = (f"{cfg}|{param.dtype}|{device_name(param.device)}|{machine_fingerprint()}{packed}|{step_forward(model)}"
           f"{exact}|kernels-{KERNELS_VERSION}")
    return hashlib.sha1(raw.encode()).hexdigest()[:20]


# -- measuring -------------------------------------------------------------------------------


def wall_timer(device: Any) -> Timer:
    """The real timer: wall-clock seconds of ``run()``, the device synchronised before and after."""

    def timer(kernel: str, tokens: int, run: Callable[[], Any]) -> float:
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        return time.perf_counter() - start

    return timer


@contextlib.contextmanager
def _kernel(model: Any, kernel: str) -> Iterator[None]:
    from tokenloom.runtime.cpupack import pack_value, packed_linears

    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    now = kernel_of(model)
    if now not in ("unpacked", kernel):
        raise ValueError(f"kernel {kernel!r}: the model is inside a packed_linears block of {now!r}")
    with packed_linears(model, pack_value(kernel)):
        yield


def _chain_parents(t: int) -> Any:
    import numpy as np

    return np.arange(-1, t - 1, dtype=np.int64)


def time_steps(
    model: Any,
    sizes: Sequence[int],
    kernels: Sequence[str] = ("unpacked",),
    *,
    repeats: int = 3,
    past_len: int = 128,
    k: int = 8,
    timer: Optional[Timer] = None,
    progress: Optional[Callable[[], None]] = None,
    rows: int = 1,
) -> Dict[str, Dict[int, List[float]]]:
    """Seconds of one tree step (forward + argmax + top-k, what a recycling step pays) per
    kernel and tree size, on a dummy cache of ``past_len`` tokens.

    ``rows > 1`` times the batched step instead: ``rows`` rows of ``past_len`` cached tokens,
    each with a tree of the size (one :func:`~tokenloom.runtime.treeattn.batch_tree_forward`
    of ``rows x size`` tokens), as :func:`tokenloom.spec.loop.speculative_decode_batch` pays.

    One untimed warm-up round, then ``repeats`` timed rounds; each round runs every size, and
    for each size every kernel, the kernels' order rotating by one each round.

    Args:
        model: an HF causal LM. sizes: tree sizes (tokens, root included), each >= 1.
        kernels: names of :data:`KERNELS`. repeats: timed rounds (>= 1). past_len: cached tokens.
        k: top-k width. timer: see :data:`Timer` (default :func:`wall_timer`). rows: batch rows (>= 1).
        progress: called after every timed or untimed step (a progress bar's update).

    Returns:
        ``{kernel: {size: [seconds per timed round]}}``.

    Raises:
        ValueError: an unknown kernel, a size < 1, ``repeats`` < 1 or ``rows`` < 1.
    """
    import numpy as np
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import crop_cache
    from tokenloom.runtime.treeattn import batch_tree_forward, tree_forward

    kernels = list(kernels)
    for kern in kernels:
        if kern not in KERNELS:
            raise ValueError(f"kernel: expected one of {KERNELS}, got {kern!r}")
    sizes = sorted(set(int(t) for t in sizes))
    if not sizes or sizes[0] < 1 or repeats < 1 or isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"time_steps: expected tree sizes >= 1, repeats >= 1 and rows >= 1, got {sizes}, {repeats} and {rows!r}")
    param = next(model.parameters())
    timer = wall_timer(param.device) if timer is None else timer
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab, (rows, past_len), generator=gen).to(param.device)
    out: Dict[str, Dict[int, List[float]]] = {kern: {t: [] for t in sizes} for kern in kernels}
    with torch.inference_mode():
        cache = DynamicCache()
        model(input_ids=prefix, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
        for rnd in range(repeats + 1):
            shift = rnd % len(kernels)
            for t in sizes:
                for kern in kernels[shift:] + kernels[:shift]:
                    toks = torch.randint(0, vocab, (rows, t), generator=gen)

                    def run(toks: Any = toks, t: int = t) -> None:
                        if rows == 1:
                            logits = tree_forward(model, cache, toks[0], _chain_parents(t), past_len=past_len)
                        else:
                            chain, depth = _chain_parents(t), np.arange(t, dtype=np.int64)
                            logits = batch_tree_forward(
                                model, cache, list(toks.numpy()), [chain] * rows, [depth] * rows,
                                starts=[0] * rows, ends=[past_len] * rows,
                            ).reshape(rows * t, -1)
                        argmax_ids(logits)
                        top_k_ids(logits, min(k, vocab))  # what a recycling drafter does after each step

                    with _kernel(model, kern):
                        elapsed = float(timer(kern, t, run))
                    crop_cache(cache, past_len)
                    if rnd > 0:
                        out[kern][t].append(elapsed)
                    if progress is not None:
                        progress()
    return out


def probe_one_token(model: Any, kernel: Optional[str] = None, *, past_len: int = 128, timer: Optional[Timer] = None,
                    rows: int = 1) -> float:
    """Median seconds of :data:`PROBE_REPEATS` one-token steps (after one untimed) with
    ``kernel`` (default: the one in use), of ``rows`` rows."""
    kernel = kernel_of(model) if kernel is None else kernel
    times = time_steps(model, (1,), (kernel,), repeats=PROBE_REPEATS, past_len=past_len, timer=timer, rows=rows)
    return statistics.median(times[kernel][1])


def probe_disagrees(saved: float, probed: float, factor: float = PROBE_FACTOR) -> bool:
    """True when the probe's one-token seconds and the saved ones differ by more than
    ``factor`` either way (or either is not a positive number)."""
    if not (saved > 0 and probed > 0) or saved == float("inf") or probed == float("inf"):
        return True
    ratio = probed / saved
    return ratio > factor or ratio < 1.0 / factor


# -- load and spread ----------------------------------------------------------------------------


def read_load() -> float:
    """The 1-minute load average (NaN where the platform has none;
    :func:`tokenloom.runtime.machine.machine_load`)."""
    return float(machine_load()["load1"])


def spread(samples: Sequence[float]) -> float:
    """``(max - min) / median`` of the repeats (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    med = statistics.median(samples)
    return (max(samples) - min(samples)) / med if med > 0 else float("inf")


def load_verdict(load1: float, cores: int, spreads: Sequence[float], own: float = 0.0) -> Dict[str, Any]:
    """What is recorded about the conditions of a measurement, and whether it is too disturbed
    to save: ``{"load1", "own", "cores", "load_per_core", "spread", "heavy", "why"}``.
    ``load_per_core`` is the load of *other* processes, ``(load1 - own) / cores`` (``own``: this
    process's share, :func:`tokenloom.runtime.machine.own_load`); ``spread`` is the median of the
    per-series :func:`spread`. Heavy when the load per core exceeds :data:`HEAVY_LOAD_PER_CORE`
    or the spread exceeds :data:`NOISY_SPREAD` (NaN load: unknown, not heavy)."""
    cores = max(int(cores or 1), 1)
    per_core = max(load1 - max(own, 0.0), 0.0) / cores if load1 == load1 else load1
    sp = float(statistics.median(spreads)) if spreads else 0.0
    why = []
    if per_core > HEAVY_LOAD_PER_CORE:
        why.append(f"load average {load1:.2f} on {cores} cores, {own:.2f} of it this process")
    if sp > NOISY_SPREAD:
        why.append(f"the repeats spread by {sp:.0%} of their median")
    return {"load1": load1, "own": own, "cores": cores, "load_per_core": per_core, "spread": sp, "heavy": bool(why),
            "why": "; ".join(why)}


def medians_and_verdict(times: Dict[str, Dict[int, List[float]]], load1: float,
                        own: float = 0.0) -> Tuple[Dict[str, Dict[int, float]], Dict[str, Any]]:
    """``({kernel: {size: median seconds}}, load_verdict)`` of :func:`time_steps`' result."""
    medians = {kern: {t: float(statistics.median(v)) for t, v in per.items()} for kern, per in times.items()}
    spreads = [spread(v) for per in times.values() for v in per.values()]
    return medians, load_verdict(load1, os.cpu_count() or 1, spreads, own)


def read_loads(loadavg: Optional[Callable[[], float]] = None) -> Tuple[float, float]:
    """``(1-minute load average, this process's share)`` before a measurement; with an injected
    ``loadavg`` (tests) the share is 0, so the injected value is the others' load."""
    if loadavg is not None:
        return float(loadavg()), 0.0
    return read_load(), own_load()


# -- saved records ------------------------------------------------------------------------------

_MACHINE_FIELDS = ("cpu", "flags", "torch_build", "threads")


def check_machine(saved: Any, current: Optional[Dict[str, Any]] = None) -> None:
    """Raise ValueError unless the ``machine`` of a saved record is this one (CPU model, ISA
    flags, torch build, threads; ``current`` default :func:`machine_info`)."""
    now = machine_info() if current is None else current
    if not isinstance(saved, dict):
        raise ValueError("the record names no machine")
    diff = [f"{f} {saved.get(f)!r} (here {now.get(f)!r})" for f in _MACHINE_FIELDS if saved.get(f) != now.get(f)]
    if diff:
        raise ValueError("taken on another machine: " + ", ".join(diff))


def load_record(key: str, name: str, version: int, parse: Callable[[Any, str], T]) -> Optional[T]:
    """The saved record ``name`` of ``key``, parsed (``parse(json, key)``) and checked to come
    from this machine; None when there is none or it is unusable (corrupted: the persist layer's
    one warning; not a valid record or another machine: one
    :class:`~tokenloom.spec.persist.PersistWarning` per file)."""
    data = load_state(key, name, version)
    if data is None:
        return None
    what = "curve" if name == "stepcost" else "record"
    try:
        payload = json.loads(data)
        record = parse(payload, key)
    except (ValueError, RecursionError) as e:
        digest = hashlib.sha1(data).hexdigest()[:12]  # one warning per bad file, not per call
        warn_once(key, f"{name}-invalid-{digest}", f"tokenloom: the saved {name} state is not a valid {what} ({e}); measuring again",
                  PersistWarning)
        return None
    try:
        check_machine(payload.get("machine"))
    except ValueError as e:
        warn_once(key, name + "-machine", f"tokenloom: the saved {name} {what} was {e}; measuring again", PersistWarning)
        return None
    return record


def save_record(key: str, name: str, version: int, payload: Dict[str, Any], load: Dict[str, Any]) -> bool:
    """Save ``payload`` (with ``machine`` and ``load`` added) unless ``load`` says the machine
    was too busy (then one warning, and the result is used for this process only). Returns
    whether it was saved."""
    if load.get("heavy"):
        warn_once(key, name + "-heavy", f"tokenloom: the {name} measurement was taken under heavy load ({load.get('why')}); "
                  "it is used for this run but not saved (measured again next time)")
        return False
    save_state(key, name, version, json.dumps({**payload, "machine": machine_info(), "load": load}).encode())
    return True


# -- the kernel choice ------------------------------------------------------------------------


def decide_pack(medians: Dict[str, Dict[int, float]], tree_tokens: int = PACK_TREE_TOKENS,
                kernel: str = "packed") -> Tuple[bool, str]:
    """The rule for one kernel: use ``kernel`` (default oneDNN ``"packed"``) when its one-token
    step's median is below the unpacked one's (plain decoding and every step's floor) AND its
    ``tree_tokens``-token step is at most :data:`PACK_TREE_MARGIN` x the unpacked one (a tree
    step may not lose more than that). A tie keeps the model as loaded (no extra copy of the
    weights, HF's own numerics).

    Returns:
        (use it, reason): the reason gives both medians of the step that decided.
    """
    p1, u1 = medians[kernel][1], medians["unpacked"][1]
    pt, ut = medians[kernel][tree_tokens], medians["unpacked"][tree_tokens]
    ms = 1e3
    if not p1 < u1:
        return False, f"{kernel} one-token step {p1 * ms:.2f} ms is not faster than unpacked {u1 * ms:.2f} ms"
    if pt > PACK_TREE_MARGIN * ut:
        return False, (f"{kernel} {tree_tokens}-token step {pt * ms:.2f} ms is more than {PACK_TREE_MARGIN - 1:.0%} slower "
                       f"than unpacked {ut * ms:.2f} ms")
    return True, (f"{kernel} one-token step {p1 * ms:.2f} ms < unpacked {u1 * ms:.2f} ms, and {tree_tokens}-token step "
                  f"{pt * ms:.2f} ms vs {ut * ms:.2f} ms (within {PACK_TREE_MARGIN - 1:.0%})")


def with_tree_kernels(medians: Dict[str, Dict[int, float]], tree_tokens: int = PACK_TREE_TOKENS) -> Dict[str, Dict[int, float]]:
    """``medians`` ({kernel: {tokens: seconds}}, timed) plus every row-split kernel whose two
    base kernels were timed (:data:`TREE_KERNELS`, :data:`ONE_ROW_KERNELS`), derived: its
    one-token step is its one-row base's, its larger steps its tree base's."""
    out = dict(medians)
    for split in _split_names(medians):
        one, trees = kernel_parts(split)
        out[split] = {t: (medians[one][t] if t == 1 else medians[trees][t]) for t in (1, tree_tokens)}
    return out


def _split_names(kernels: Any) -> List[str]:
    """The row-split kernels whose two base kernels are both in ``kernels``."""
    return [split for split in TREE_KERNELS if all(k in kernels for k in kernel_parts(split))]


def decide_kernel(medians: Dict[str, Dict[int, float]], tree_tokens: int = PACK_TREE_TOKENS) -> Tuple[str, str]:
    """The kernel ``pack="auto"`` runs, among the measured ones (``medians``' keys, which hold
    ``"unpacked"``): of the kernels that pass :func:`decide_pack`'s rule against the unpacked
    one, the one with the least one-token + ``tree_tokens``-token cost (plain decoding's step
    and a typical tree step, weighted alike); ``"unpacked"`` when none passes.

    Returns:
        (kernel, reason).
    """
    passing: List[Tuple[float, str, str]] = []
    refused: List[str] = []
    for kern in (k for k in KERNELS if k in medians and k != "unpacked"):
        if ONE_ROW_KERNELS.get(kern) == "unpacked":  # the one-token step is the unpacked one: it must win the tree step
            pt, ut = medians[kern][tree_tokens], medians["unpacked"][tree_tokens]
            ok = pt < ut
            why = (f"{kern} (one row as loaded, more rows {TREE_KERNELS[kern]}) {tree_tokens}-token step {pt * 1e3:.2f} ms "
                   f"{'<' if ok else 'is not below'} unpacked {ut * 1e3:.2f} ms")
        else:
            ok, why = decide_pack(medians, tree_tokens, kern)
        if ok:
            passing.append((medians[kern][1] + medians[kern][tree_tokens], kern, why))
        else:
            refused.append(why)
    if not passing:
        return "unpacked", "; ".join(refused) or "no other kernel was measured"
    cost, kern, why = min(passing)
    others = [f"{k} {c * 1e3:.2f} ms" for c, k, _ in sorted(passing) if k != kern]
    tail = f"; 1 + {tree_tokens}-token cost {cost * 1e3:.2f} ms" + (f" (least; also {', '.join(others)})" if others else "")
    return kern, why + tail + "".join(f"; {r}" for r in refused)


@dataclass(frozen=True)
class PackChoice:
    """The measured kernel choice of one :func:`calibration_key` (``kernel="unpacked"``).

    Attributes:
        packed: whether ``pack="auto"`` packs (any kernel but the model as loaded).
        reason: why (:func:`decide_kernel`).
        seconds: ``{kernel: {tokens: median seconds}}`` of the measured steps.
        key: the calibration key. past_len: cached tokens under the timed steps.
        load: :func:`load_verdict` of the measurement. saved: whether it came from (or went to) disk.
        kernel: the chosen kernel (a name of :data:`KERNELS`; default: ``"packed"`` when
            ``packed``, else ``"unpacked"``).
    """

    packed: bool
    reason: str
    seconds: Dict[str, Dict[int, float]]
    key: str
    past_len: int = 64
    load: Dict[str, Any] = field(default_factory=dict, compare=False)
    saved: bool = field(default=False, compare=False)
    kernel: str = ""

    def __post_init__(self) -> None:
        if not self.kernel:
            object.__setattr__(self, "kernel", "packed" if self.packed else "unpacked")
        if self.kernel not in KERNELS or self.packed != (self.kernel != "unpacked"):
            raise ValueError(f"PackChoice: kernel {self.kernel!r} does not agree with packed={self.packed}")

    def to_json(self) -> Dict[str, Any]:
        return {
            "key": self.key, "packed": self.packed, "kernel": self.kernel, "reason": self.reason, "past_len": self.past_len,
            "seconds": {kern: {str(t): s for t, s in per.items()} for kern, per in self.seconds.items()},
        }

    @classmethod
    def from_json(cls, data: Any, key: str) -> "PackChoice":
        """The record :meth:`to_json` wrote for ``key``, checked.

        Raises:
            ValueError: another key, or a field missing or of the wrong type / range.
        """
        if not isinstance(data, dict) or data.get("key") != key:
            raise ValueError(f"expected the kernel choice of {key!r}")
        packed, reason, past = data.get("packed"), data.get("reason"), data.get("past_len")
        if not isinstance(packed, bool) or not isinstance(reason, str) or isinstance(past, bool) or not isinstance(past, int) or past < 1:
            raise ValueError("expected 'packed' (bool), 'reason' (str) and 'past_len' (int >= 1)")
        raw = data.get("seconds")
        seconds: Dict[str, Dict[int, float]] = {}
        kernel = data.get("kernel")
        if not isinstance(raw, dict) or "unpacked" not in raw or not set(raw) <= set(KERNELS) or kernel not in raw:
            raise ValueError(f"expected 'seconds' of 'unpacked' and other kernels of {KERNELS}, the chosen 'kernel' among them")
        for kern, per in raw.items():
            if not isinstance(per, dict) or not {"1", str(PACK_TREE_TOKENS)} <= set(per):
                raise ValueError(f"expected the seconds of 1 and {PACK_TREE_TOKENS} tokens for {kern!r}")
            for t, s in per.items():
                if not t.isdigit() or isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < float("inf"):
                    raise ValueError(f"expected positive, finite seconds per tree size, got {t!r}: {s!r}")
            seconds[kern] = {int(t): float(s) for t, s in per.items()}
        raw_load = data.get("load")
        load: Dict[str, Any] = raw_load if isinstance(raw_load, dict) else {}
        return cls(packed, reason, seconds, key, past, load, saved=True, kernel=kernel)


_CHOICES: Dict[str, PackChoice] = {}
_CHOICES_LOCK = threading.Lock()
# one kernel measurement at a time: it swaps the model's linears while it runs
_MEASURE_LOCK = threading.Lock()


def clear_pack_choices() -> None:
    """Forget the in-process kernel choices (the saved ones are kept)."""
    with _CHOICES_LOCK:
        _CHOICES.clear()


def choose_pack(
    model: Any,
    *,
    repeats: int = 5,
    past_len: int = 64,
    timer: Optional[Timer] = None,
    loadavg: Optional[Callable[[], float]] = None,
    disk: Optional[bool] = None,
    force: bool = False,
    progress: Optional[Callable[[], None]] = None,
) -> PackChoice:
    """The measured kernel choice of ``model`` on this machine: in-process, else saved (checked
    with a one-token probe), else measured (:func:`time_steps` over 1 and
    :data:`PACK_TREE_TOKENS` tokens, every kernel of
    :func:`tokenloom.runtime.cpupack.available_kernels` interleaved; :func:`decide_kernel`) and
    saved unless the machine was busy. ``force`` measures again. Call outside a
    ``packed_linears`` block; needs a kernel besides the model as loaded.

    Raises:
        ValueError: the model is inside a ``packed_linears`` block, or has nothing to pack.
    """
    from tokenloom.runtime.cpupack import available_kernels

    if kernel_of(model) != "unpacked":
        raise ValueError("choose_pack: call it outside packed_linears (it times every kernel)")
    kernels = available_kernels(model)
    if len(kernels) < 2:
        raise ValueError("choose_pack: the model has no float32 or bfloat16 CPU nn.Linear layers that a kernel here can run")
    key = calibration_key(model, "unpacked")
    with _CHOICES_LOCK:
        if not force and key in _CHOICES:
            return _CHOICES[key]
    with _MEASURE_LOCK:
        with _CHOICES_LOCK:  # another thread may have measured while this one waited
            if not force and key in _CHOICES:
                return _CHOICES[key]
        choice = _saved_or_measured(model, key, kernels, repeats, past_len, timer, loadavg, disk_enabled(disk), force, progress)
        with _CHOICES_LOCK:
            _CHOICES[key] = choice
        return choice


def _saved_or_measured(model: Any, key: str, kernels: List[str], repeats: int, past_len: int, timer: Optional[Timer],
                       loadavg: Optional[Callable[[], float]], disk: bool, force: bool,
                       progress: Optional[Callable[[], None]]) -> PackChoice:
    """:func:`choose_pack` past the in-process cache: the saved choice if a probe agrees, else measured."""
    if disk and not force:
        saved = load_record(key, PACK_STATE, PACK_VERSION, PackChoice.from_json)
        if saved is not None and set(saved.seconds) == set(kernels) | set(_split_names(kernels)):
            kern = saved.kernel
            probe = probe_one_token(model, kern, past_len=saved.past_len, timer=timer)
            if not probe_disagrees(saved.seconds[kern][1], probe):
                return saved
            warn_once(key, "pack-probe", f"tokenloom: a one-token step ({kern}) now takes {probe * 1e3:.2f} ms, the saved kernel "
                      f"choice says {saved.seconds[kern][1] * 1e3:.2f} ms; measuring the kernels again")
    load1, own = read_loads(loadavg)
    times = time_steps(model, (1, PACK_TREE_TOKENS), kernels, repeats=repeats, past_len=past_len, timer=timer, progress=progress)
    medians, verdict = medians_and_verdict(times, load1, own)
    medians = with_tree_kernels(medians)
    kernel, reason = decide_kernel(medians)
    choice = PackChoice(kernel != "unpacked", reason, medians, key, past_len, verdict, kernel=kernel)
    if not disk:
        return choice
    saved_now = save_record(key, PACK_STATE, PACK_VERSION, choice.to_json(), verdict)
    return PackChoice(kernel != "unpacked", reason, medians, key, past_len, verdict, saved=saved_now, kernel=kernel)


def auto_pack(model: Any, pack: Union[bool, str]) -> Union[bool, str]:
    """The ``pack`` value a call with ``pack`` hands to
    :func:`~tokenloom.runtime.cpupack.packed_linears`: for ``"auto"``, the kernel
    :func:`choose_pack` measured fastest (False: the model as loaded; True: oneDNN; ``"tiles"``;
    ``"packed-trees"`` / ``"tiles-trees"`` / ``"tiles-packed"``),
    False when no other kernel can run the model; inside a user's ``packed_linears`` block,
    True (it stays as it is); ``True``, the kernel names and ``False`` are checked
    (:func:`tokenloom.runtime.cpupack.resolve_pack`) and passed on (False stays False).

    Raises:
        ValueError: ``pack`` is not True, False, ``"auto"`` or ``"tiles"``; ``pack=True`` /
            ``"tiles"`` where impossible.
    """
    from tokenloom.runtime.cpupack import available_kernels, pack_value, resolve_pack

    if pack != "auto":
        possible = resolve_pack(model, pack)
        return pack if possible and isinstance(pack, str) else possible
    if kernel_of(model) != "unpacked":
        return True
    if len(available_kernels(model)) < 2:
        return False
    return pack_value(choose_pack(model).kernel)
