"""Host or accelerator: the one question behind every device branch of tokenloom (at the bottom
of the package, so that every layer can ask it).

Code that can run two ways -- a Rust kernel reading a tensor's memory on the host, or torch ops
where the tensor is with only ids and a few numbers crossing to the host -- asks
:func:`is_accelerator`. Nothing else in the package looks at ``device.type``: the other facts
that differ per device live here too (:func:`synchronize` for timing, :func:`device_name`,
:func:`require_device`, :func:`peak_memory`).

CI has no accelerator, so the accelerator branches can be forced onto CPU tensors: set
``TOKENLOOM_FORCE_ACCELERATOR_PATH=1`` in the environment, or run the code inside
:func:`force_accelerator_path`. Every CPU tensor then takes the accelerator branch (numpy
arrays and plain sequences still take the host one), so tests check each accelerator branch
against the host branch on the same machine: the same tokens, the same distributions, and
only the promised numbers moved to the host.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from typing import Any, Iterator, Tuple

__all__ = [
    "DeviceUnavailable",
    "FORCE_ENV",
    "device_name",
    "force_accelerator_path",
    "forced",
    "is_accelerator",
    "peak_memory",
    "require_device",
    "reset_peak_memory",
    "synchronize",
]

#: The environment variable that forces the accelerator branches (``1``, ``true`` or ``yes``).
FORCE_ENV = "TOKENLOOM_FORCE_ACCELERATOR_PATH"

_FORCED: "contextvars.ContextVar[bool]" = contextvars.ContextVar("tokenloom_force_accelerator", default=False)


def forced() -> bool:
    """Whether the accelerator branches are forced (:data:`FORCE_ENV` or
    :func:`force_accelerator_path`)."""
    return _FORCED.get() or os.environ.get(FORCE_ENV, "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def force_accelerator_path(on: bool = True) -> Iterator[None]:
    """Inside the block (this thread or task only), CPU tensors take the accelerator branches
    (``on=False``: the environment variable alone decides)."""
    token = _FORCED.set(bool(on))
    try:
        yield
    finally:
        _FORCED.reset(token)


def _device_type(x: Any) -> Any:
    """``x``'s device type: a tensor's, a ``torch.device``'s, a device string's (``"cuda:0"``);
    None for anything else (numpy arrays, sequences, None)."""
    if isinstance(x, str):
        import torch

        try:
            return torch.device(x).type
        except (RuntimeError, ValueError):  # not a device name ("", "gpu0"): nothing is there
            return None
    dev = getattr(x, "device", None) if hasattr(x, "detach") else x
    return getattr(dev, "type", None) if type(dev).__name__ == "device" else None


def is_accelerator(x: Any) -> bool:
    """True when ``x`` lives on an accelerator, or is a CPU tensor / device while the
    accelerator branches are forced.

    Args:
        x: a torch tensor, a ``torch.device`` or a device string; anything else (a numpy
            array, a sequence, None) is on the host.
    """
    t = _device_type(x)
    if t is None:
        return False
    return t != "cpu" or forced()


def synchronize(device: Any) -> None:
    """Wait for the work queued on ``device`` (for timing); nothing on the host."""
    t = _device_type(device)
    if t is None or t == "cpu" or t == "meta":
        return
    import torch

    mod = getattr(torch, t, None)
    sync = getattr(mod, "synchronize", None)
    if callable(sync):
        if t == "cuda":
            sync(device)
        else:
            sync()


def device_name(device: Any) -> str:
    """``str(device)``, with the card's name on CUDA (``"cuda:0:NVIDIA H100 80GB HBM3"``)."""
    name = str(device)
    if _device_type(device) == "cuda":
        import torch

        name += ":" + torch.cuda.get_device_name(device)
    return name


class DeviceUnavailable(RuntimeError):
    """A device that this machine does not have."""


def require_device(name: Any) -> Any:
    """``torch.device(name)``, checked to exist on this machine.

    Raises:
        DeviceUnavailable: not a device name, or a device this machine does not have.
    """
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise DeviceUnavailable(f"{name!r} is not a torch device ({e})") from e
    if dev.type == "cpu":
        return dev
    backend = getattr(torch, dev.type, None)
    available = getattr(backend, "is_available", None)
    if not callable(available) or not available():
        raise DeviceUnavailable(
            f"no {dev.type} device on this machine (torch.{dev.type}.is_available() is False)"
        )
    try:
        torch.zeros(1, device=dev)
    except (RuntimeError, AssertionError) as e:
        raise DeviceUnavailable(f"cannot allocate on {dev} ({e})") from e
    return dev


def reset_peak_memory(device: Any) -> None:
    """Start counting :func:`peak_memory` afresh (CUDA only; the host's peak RSS cannot be reset)."""
    if _device_type(device) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> Tuple[str, int]:
    """``(what was measured, bytes)``: the CUDA allocator's peak on a CUDA device, else the
    process's peak resident set (Linux reports it in KiB, macOS in bytes)."""
    if _device_type(device) == "cuda":
        import torch

        return "CUDA max_memory_allocated", int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return "host peak RSS", rss if sys.platform == "darwin" else rss * 1024
