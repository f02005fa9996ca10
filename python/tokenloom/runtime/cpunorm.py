"""A decoder layer's RMS norm in one call, for CPU steps with tokenloom's tiles kernels.

Why: a one-token step of the embedded model runs 61 RMS norms. transformers' ``LlamaRMSNorm``
is seven torch operations (widen, square, mean, add, rsqrt, multiply, round, scale); in a real
step, between linears that stream the weights through the caches, they cost ~90 us per norm
(~5.5 ms of a ~39 ms bfloat16 step on the 2-core Xeon; ``benches/experiments/step_parts.py``).
``tokenloom._core.RmsNorm`` does the same arithmetic in one call (float32; bfloat16 rounded
where torch rounds), with a fixed summation order, and fused with the residual add before it
(:meth:`TiledRMSNorm.add_step`: ``s = x + delta``, the same bits as torch's add, then the
norm of ``s``).

The summation order differs from torch's, so the result is within float32 rounding of
transformers' norm, not bit-equal. Like the linears, the norms are therefore swapped into the
model for the duration of a :func:`tokenloom.runtime.cpupack.packed_linears` block of a tiles
kernel, for the row counts its linears run as tiles (``"tiles"``: all; ``"tiles-trees"``: 2
rows or more, its one-row steps stay as loaded; ``"tiles-packed"``: one row): the model's own forward, HF's
``generate`` inside the block and tokenloom's lean step forward all run the same norm, so a
comparison with HF "through the same layers" stays exact. :func:`set_fused_norms` turns the
swap off (to time both).

Which norms: modules of the transformers classes in :data:`NORM_CLASSES` (their forward is
Llama's, checked by the tests against the installed transformers) with a 1-D float32 or
bfloat16 CPU weight of the activations' dtype. Anything else (grad mode, an accelerator
tensor, another dtype or width) runs the original module.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, List, Tuple

from tokenloom.device import is_accelerator
from tokenloom.runtime.swap import WeakOriginal, module_base

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["NORM_CLASSES", "TiledRMSNorm", "clear_norms", "fused_norms", "norm_plan", "set_fused_norms", "swapped_norm"]

#: transformers RMS norm classes whose forward is ``LlamaRMSNorm.forward``:
#: ``weight * (x.float() * rsqrt(x.float().pow(2).mean(-1) + eps)).to(x.dtype)``.
NORM_CLASSES = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm")

_ENABLED = [True]
_LOCK = threading.Lock()
# original norm -> (weight storage pointer, version, {(one row, more rows): swapped module})
_CACHE: "weakref.WeakKeyDictionary[Any, Tuple[int, int, dict]]" = weakref.WeakKeyDictionary()


def set_fused_norms(enabled: bool) -> None:
    """Swap the RMS norms in tiles blocks (True, the default) or keep transformers' (False)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_fused_norms: expected a bool, got {type(enabled).__name__}")
    _ENABLED[0] = enabled


def fused_norms() -> bool:
    """Whether tiles blocks swap the RMS norms (:func:`set_fused_norms`)."""
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


def norm_plan(model: Any) -> List[Tuple[Any, str, Any]]:
    """(parent, name, norm) of every RMS norm of ``model`` the swap takes; empty while
    :func:`set_fused_norms` is off."""
    if not _ENABLED[0]:
        return []
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children() if _norm_ok(child)]


def swapped_norm(norm: Any, one_row: bool = True, more_rows: bool = True) -> "TiledRMSNorm":
    """The cached :class:`TiledRMSNorm` of ``norm`` that runs inputs of one row (``one_row``)
    and of more rows (``more_rows``) through the kernel (the others through ``norm``: a
    row-split linear kernel's norms follow its linears), rebuilt when the weight changed."""
    w = norm.weight.detach()
    key = (w.data_ptr(), w._version)
    with _LOCK:
        hit = _CACHE.get(norm)
    if hit is None or hit[:2] != key:
        hit = (key[0], key[1], {})
        with _LOCK:
            _CACHE[norm] = hit
    made = hit[2]
    policy = (bool(one_row), bool(more_rows))
    if policy not in made:
        first = next(iter(made.values()), None)
        made[policy] = TiledRMSNorm(norm, *policy, kernel=None if first is None else first.norm)
    return made[policy]


def clear_norms() -> None:
    """Free every cached swapped norm."""
    with _LOCK:
        _CACHE.clear()


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
        import torch

        rows = x.reshape(-1, self.hidden_size).contiguous()
        return rows.view(torch.int16).numpy() if self.dtype == torch.bfloat16 else rows.numpy()

    def _out(self, y: Any, shape: Any) -> "torch.Tensor":
        import torch

        t = torch.from_numpy(y)
        return (t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t).view(shape)

    def extra_repr(self) -> str:
        rows = {(True, True): "all", (True, False): "one", (False, True): "2 or more", (False, False): "none"}
        return f"{self.hidden_size}, eps={self.variance_epsilon}, tokenloom kernel for rows: {rows[(self.one_row, self.more_rows)]}"
