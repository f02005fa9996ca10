"""Host or accelerator: the one question behind every device branch of tokenloom.

Code that can run two ways -- a Rust kernel reading a tensor's memory on the host, or torch ops
where the tensor is with only ids and a few numbers crossing to the host -- asks
:func:`is_accelerator`. Nothing else in the package looks at ``device.type``.

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
from typing import Any, Iterator

__all__ = ["FORCE_ENV", "device_name", "force_accelerator_path", "forced", "is_accelerator", "synchronize"]

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
        return x.split(":", 1)[0]
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
