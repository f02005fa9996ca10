"""A decoder layer's non-linear parts in one call each, for CPU steps with tokenloom's tiles.

Why: between the linears, a step of a small model is many small torch operations. A one-token
step of the embedded model runs 61 RMS norms (transformers' ``LlamaRMSNorm``: seven torch
operations each) and 30 gated activations (``silu(gate) * up``: two operations and a copy of
the gate); in a real step, between linears that stream the weights through the caches, each
operation costs tens of microseconds (the norms alone ~5.5 ms of a ~39 ms bfloat16 step on the
2-core Xeon; ``benches/experiments/step_parts.py``). tokenloom's kernels do each in one call:

* :class:`TiledRMSNorm` (``tokenloom._core.RmsNorm``): the norm's arithmetic in float32,
  rounded where torch rounds, with a fixed summation order, and fused with the residual add
  before it (:meth:`TiledRMSNorm.add_step`: ``s = x + delta``, torch's add bit for bit, then
  the norm of ``s``);
* :class:`TiledSiLU` (``tokenloom._core.silu`` / ``silu_mul``): ``x / (1 + exp(-x))`` with the
  core's own vectorizable ``exp`` (within 2 ulp), and :meth:`TiledSiLU.mul_step` the gated
  product ``round(round(silu(gate)) * up)`` straight from the gate and up projections' output
  side by side (:func:`tokenloom.runtime.cpupack.group_step`), no copy of the gate.

Neither is transformers' module bit for bit (the summation order, the ``exp``): within float32
rounding. Like the linears they are therefore swapped into the model for the duration of a
:func:`tokenloom.runtime.cpupack.packed_linears` block of a tiles kernel, for the row counts
its linears run as tiles (``"tiles"``: all; ``"tiles-trees"``: 2 rows or more, its one-row
steps stay as loaded; ``"tiles-packed"``: one row): the model's own forward, HF's ``generate``
inside the block and tokenloom's lean step forward all run the same functions, so a comparison
with HF "through the same layers" stays exact. :func:`set_layer_kernels` turns the swap off
(to time both).

Which modules: norms of the transformers classes in :data:`NORM_CLASSES` (their forward is
Llama's, checked by the tests against the installed transformers) with a 1-D float32 or
bfloat16 CPU weight; activations of :data:`SILU_CLASSES`. Anything else (grad mode, an
accelerator tensor, another dtype or width) runs the original module.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, List, Tuple

from tokenloom.device import is_accelerator
from tokenloom.runtime.swap import WeakOriginal, from_kernel, kernel_rows, module_base

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "NORM_CLASSES", "SILU_CLASSES", "TiledRMSNorm", "TiledSiLU", "clear_layer_kernels", "layer_kernels", "layer_plan",
    "set_layer_kernels", "swapped_module",
]


#: transformers RMS norm classes whose forward is ``LlamaRMSNorm.forward``:
#: ``weight * (x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).to(x.dtype)``.
NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm")
#: SiLU activation modules (module, class name): transformers' (``ACT2FN["silu"]``) and torch's.
SILU_CLASSES = (("transformers.activations", "SiLUActivation"), ("torch.nn.modules.activation", "SiLU"))

_ENABLED = [True]
_LOCK = threading.Lock()
# original module -> (weight storage pointer, version, {(one row, more rows): swapped module})
_CACHE: "weakref.WeakKeyDictionary[Any, Tuple[int, int, dict]]" = weakref.WeakKeyDictionary()


def set_layer_kernels(enabled: bool) -> None:
    """Swap the norms and activations in tiles blocks (True, the default) or keep
    transformers' (False).

    Raises:
        TypeError: ``enabled`` not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_layer_kernels: expected a bool, got {type(enabled).__name__}")
    _ENABLED[0] = enabled


def layer_kernels() -> bool:
    """Whether tiles blocks swap the norms and activations (:func:`set_layer_kernels`)."""
    return _ENABLED[0]


def _norm_ok(mod: Any) -> bool:
    """A module of :data:`NORM_CLASSES` with a 1-D float32 / bfloat16 CPU weight and an eps."""
    import torch

    cls = type(mod)
    if cls.__name__ not in NORM_CLASSES or not cls.__module__.startswith("transformers.models."):
        return False
    w = getattr(mod, "weight", None)
    eps = getattr(mod, "variance_epsilon", None)
    return (
        isinstance(w, torch.Tensor)
        and w.dim() == 1
        and w.numel() > 0
        and w.dtype in (torch.float32, torch.bfloat16)
        and not is_accelerator(w)
        and isinstance(eps, (int, float))
        and 0 <= float(eps) < float("inf")
    )


def _silu_ok(mod: Any) -> bool:
    """A SiLU module of :data:`SILU_CLASSES` (not in place)."""
    cls = type(mod)
    return (cls.__module__, cls.__name__) in SILU_CLASSES and not getattr(mod, "inplace", False)


def layer_plan(model: Any) -> List[Tuple[Any, str, Any]]:
    """(parent, name, module) of every norm and activation of ``model`` the swap takes; empty
    while :func:`set_layer_kernels` is off."""
    if not _ENABLED[0]:
        return []
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _norm_ok(child) or _silu_ok(child)
    ]


def swapped_module(mod: Any, one_row: bool = True, more_rows: bool = True) -> Any:
    """The cached :class:`TiledRMSNorm` / :class:`TiledSiLU` of ``mod`` (from
    :func:`layer_plan`) that runs inputs of one row (``one_row``) and of more rows
    (``more_rows``) through the kernel (the others through ``mod``: a row-split linear
    kernel's norms and activations follow its linears); rebuilt when a norm's weight changed."""
    norm = _norm_ok(mod)
    key = (mod.weight.data_ptr(), mod.weight._version) if norm else (0, 0)
    with _LOCK:
        hit = _CACHE.get(mod)
    if hit is None or hit[:2] != key:
        hit = (key[0], key[1], {})
        with _LOCK:
            _CACHE[mod] = hit
    made = hit[2]
    policy = (bool(one_row), bool(more_rows))
    if policy not in made:
        if norm:
            first = next(iter(made.values()), None)
            made[policy] = TiledRMSNorm(mod, *policy, kernel=None if first is None else first.norm)
        else:
            made[policy] = TiledSiLU(mod, *policy)
    return made[policy]


def clear_layer_kernels() -> None:
    """Free every cached swapped norm and activation."""
    with _LOCK:
        _CACHE.clear()


def _rows_policy(one_row: bool, more_rows: bool) -> str:
    return {(True, True): "all", (True, False): "one", (False, True): "2 or more", (False, False): "none"}[(one_row, more_rows)]


class TiledRMSNorm(module_base()):  # type: ignore[misc]
    """Drop-in for a transformers RMS norm (:data:`NORM_CLASSES`; inference only): input
    [..., H] -> [..., H] in the input's dtype through ``tokenloom._core.RmsNorm`` (``norm``)
    where the input has one row and ``one_row`` is set, or more rows and ``more_rows`` is set;
    through the original module otherwise. ``weight`` and ``variance_epsilon`` are the
    original's; the original is held weakly (a cached swapped module must not keep its model
    alive) as ``original[0]``. ``kernel``: an ``RmsNorm`` of the same weight to share."""

    def __init__(self, original: Any, one_row: bool = True, more_rows: bool = True, kernel: Any = None):
        import torch

        from tokenloom import _core

        super().__init__()
        self.original = WeakOriginal(original)
        w = original.weight.detach().contiguous()
        self.dtype = w.dtype
        self.hidden_size = int(w.shape[0])
        self.variance_epsilon = original.variance_epsilon
        self.one_row, self.more_rows = bool(one_row), bool(more_rows)
        bf16 = w.dtype == torch.bfloat16
        self.norm = kernel if kernel is not None else _core.RmsNorm(
            w.view(torch.int16).numpy() if bf16 else w.numpy(), float(original.variance_epsilon), bf16=bf16
        )

    @property
    def weight(self) -> Any:
        return self.original[0].weight

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if is_accelerator(x) or torch.is_grad_enabled():
            return self.original[0](x)
        return self.step(x)

    def _takes(self, x: "torch.Tensor") -> bool:
        if x.dtype != self.dtype or x.dim() < 1 or int(x.shape[-1]) != self.hidden_size:
            return False
        rows = x.numel() // self.hidden_size
        return rows > 0 and (self.one_row if rows == 1 else self.more_rows)

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        """:meth:`forward` without its per-call checks (CPU, grad off: made by the caller)."""
        if not self._takes(x):
            return self.original[0](x)
        return self._out(self.norm.forward(self._rows(x)), x.shape)

    def add_step(self, x: "torch.Tensor", delta: "torch.Tensor") -> Tuple["torch.Tensor", "torch.Tensor"]:
        """``(s, norm(s))`` with ``s = x + delta`` (torch's add, bit for bit) in one call; x and
        delta of one shape [..., H] (else the add and :meth:`step` run separately)."""
        if not (self._takes(x) and delta.dtype == x.dtype and delta.shape == x.shape):
            s = x + delta
            return s, self.step(s)
        s, y = self.norm.add_forward(self._rows(x), self._rows(delta))
        return self._out(s, x.shape), self._out(y, x.shape)

    def _rows(self, x: "torch.Tensor") -> Any:
        return kernel_rows(x, self.hidden_size)

    def _out(self, y: Any, shape: Any) -> "torch.Tensor":
        return from_kernel(y, self.dtype, shape)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.variance_epsilon}, tokenloom kernel for rows: {_rows_policy(self.one_row, self.more_rows)}"


class TiledSiLU(module_base()):  # type: ignore[misc]
    """Drop-in for a SiLU activation module (:data:`SILU_CLASSES`; inference only): input
    [..., N] -> [..., N] in the input's dtype through ``tokenloom._core.silu`` where the input
    is float32 / bfloat16 and has one row and ``one_row`` is set, or more rows and
    ``more_rows`` is set (a row: the last dimension); through the original module otherwise
    (held weakly as ``original[0]``)."""

    def __init__(self, original: Any, one_row: bool = True, more_rows: bool = True):
        super().__init__()
        self.original = WeakOriginal(original)
        self.one_row, self.more_rows = bool(one_row), bool(more_rows)

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if is_accelerator(x) or torch.is_grad_enabled():
            return self.original[0](x)
        return self.step(x)

    def _takes(self, x: "torch.Tensor", width: int) -> bool:
        import torch

        if x.dtype not in (torch.float32, torch.bfloat16) or x.dim() < 1 or width <= 0 or x.numel() == 0:
            return False
        return self.one_row if x.numel() // width == 1 else self.more_rows

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        """:meth:`forward` without its per-call checks (CPU, grad off: made by the caller)."""
        from tokenloom import _core

        width = int(x.shape[-1]) if x.dim() else 0
        if not self._takes(x, width):
            return self.original[0](x)
        return from_kernel(_core.silu(kernel_rows(x, width)), x.dtype, x.shape)

    def mul_step(self, gate_up: "torch.Tensor", inter: int) -> "torch.Tensor":
        """``act(gate) * up`` [..., I] from ``gate_up`` [..., 2 I] (gate then up, side by side)
        in one call; the same bits as :meth:`step` on the gate times the up part in torch."""
        from tokenloom import _core

        width = int(gate_up.shape[-1]) if gate_up.dim() else 0
        if width != 2 * inter or not self._takes(gate_up, width):
            return self.step(gate_up[..., :inter].contiguous()) * gate_up[..., inter:]
        out = _core.silu_mul(kernel_rows(gate_up, width))
        return from_kernel(out, gate_up.dtype, (*gate_up.shape[:-1], inter))

    def extra_repr(self) -> str:
        return f"tokenloom kernel for rows: {_rows_policy(self.one_row, self.more_rows)}"
