"""The machine a model runs on, as the speed choices see it (the one home for both facts).

* :func:`machine_info`: CPU model name and the instruction-set flags that decide which kernels
  are fast (``avx2``, ``fma``, ``avx512f``, ``avx512_bf16``, ``amx_tile``), cores, the torch
  version and build, torch threads. Read from ``/proc/cpuinfo`` where there is one, else
  :mod:`platform`. :func:`machine_fingerprint` is the part of it that a measured cost depends
  on, as a short string for cache keys.
* :func:`machine_load`: the 1-, 5- and 15-minute load averages (``os.getloadavg``) and whether
  the machine is busy. :func:`own_load`: the cores this process kept busy on average, the part
  of the load average that is its own.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

__all__ = [
    "BUSY_LOAD_PER_CPU",
    "ISA_FLAGS",
    "cpu_model_and_flags",
    "tiles_kernels",
    "describe",
    "machine_fingerprint",
    "machine_info",
    "machine_load",
    "own_load",
    "parse_cpuinfo",
    "resident_mb",
]

#: The CPU flags that decide which linear kernels are fast here.
ISA_FLAGS: Tuple[str, ...] = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "asimd")

#: 1-minute load average per CPU from which a machine counts as busy (timings flagged as noisy).
BUSY_LOAD_PER_CPU = 0.75

_CPU: Dict[str, Tuple[str, Tuple[str, ...]]] = {}
_BUILD: Dict[str, str] = {}


def parse_cpuinfo(text: str) -> Tuple[str, List[str]]:
    """(model name, flags) of the first processor in ``/proc/cpuinfo`` text ("" / [] if absent).
    x86 writes ``model name`` and ``flags``; ARM ``Features`` (and sometimes no model name)."""
    name, flags = "", []  # type: Tuple[str, List[str]]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return name, flags


def cpu_model_and_flags() -> Tuple[str, Tuple[str, ...]]:
    """``(CPU model name, the flags of :data:`ISA_FLAGS` it has)``; cached per process."""
    if "cpu" in _CPU:
        return _CPU["cpu"]
    name, flags = "", []  # type: Tuple[str, List[str]]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            name, flags = parse_cpuinfo(f.read(1 << 20))
    except OSError:
        pass
    if not name:
        name = platform.processor() or platform.machine() or "unknown CPU"
    _CPU["cpu"] = (" ".join(name.split()), tuple(f for f in ISA_FLAGS if f in flags))
    return _CPU["cpu"]


def _torch_build() -> str:
    if "build" in _BUILD:
        return _BUILD["build"]
    import torch

    parts: List[str] = [str(torch.__version__)]
    try:
        parts.append(f"mkldnn={'on' if torch.backends.mkldnn.is_available() else 'off'}")
        parts.append(f"mkl={'on' if torch.backends.mkl.is_available() else 'off'}")
    except Exception:  # noqa: BLE001 - a build without these backends modules
        pass
    _BUILD["build"] = " ".join(parts)
    return _BUILD["build"]


def tiles_kernels() -> Dict[str, str]:
    """The kernel tokenloom's tiles linears run per weight dtype here: ``{"float32": family,
    "bfloat16": "amx-bf16" or family}`` (family: ``"avx512f"``, ``"avx2+fma"``, ``"scalar"``;
    bfloat16 runs AMX where :func:`tokenloom.runtime.cpupack.tiles_amx` says so); ``{}``
    without the compiled extension."""
    try:
        from tokenloom import _core
    except ImportError:
        return {}
    from tokenloom.runtime.cpupack import tiles_amx

    family = _core.tiled_linear_isa()
    return {"float32": family, "bfloat16": "amx-bf16" if tiles_amx() else family}


def machine_info() -> Dict[str, Any]:
    """``{"cpu", "flags", "cores", "torch", "torch_build", "threads", "platform", "tiles"}`` of
    this process (``flags``: those of :data:`ISA_FLAGS` the CPU has; ``tiles``:
    :func:`tiles_kernels`)."""
    import torch

    cpu, flags = cpu_model_and_flags()
    return {
        "cpu": cpu,
        "flags": list(flags),
        "cores": os.cpu_count() or 1,
        "torch": torch.__version__,
        "torch_build": _torch_build(),
        "threads": torch.get_num_threads(),
        "platform": f"{platform.system()} {platform.machine()}",
        "tiles": tiles_kernels(),
    }


def describe(info: Optional[Dict[str, Any]] = None) -> str:
    """One line naming the machine: CPU model, its ISA flags of interest, cores, torch build and
    threads (``info`` default :func:`machine_info`)."""
    m = machine_info() if info is None else info
    flags = " ".join(m.get("flags") or []) or "no ISA flag of interest"
    return f"{m.get('cpu')} ({flags}), {m.get('cores')} cores, torch {m.get('torch_build')}, {m.get('threads')} threads"


def machine_fingerprint(info: Optional[Dict[str, Any]] = None) -> str:
    """What a measured step cost depends on besides the model: CPU model, ISA flags, torch build,
    threads and the tiles kernels (AMX or not), as one string (``info`` default
    :func:`machine_info`)."""
    m = machine_info() if info is None else info
    tiles = ",".join(f"{d}:{k}" for d, k in sorted((m.get("tiles") or {}).items()))
    return (f"cpu={m.get('cpu')}|flags={','.join(m.get('flags') or [])}|torch={m.get('torch_build')}|threads={m.get('threads')}"
            f"|tiles={tiles}")


def machine_load() -> Dict[str, Any]:
    """``{"load1", "load5", "load15", "cpus", "busy"}`` from ``os.getloadavg`` (NaN where the
    platform has none); ``busy`` when the 1-minute load is at least
    :data:`BUSY_LOAD_PER_CPU` per CPU."""
    cpus = os.cpu_count() or 1
    try:
        l1, l5, l15 = os.getloadavg()
    except (OSError, AttributeError):  # pragma: no cover - platforms without it
        l1 = l5 = l15 = float("nan")
    return {"load1": l1, "load5": l5, "load15": l15, "cpus": cpus, "busy": bool(l1 >= BUSY_LOAD_PER_CPU * cpus)}


_IMPORTED = time.monotonic()


def _process_age() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere: since this module was
    imported, a lower bound)."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
            start_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 1e-3)
    except (OSError, ValueError, IndexError, AttributeError):
        return max(time.monotonic() - _IMPORTED, 1e-3)


def own_load() -> float:
    """Cores this process kept busy on average since it started (user + system CPU seconds over
    its age): an estimate of its own share of the load average."""
    t = os.times()
    return (t.user + t.system) / _process_age()


def resident_mb() -> float:
    """This process's resident memory now (``VmRSS``, MiB); NaN where ``/proc`` has no status
    file (not Linux). Soak benchmarks read it to see growth over long runs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
