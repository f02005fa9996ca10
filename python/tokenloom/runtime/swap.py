"""What tokenloom's swapped-in modules share (:mod:`tokenloom.runtime.cpupack`'s linears,
:mod:`tokenloom.runtime.layerops`' norms and activations): the module they replace, held weakly,
and the crossing of float32 / bfloat16 tensors into and out of the Rust core's arrays."""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["WeakOriginal", "from_kernel", "kernel_rows", "module_base"]


def kernel_rows(x: Any, width: int) -> Any:
    """x [..., width] (float32 / bfloat16, CPU) as the C-contiguous 2-D numpy rows the core's
    kernels take: float32 values, or bfloat16 bit patterns as int16 (no copy where x already
    is contiguous)."""
    import torch

    rows = x.reshape(-1, width).contiguous()
    return rows.view(torch.int16).numpy() if rows.dtype == torch.bfloat16 else rows.numpy()


def from_kernel(y: Any, dtype: Any, shape: Any) -> Any:
    """A kernel's output array (float32, or int16 bfloat16 bits) as a tensor of ``dtype`` and
    ``shape`` (no copy)."""
    import torch

    t = torch.from_numpy(y)
    return (t.view(torch.bfloat16) if dtype == torch.bfloat16 else t).view(shape)


def module_base() -> Any:
    """``torch.nn.Module`` (imported on first use)."""
    import torch

    return torch.nn.Module


class WeakOriginal:
    """``[original]`` for a swapped-in module, held weakly: ``self.original[0]`` is the module
    it replaces (a linear, a norm). The swappers' caches (keyed weakly by that module) hold the
    swapped modules, so a strong reference here would keep every packed model alive for the
    process. The original is alive whenever its model is (outside a block it is the model's
    child, inside :func:`tokenloom.runtime.cpupack.packed_linears` the block holds it)."""

    __slots__ = ("_ref",)

    def __init__(self, original: Any):
        self._ref = weakref.ref(original)

    def __getitem__(self, i: int) -> Any:
        if i != 0:
            raise IndexError(i)
        mod = self._ref()
        if mod is None:
            raise ReferenceError("the module this swapped-in module replaced no longer exists (its model was freed)")
        return mod

    def __len__(self) -> int:
        return 1
