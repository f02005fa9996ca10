"""Pre-packed oneDNN linear layers for CPU decoding (``generate(..., pack="auto")``).

Why: a speculative step feeds 2-30 tokens through the model at once. On CPU, PyTorch's default
``nn.Linear`` (an MKL GEMM on the original row-major weight) is poor at such small batches: on
the 2-core reference machine with the embedded SmolLM2-135M a 9-token forward costs ~1.5x a
1-token one, which eats most of what a draft tree gains. The same layers run through oneDNN with
weights reordered once into its blocked layout (what ``torch.compile``'s CPU "freezing" pass
uses) cost almost the same for 1 to ~12 tokens, and are faster for 1 token too (see
``benches/kernels/test_bench_cpupack.py`` and docs/recycling.md).

:func:`packed_linears` swaps every float32 CPU ``nn.Linear`` of a model for a
:class:`PackedLinear` holding the reordered weight, for the duration of a ``with`` block, and
puts the original modules back afterwards. Packed weights are cached per module (keyed by the
weight's storage and version, so an edited weight is repacked) and cost one extra copy of the
linear weights in memory; :func:`clear_packed` frees them.

Bounded memory: oneDNN builds (and keeps, in its primitive cache) a kernel per input shape, about
2.7 MB per distinct row count for the embedded model's linears, so a long-running process that
sees every prompt length and tree size would grow by hundreds of MB. :func:`packed_rows` maps a
row count to one of :data:`PACKED_ROW_SIZES`: exact up to 32 rows (tree steps: a padded row is
not free, 17 rows padded to 24 measured ~1.15x 17 exact on the 2-core AMD machine), then padded to
multiples of 8 up to 64; larger inputs (prompts, compute-bound, where packing gains nothing and
each shape would cost 3-5 MB) run through the original ``nn.Linear``. So at most
``len(PACKED_ROW_SIZES)`` = 36 shapes per linear are ever built (``benches/experiments/soak.py`` measures RSS
over long runs).

Numerics: oneDNN sums in another order than MKL, so logits differ at float32 rounding level
(~1e-5 on the embedded model); greedy outputs can differ from an unpacked run only at
floating-point near-ties (tested in tests/runtime/test_cpupack.py). Pass ``pack=False`` to
``tokenloom.generate`` to run the model exactly as loaded.

Faster is not universal: on an Intel Xeon with AVX-512/AMX, packed linears measured slower than
MKL's. ``tokenloom.generate(..., pack="auto")`` therefore packs only where packing measured
faster on the machine (:mod:`tokenloom.spec.calibration`); :func:`packed_linears` itself packs
whenever it can.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Tuple, Union

from tokenloom.device import is_accelerator

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "PACKED_ROW_SIZES",
    "PackedLinear",
    "clear_packed",
    "is_packed",
    "pack_available",
    "packed_linears",
    "packed_rows",
    "resolve_pack",
]

#: The row counts a packed linear ever runs oneDNN with (inputs are padded up to the next one);
#: more rows than the last go through the original ``nn.Linear``.
PACKED_ROW_SIZES: Tuple[int, ...] = tuple(range(1, 33)) + tuple(range(40, 65, 8))

# nn.Linear -> (weight storage pointer, weight version, its PackedLinear)
_CACHE: "weakref.WeakKeyDictionary[Any, Tuple[int, int, Any]]" = weakref.WeakKeyDictionary()
# model -> [(parent module, child name, nn.Linear)]: where the packable linears sit
_PLANS: "weakref.WeakKeyDictionary[Any, List[Tuple[Any, str, Any]]]" = weakref.WeakKeyDictionary()
# models inside a packed_linears block
_ACTIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_LOCK = threading.Lock()
_AVAILABLE: Dict[str, bool] = {}


def pack_available() -> bool:
    """True when this torch build has the oneDNN packed-linear ops and they run here."""
    if "ok" in _AVAILABLE:
        return _AVAILABLE["ok"]
    ok = False
    try:
        import torch

        if torch.backends.mkldnn.is_available():
            w = torch.randn(8, 4)
            x = torch.randn(3, 4)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            ok = bool(torch.allclose(y, x @ w.t(), atol=1e-5, rtol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means "not available"
        ok = False
    _AVAILABLE["ok"] = ok
    return ok


def packed_rows(m: int) -> int:
    """The row count an input of ``m`` rows runs with: the smallest of :data:`PACKED_ROW_SIZES`
    that holds it, or 0 when ``m`` is 0 or exceeds them all (the caller then runs the original,
    unpacked linear)."""
    if m <= 32:
        return m
    if m <= PACKED_ROW_SIZES[-1]:
        return -(-m // 8) * 8
    return 0


def _module_base() -> Any:
    import torch

    return torch.nn.Module


class PackedLinear(_module_base()):  # type: ignore[misc]
    """Drop-in for a float32 CPU ``nn.Linear`` (inference only): input [..., in_features] ->
    output [..., out_features] through oneDNN with a pre-reordered weight."""

    def __init__(self, original: Any, packed: Any):
        super().__init__()
        self.original = [original]  # a list: not registered as a submodule (no double params)
        self.in_features = int(original.in_features)
        self.out_features = int(original.out_features)
        self.packed_weight = packed
        self.bias = None if original.bias is None else original.bias.detach()

    @property
    def weight(self) -> Any:  # code that reads ``.weight`` (e.g. tied embeddings) sees the original
        return self.original[0].weight

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if x.dtype != torch.float32 or is_accelerator(x) or torch.is_grad_enabled():
            return self.original[0](x)
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        m = rows.shape[0]
        padded = packed_rows(m)
        if padded == 0:  # no rows, or more than the packed shapes cover: the original linear
            return self.original[0](x)
        if padded != m:
            rows = torch.cat([rows, rows.new_zeros(padded - m, rows.shape[1])])
        y = torch.ops.mkldnn._linear_pointwise(rows.contiguous(), self.packed_weight, self.bias, "none", [], "")
        if padded != m:
            y = y[:m]
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def _packable(mod: Any) -> bool:
    import torch

    if type(mod) is not torch.nn.Linear:
        return False
    w = mod.weight
    return w.dtype == torch.float32 and not is_accelerator(w) and w.dim() == 2


def _packed_module(mod: Any) -> "PackedLinear":
    """The cached PackedLinear of ``mod``, rebuilt when its weight changed."""
    import torch

    w = mod.weight.detach()
    key_ptr, key_ver = w.data_ptr(), w._version
    with _LOCK:
        hit = _CACHE.get(mod)
    if hit is not None and hit[0] == key_ptr and hit[1] == key_ver:
        return hit[2]
    packed = PackedLinear(mod, torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None))
    with _LOCK:
        _CACHE[mod] = (key_ptr, key_ver, packed)
    return packed


def _plan(model: Any) -> List[Tuple[Any, str, Any]]:
    """(parent, name, linear) of every packable linear of ``model`` (cached; re-scanned when the
    model's structure, a linear's dtype or its device changed; a linear added to a model
    already planned is only seen after :func:`clear_packed`). An empty plan is not cached: a
    model moved back to the CPU (or run outside a forced accelerator path) is scanned again."""
    plan = _PLANS.get(model)
    if plan is not None and all(parent._modules.get(name) is child and _packable(child) for parent, name, child in plan):
        return plan
    plan = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _packable(child)
    ]
    if plan:
        _PLANS[model] = plan
    else:
        _PLANS.pop(model, None)
    return plan


def _resolve_plan(model: Any, pack: Union[bool, str]) -> List[Tuple[Any, str, Any]]:
    """The linears to pack (empty: do not pack) for ``pack`` = True / ``"auto"`` / False."""
    if pack is False or pack is None:
        return []
    if pack not in (True, "auto"):
        raise ValueError(f"pack: expected True, False or 'auto', got {pack!r}")
    plan = _plan(model) if isinstance(model, _module_base()) else []
    if pack == "auto":
        return plan if plan and pack_available() else []
    if not pack_available():
        raise ValueError("pack=True: this torch build has no working oneDNN packed linear (torch.ops.mkldnn)")
    if not plan:
        raise ValueError("pack=True: the model has no float32 CPU nn.Linear layers to pack")
    return plan


def resolve_pack(model: Any, pack: Union[bool, str]) -> bool:
    """Decide whether packing is possible: ``"auto"`` when the model has float32 CPU linears and
    the oneDNN ops work; ``True`` insists (ValueError when impossible); ``False`` never packs.
    Whether packing is *faster* here is measured above this layer:
    ``tokenloom.generate(..., pack="auto")`` packs only where
    :func:`tokenloom.spec.calibration.choose_pack` measured it faster."""
    if pack in (True, "auto") and is_packed(model):
        return True
    return bool(_resolve_plan(model, pack))


def is_packed(model: Any) -> bool:
    """True inside a :func:`packed_linears` block of ``model``."""
    try:
        return model in _ACTIVE
    except TypeError:
        return False


@contextlib.contextmanager
def packed_linears(model: Any, enabled: Union[bool, str] = True) -> Iterator[Any]:
    """``with packed_linears(model): ...`` runs ``model`` with packed linears; restores the
    original modules on exit (also on error). Nested use is a no-op. Yields ``model``.

    Args:
        model: a torch module (an HF causal LM).
        enabled: True (raise if impossible), ``"auto"`` (pack when possible) or False.
    """
    plan = [] if is_packed(model) else _resolve_plan(model, enabled)
    if not plan:
        yield model
        return
    swapped: List[Tuple[Any, str, Any]] = []
    try:
        for parent, name, child in plan:
            parent._modules[name] = _packed_module(child)
            swapped.append((parent, name, child))
        _ACTIVE.add(model)
        yield model
    finally:
        _ACTIVE.discard(model)
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


def clear_packed() -> None:
    """Free every cached packed weight (they are rebuilt on the next packed run)."""
    with _LOCK:
        _CACHE.clear()
        _PLANS.clear()
