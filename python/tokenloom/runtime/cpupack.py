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

bfloat16: where oneDNN runs bfloat16 natively (AVX-512 CPUs; AMX or AVX512-BF16 tile kernels,
float32 accumulation), bfloat16 weights are packed the same way (:func:`pack_available` with the
dtype). Measured on a 2-core Intel Xeon with AMX (all linears of one step of the embedded model,
medians of 5): 1 / 17 rows 20.6 / 23.2 ms packed against 20.3 / 30.0 ms as loaded -- torch's own
bfloat16 linear reorders the weight for its AMX kernel on every call of 2 rows or more. Up to 32
rows its output rows equal the one-row outputs bit for bit there (a tree step's linears give a
greedy step's numbers), and from 2 rows on they equal ``nn.Linear``'s.

Numerics: oneDNN sums in another order than MKL, so logits differ at float32 rounding level
(~1e-5 on the embedded model); greedy outputs can differ from an unpacked run only at
floating-point near-ties (tested in tests/runtime/test_cpupack.py). Pass ``pack=False`` to
``tokenloom.generate`` to run the model exactly as loaded.

A second kernel, ``pack="tiles"`` (:class:`TiledLinear`): tokenloom's own small-M linear
(``tokenloom._core.TiledLinear``, Rust): the weight packed once into panels of 16 output columns
x K, each panel streamed from memory exactly once per call for all rows (a software prefetch
runs ahead of the arithmetic), float32 accumulation; float32 and bfloat16 weights (kept as
bf16: half the bytes streamed). On a CPU with AMX-BF16, bfloat16 weights run the AMX kernel
instead (:func:`tiles_amx`: tile products, nearly flat in the row count). bfloat16 rows go in
and out of the kernel as bfloat16 bits (no torch conversion on either side). Row counts up to
:data:`TILED_MAX_ROWS` run through it, larger ones (prompts) through the original ``nn.Linear``
or tiles in chunks, whichever measured faster. Its threads: :func:`set_tiles_threads` (default
``torch.get_num_threads()``; measurements there).

Inside a block of a tiles kernel, the model's RMS norms and SiLU activations are swapped too,
for the rows its linears run as tiles (:mod:`tokenloom.runtime.layerops`: one call each,
within float32 rounding of transformers' modules; the model's own forward then runs them, so
HF "through the same layers" stays the reference).

Faster is not universal: on an Intel Xeon with AVX-512/AMX, packed linears measured slower than
MKL's. ``tokenloom.generate(..., pack="auto")`` therefore packs only where packing measured
faster on the machine (:mod:`tokenloom.spec.calibration`); :func:`packed_linears` itself packs
whenever it can.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from tokenloom.device import is_accelerator
from tokenloom.runtime.kernels import PACK_KERNELS, TREE_KERNELS, kernel_parts
from tokenloom.runtime.swap import WeakOriginal, module_base

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "KERNELS_VERSION",
    "PACKED_ROW_SIZES",
    "PACK_KERNELS",
    "TREE_KERNELS",
    "TreeRowsLinear",
    "row_invariant_pack",
    "PackedLinear",
    "TILED_MAX_ROWS",
    "TILED_SPLIT_WORK",
    "TILED_GROUPS",
    "TiledGroup",
    "TiledLinear",
    "active_kernel",
    "group_step",
    "grouped",
    "set_grouped",
    "clear_long_rows",
    "step_call",
    "long_rows_choice",
    "long_rows_choices",
    "set_long_rows",
    "available_kernels",
    "pack_value",
    "clear_packed",
    "is_packed",
    "pack_available",
    "packed_linears",
    "packed_rows",
    "resolve_kernel",
    "resolve_pack",
    "set_tiles_threads",
    "tiles_amx",
    "tiles_available",
    "tiles_threads",
    "torch_on_one_thread",
    "torch_threads_back",
]

#: The row counts a packed linear ever runs oneDNN with (inputs are padded up to the next one);
#: more rows than the last go through the original ``nn.Linear``.
PACKED_ROW_SIZES: Tuple[int, ...] = tuple(range(1, 33)) + tuple(range(40, 65, 8))

#: Bumped when a kernel here changes what a step costs (in every calibration key, so saved curves
#: and kernel choices are measured again): 2 = AVX-512 tiles, tiles threads handed over by torch,
#: oneDNN bfloat16; 3 = the tiles pool's workers spin 1 ms between calls (was 100 us); 4 = bfloat16
#: tiles run the AMX kernel where the CPU has it, bfloat16 rows in and out; 5 = sibling tiles
#: linears (q / k / v, gate / up) packed as one weight, called once per step (:data:`TILED_GROUPS`);
#: 6 = rows run by tiles get tokenloom's RMS norms and SiLU too (:mod:`tokenloom.runtime.layerops`).
KERNELS_VERSION = 6

#: Most rows a :class:`TiledLinear` call takes; more (prompts: compute-bound) run the original.
TILED_MAX_ROWS = 64
#: Multiply-adds (rows x in x out) from which a :class:`TiledLinear` call splits its panels over
#: :func:`tiles_threads` threads; smaller calls run on one. The pool's idle workers spin ~1 ms
#: before they sleep, so handing a call to them costs ~2 us (measured on the 2-core Intel Xeon,
#: AVX-512: a 64 x 64 call 0.7 us on one thread, 1.8 us on two), and one core alone streams the
#: weights at about half the machine's bandwidth there (all linears of one step of the embedded
#: model, one row: 46 ms on one thread, 27 ms on two). Every linear of the embedded model splits,
#: even at one row (its smallest, 192 x 576, is 110k). (With the earlier pool, whose workers
#: slept between calls, a wake-up cost ~0.1 ms and only calls of 8M multiply-adds split.)
TILED_SPLIT_WORK = 1 << 16

#: Sibling linears (child names of one module) that read the same input: where a module has all
#: of a group as float32 / bfloat16 CPU linears of one dtype and input size, their tiles are
#: packed as ONE weight ([sum of N, K]; each linear a column view of it, no second copy:
#: ``tokenloom._core.TiledLinear.columns``), and a step forward runs the group in one call
#: (:func:`group_step`). Bit for bit the separate calls' outputs; one call streams the same
#: bytes with one hand-off to the threads instead of three (q / k / v) or two (gate / up).
#: Measured on the 2-core Intel Xeon (AMX, bfloat16, the embedded model, 200 cached tokens,
#: 6 interleaved rounds, ``benches/experiments/step_switches.py --switch grouped``): a 1 / 17-token step 45.7 /
#: 62.6 -> 43.6 / 60.1 ms (with the lean forward's joint q / k rotation).
TILED_GROUPS: Tuple[Tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))

# nn.Linear -> {kernel: (weight storage pointer, weight version, its swapped-in module)}
_CACHE: "weakref.WeakKeyDictionary[Any, Dict[str, Tuple[int, int, Any]]]" = weakref.WeakKeyDictionary()
# model -> [(weak ref to the parent module, child name, weak ref to the nn.Linear)]: where the
# packable linears sit (weakly: the model is lm_head's parent, and a value must not keep its key alive)
_PLANS: "weakref.WeakKeyDictionary[Any, List[Tuple[Any, str, Any]]]" = weakref.WeakKeyDictionary()
# nn.Linear -> (a weak reference to its parent module, the TILED_GROUPS names it is one of)
_MEMBERS: "weakref.WeakKeyDictionary[Any, Tuple[Any, Tuple[str, ...]]]" = weakref.WeakKeyDictionary()
_GROUPED = [True]
# models inside a packed_linears block -> the kernel they run with
_ACTIVE: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
_AVAILABLE: Dict[str, bool] = {}
_THREADS: Dict[str, int] = {}
# While a pack="tiles" block runs: {"saved": torch's intra-op threads before it, "depth": open
# blocks}; torch runs on one thread meanwhile (see packed_linears)
_TORCH: Dict[str, int] = {}
# (dtype, in, out, threads) -> whether tiles in chunks of TILED_MAX_ROWS rows measured faster than
# the original linear on inputs of more rows (see TiledLinear); "forced": set_long_rows's value
_LONG: Dict[Any, bool] = {}
#: Interleaved rounds of the long-input measurement (median of each side).
LONG_ROWS_REPEATS = 3


def pack_available(dtype: Any = None) -> bool:
    """True when this torch build has the oneDNN packed-linear ops and they run here for weights
    of ``dtype`` (float32 when None). bfloat16 counts only where oneDNN has a native bfloat16
    path (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``: AVX-512 CPUs, AMX / AVX512-BF16 ones
    fastest); elsewhere its bfloat16 matmul is an emulation that no tree step would choose."""
    import torch

    dtype = torch.float32 if dtype is None else dtype
    key = "ok" if dtype == torch.float32 else f"ok-{dtype}"
    if key in _AVAILABLE:
        return _AVAILABLE[key]
    # (atol, rtol) of the probe against the float32 product of the same values
    tol = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2)}.get(dtype)
    ok = False
    try:
        if tol is not None and torch.backends.mkldnn.is_available() and (
            dtype == torch.float32 or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        ):
            w = torch.randn(8, 4).to(dtype)
            x = torch.randn(3, 4).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            want = x.float() @ w.float().t()
            ok = y.dtype == dtype and bool(torch.allclose(y.float(), want, atol=tol[0], rtol=tol[1]))
    except Exception:  # noqa: BLE001 - any failure means "not available"
        ok = False
    _AVAILABLE[key] = ok
    return ok


def tiles_amx() -> bool:
    """Whether bfloat16 :class:`TiledLinear` layers built now use the AMX kernel
    (``tokenloom._core.TiledLinear(..., amx=True)``): where the CPU and OS run AMX-BF16, unless
    the environment sets ``TOKENLOOM_TILES_AMX=0`` (read when a layer is built).

    Why AMX by default where it exists: measured on the 2-core Intel Xeon (Sapphire Rapids
    class, AMX), all linears of one step of the embedded model in bfloat16 on 2 threads
    (``cargo test -p tokenloom-core --release -- --ignored --nocapture step_timing`` with
    ``BF16=1`` / ``AMX=1``): 1 / 9 / 17 / 33 rows took 11.8 / 16.1 / 22.8 / 38.4 ms with the
    AVX-512 kernel (each weight widened to float32, FMA-bound past ~8 rows) and 11.0 / 11.8 /
    14.6 / 20.5 ms with AMX tiles. The AMX sums are not bit-equal to the other kernels' (the
    hardware's order), but every row depends on its own input row alone, as tree steps need."""
    import os

    if os.environ.get("TOKENLOOM_TILES_AMX", "").strip() == "0":
        return False
    try:
        from tokenloom import _core

        return bool(_core.amx_available())
    except Exception:  # noqa: BLE001 - an older extension: no AMX kernel
        return False


def tiles_available() -> bool:
    """True when the compiled extension has :class:`TiledLinear`'s kernel and it agrees with
    ``torch.nn.functional.linear`` on a small product here."""
    if "tiles" in _AVAILABLE:
        return _AVAILABLE["tiles"]
    ok = False
    try:
        import torch

        from tokenloom import _core

        w, x = torch.randn(20, 7), torch.randn(3, 7)
        y = torch.from_numpy(_core.TiledLinear(w.numpy()).forward(x.numpy(), 1))
        ok = bool(torch.allclose(y, x @ w.t(), atol=1e-5, rtol=1e-4))
    except Exception:  # noqa: BLE001 - any failure means "not available"
        ok = False
    _AVAILABLE["tiles"] = ok
    return ok


def set_tiles_threads(threads: Optional[int]) -> None:
    """Threads of every :class:`TiledLinear` call (they split the weight panels; workers of a
    persistent pool that spin briefly, then sleep, between calls): an int in [1, 64], or None for
    the default, ``torch.get_num_threads()`` at call time (inside a ``pack="tiles"`` block, where torch itself
    runs on one thread, the count it had before the block).

    Measured on the shared 2-core AMD reference machine (one pass over the embedded model's 30
    layers of linear shapes, float32; 1 vs 2 threads): at load ~1.7, 28.1 / 33.5 / 49.4 / 85.8 ms
    vs 29.2 / 34.7 / 44.2 / 59.6 ms for M = 1 / 9 / 17 / 33 rows (a second core helps where the
    rows make it compute-bound); at load ~1.2 a second thread was no faster (27.4 / 32.3 / 51.2 /
    85.7 vs 28.7 / 35.9 / 51.5 / 92.4 ms). So the default follows torch's thread count; where
    the cores are busy, ``set_tiles_threads(1)``, then ``tokenloom calibrate``."""
    if threads is None:
        _THREADS.pop("n", None)
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
        raise ValueError(f"set_tiles_threads: expected an int in [1, 64] or None, got {threads!r}")
    _THREADS["n"] = threads


def tiles_threads() -> int:
    """The threads a :class:`TiledLinear` call uses now (:func:`set_tiles_threads`)."""
    if "n" in _THREADS:
        return _THREADS["n"]
    if "saved" in _TORCH:  # inside a tiles block: the threads torch had before it
        return max(1, min(64, _TORCH["saved"]))
    import torch

    return max(1, min(64, int(torch.get_num_threads())))


def packed_rows(m: int) -> int:
    """The row count an input of ``m`` rows runs with: the smallest of :data:`PACKED_ROW_SIZES`
    that holds it, or 0 when ``m`` is 0 or exceeds them all (the caller then runs the original,
    unpacked linear)."""
    if m <= 32:
        return m
    if m <= PACKED_ROW_SIZES[-1]:
        return -(-m // 8) * 8
    return 0


def step_call(mod: Any) -> Any:
    """The callable a step forward runs ``mod`` with: a swapped linear's ``step`` (its per-call
    checks made once by the caller: CPU, not forced to the accelerator path, grad off), else
    ``mod`` itself."""
    return mod.step if type(mod) in _STEP_TYPES else mod


class PackedLinear(module_base()):  # type: ignore[misc]
    """Drop-in for a float32 or bfloat16 CPU ``nn.Linear`` (inference only): input [...,
    in_features] -> output [..., out_features] (the weight's dtype) through oneDNN with a
    pre-reordered weight (bfloat16 only where :func:`pack_available` says oneDNN runs it
    natively: AMX / AVX512-BF16 tile kernels, float32 accumulation)."""

    def __init__(self, original: Any, packed: Any):
        super().__init__()
        self.original = WeakOriginal(original)  # not a submodule (no double params), held weakly
        self.in_features = int(original.in_features)
        self.out_features = int(original.out_features)
        self.packed_weight = packed
        self.dtype = original.weight.dtype
        self.bias = None if original.bias is None else original.bias.detach()

    @property
    def weight(self) -> Any:  # code that reads ``.weight`` (e.g. tied embeddings) sees the original
        return self.original[0].weight

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if is_accelerator(x) or torch.is_grad_enabled():
            return self.original[0](x)
        return self.step(x)

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        """:meth:`forward` without its per-call checks, for a caller that made them once per
        step (:mod:`tokenloom.runtime.leanforward`): ``x`` on the CPU, the accelerator branches
        not forced, grad mode off. Inputs of another dtype than the weight's still go to the
        original linear."""
        import torch

        if x.dtype != self.dtype:
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


class _Swapped(module_base()):  # type: ignore[misc]
    """What a swapped-in linear shares: the original module (in a list: not registered as a
    submodule, no double params), its sizes, and its ``weight`` / ``bias`` as the original's
    (code that reads them, e.g. tied embeddings, sees the original)."""

    def __init__(self, original: Any):
        super().__init__()
        self.original = WeakOriginal(original)
        self.in_features = int(original.in_features)
        self.out_features = int(original.out_features)

    @property
    def weight(self) -> Any:
        return self.original[0].weight

    @property
    def bias(self) -> Any:
        return self.original[0].bias


def set_long_rows(chunked: Optional[bool]) -> None:
    """Force how :class:`TiledLinear` runs inputs of more than :data:`TILED_MAX_ROWS` rows:
    True = tiles in chunks of that many rows, False = the original linear, None = measured per
    weight shape (the default; :func:`long_rows_choice`).

    Raises:
        ValueError: anything but True, False or None.
    """
    if chunked is not None and not isinstance(chunked, bool):
        raise ValueError(f"set_long_rows: expected True, False or None, got {chunked!r}")
    with _LOCK:
        if chunked is None:
            _LONG.pop("forced", None)
        else:
            _LONG["forced"] = chunked


def clear_long_rows() -> None:
    """Forget the measured long-input choices (and a forced one)."""
    with _LOCK:
        _LONG.clear()


def long_rows_choices() -> Dict[str, bool]:
    """What :func:`long_rows_choice` measured in this process: ``{"<dtype> <out>x<in>, <threads>
    threads": chunked}`` (True: prompts run as tiles in chunks for that weight shape)."""
    with _LOCK:
        return {f"{k[0].replace('torch.', '')} {k[2]}x{k[1]}, {k[3]} threads": v for k, v in _LONG.items() if k != "forced"}


def long_rows_choice(layer: "TiledLinear", x: "torch.Tensor", timer: Optional[Callable[[], float]] = None) -> bool:
    """Whether ``layer`` runs ``x`` (more than :data:`TILED_MAX_ROWS` rows) faster as tiles in
    chunks of :data:`TILED_MAX_ROWS` rows than through its original linear.

    Measured once per (dtype, in_features, out_features, threads) on the first such input
    (:data:`LONG_ROWS_REPEATS` interleaved rounds, medians), then cached in the process: a
    prompt's prefill is compute-bound, and which of the two is faster depends on the machine
    (bfloat16 without AVX512-BF16 / AMX: torch's own bfloat16 GEMM is slow and the tiles win
    about 3x on the embedded model's prefill; float32 MKL or oneDNN with AMX win there).
    ``timer``: a clock for tests (default ``time.perf_counter``)."""
    import time

    forced = _LONG.get("forced")
    if forced is not None:
        return forced
    key = (str(layer.dtype), layer.in_features, layer.out_features, tiles_threads())
    got = _LONG.get(key)
    if got is not None:
        return got
    clock = timer or time.perf_counter
    rows = x.reshape(-1, layer.in_features)
    orig = layer.original[0]
    seconds: Dict[bool, List[float]] = {True: [], False: []}
    for _ in range(LONG_ROWS_REPEATS):
        for chunked in (False, True):
            t0 = clock()
            if chunked:
                layer.chunks(rows)
            else:
                with torch_threads_back():
                    orig(rows)
            seconds[chunked].append(clock() - t0)
    choice = sorted(seconds[True])[len(seconds[True]) // 2] < sorted(seconds[False])[len(seconds[False]) // 2]
    with _LOCK:
        _LONG[key] = choice
    return choice


def _tiles_call(tiled: Any, work: int, rows: "torch.Tensor") -> "torch.Tensor":
    """rows [m <= TILED_MAX_ROWS, in] (the weight's dtype) -> [m, out] through ``tiled`` (a
    ``tokenloom._core.TiledLinear`` of ``work`` multiply-adds per row)."""
    import torch

    m = int(rows.shape[0])
    # a second thread costs a hand-off (~2 us): only calls with enough work split
    threads = tiles_threads() if m * work >= TILED_SPLIT_WORK else 1
    if rows.dtype == torch.bfloat16 and tiled.bf16:
        # bfloat16 bits in and out: the kernel widens x and rounds y (nearest even, as
        # torch's .to(torch.bfloat16)), so no torch conversion runs on either side
        bits = tiled.forward(rows.contiguous().view(torch.int16).numpy(), threads)
        return torch.from_numpy(bits).view(torch.bfloat16)
    x = rows if rows.dtype == torch.float32 else rows.to(torch.float32)
    y = torch.from_numpy(tiled.forward(x.contiguous().numpy(), threads))
    return y if y.dtype == rows.dtype else y.to(rows.dtype)


class TiledGroup:
    """Sibling linears (:data:`TILED_GROUPS`) packed as one weight: ``tiled`` is the
    ``tokenloom._core.TiledLinear`` of their concatenated weights ([sum of ``sizes``, K]);
    each member :class:`TiledLinear` runs a column view of it (its ``group`` is this object,
    its ``group_index`` its place). :func:`group_step` runs them all in one call."""

    __slots__ = ("tiled", "dtype", "in_features", "sizes", "out_features", "work", "_weights")

    def __init__(self, tiled: Any, dtype: Any, sizes: Tuple[int, ...], weights: Sequence[Any] = ()):
        self.tiled = tiled
        self.dtype = dtype
        self.in_features = int(tiled.in_features)
        self.sizes = sizes
        self.out_features = int(sum(sizes))
        self.work = self.in_features * self.out_features
        # the members' weights it was packed from: (weak reference, storage pointer, version)
        self._weights = tuple((weakref.ref(w), w.data_ptr(), w._version) for w in weights)

    def current(self) -> bool:
        """Whether every member's weight is still the one packed (not edited, not replaced)."""
        for ref, ptr, version in self._weights:
            w = ref()
            if w is None or w.data_ptr() != ptr or w._version != version:
                return False
        return True

    def __repr__(self) -> str:
        return f"TiledGroup(sizes={self.sizes}, in_features={self.in_features}, kernel={self.tiled.kernel})"


class TiledLinear(_Swapped):
    """Drop-in for a float32 or bfloat16 CPU ``nn.Linear`` (inference only): input [...,
    in_features] -> output [..., out_features] through ``tokenloom._core.TiledLinear`` (the
    weight packed once, streamed once per call; float32 accumulation, the output in the input's
    dtype). Inputs of more than :data:`TILED_MAX_ROWS` rows (a prompt's prefill) run as tiles in
    chunks of that many rows where that measured faster than the original module for the
    weight's shape (:func:`long_rows_choice`), else the original module; grad mode, another
    dtype or an accelerator run the original module. A member of a :class:`TiledGroup` runs its
    columns of the group's weight (``group``, ``group_index``)."""

    group: Optional[TiledGroup] = None
    group_index = -1

    def __init__(self, original: Any, tiled: Any, group: Optional[TiledGroup] = None, index: int = -1):
        super().__init__(original)
        self.tiled = tiled
        self.dtype = original.weight.dtype
        self.work = self.in_features * self.out_features  # multiply-adds per row
        if group is not None:
            self.group, self.group_index = group, index

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        import torch

        if is_accelerator(x) or torch.is_grad_enabled():
            return self.original[0](x)
        return self.step(x)

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        """:meth:`forward` without its per-call checks (see :meth:`PackedLinear.step`)."""
        orig = self.original[0]
        if x.dtype != self.dtype:
            return orig(x)
        shape = x.shape
        m = x.numel() // self.in_features if shape and shape[-1] == self.in_features else -1
        if m <= 0:
            return orig(x)
        if m > TILED_MAX_ROWS:
            if not long_rows_choice(self, x):
                with torch_threads_back():
                    return orig(x)
            return self.chunks(x.reshape(m, self.in_features)).view(*shape[:-1], self.out_features)
        return self._tiles(x.reshape(m, self.in_features)).view(*shape[:-1], self.out_features)

    def _tiles(self, rows: "torch.Tensor") -> "torch.Tensor":
        """rows [m <= TILED_MAX_ROWS, in] (the layer's dtype) -> [m, out] through the kernel."""
        return _tiles_call(self.tiled, self.work, rows)

    def chunks(self, rows: "torch.Tensor") -> "torch.Tensor":
        """rows [m, in] (any m >= 1, the layer's dtype) -> [m, out]: the kernel over chunks of
        :data:`TILED_MAX_ROWS` rows (the weight streamed once per chunk)."""
        import torch

        parts = [self._tiles(rows[i : i + TILED_MAX_ROWS]) for i in range(0, int(rows.shape[0]), TILED_MAX_ROWS)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=tiles"


class TreeRowsLinear(_Swapped):
    """Drop-in for an ``nn.Linear`` (inference only) that runs one-row inputs through ``one``
    (None: the original module) and inputs of 2 rows or more through ``fast`` (a
    :class:`PackedLinear` or :class:`TiledLinear` of the same weight): the kernels of
    ``pack="packed-trees"`` / ``"tiles-trees"`` / ``"tiles-packed"`` (inside
    :func:`torch_on_one_thread`, the part that runs through torch gets torch's own thread count
    and a tiles part torch on one thread: switched when the row count changes, so once per
    step). Input [..., in_features] -> output [..., out_features]."""

    def __init__(self, original: Any, fast: Any, one: Any = None):
        super().__init__(original)
        self.fast = [fast]  # lists: the cached modules of the base kernels, not submodules
        self.one = WeakOriginal(original) if one is None else [one]

    def _pick(self, x: "torch.Tensor") -> Any:
        rows = x.numel() // max(int(x.shape[-1]), 1) if x.dim() else 0
        mod = self.one[0] if rows <= 1 else self.fast[0]
        _rows_threads(not isinstance(mod, TiledLinear))
        return mod

    def forward(self, x: "torch.Tensor") -> "torch.Tensor":
        return self._pick(x)(x)

    def step(self, x: "torch.Tensor") -> "torch.Tensor":
        """:meth:`forward` without the kernels' per-call checks (see :meth:`PackedLinear.step`)."""
        mod = self._pick(x)
        return mod.step(x) if mod is not self.original[0] else mod(x)

    def extra_repr(self) -> str:
        one = "as loaded" if self.one[0] is self.original[0] else self.one[0].extra_repr()
        return f"in_features={self.in_features}, out_features={self.out_features}, one row: {one}, more: {self.fast[0].extra_repr()}"


#: The swapped linears that have a ``step`` (see :func:`step_call`).
_STEP_TYPES = (PackedLinear, TiledLinear, TreeRowsLinear)


def group_step(mods: Sequence[Any], x: "torch.Tensor") -> Optional["torch.Tensor"]:
    """The outputs of sibling linears ``mods`` on the same input ``x`` [..., K] from ONE call of
    their shared weight, side by side: [..., sum N_i], columns ``sum N_<i`` to ``sum N_<=i``
    bit for bit what ``mods[i]`` returns. Only where the modules that would run ``x`` (a
    :class:`TreeRowsLinear` picks by the row count) are the members of one :class:`TiledGroup`,
    in its order, and x has their dtype and 1 to :data:`TILED_MAX_ROWS` rows; else None (the
    caller runs them one by one). For a step forward, like :func:`step_call` (CPU, grad off,
    checked once by the caller)."""
    picked = []
    for mod in mods:
        if type(mod) is TreeRowsLinear:
            mod = mod._pick(x)
        if type(mod) is not TiledLinear:
            return None
        picked.append(mod)
    group = picked[0].group if picked else None
    if group is None or len(picked) != len(group.sizes):
        return None
    if any(mod.group is not group or mod.group_index != i for i, mod in enumerate(picked)):
        return None
    shape = x.shape
    if x.dtype != group.dtype or not shape or shape[-1] != group.in_features:
        return None
    m = x.numel() // group.in_features
    if not 1 <= m <= TILED_MAX_ROWS:
        return None
    return _tiles_call(group.tiled, group.work, x.reshape(m, group.in_features)).view(*shape[:-1], group.out_features)


def _linear_ok(mod: Any) -> bool:
    """A plain CPU ``nn.Linear`` with a float32 or bfloat16 2-D weight (what some kernel takes)."""
    import torch

    if type(mod) is not torch.nn.Linear:
        return False
    w = mod.weight
    return w.dtype in (torch.float32, torch.bfloat16) and not is_accelerator(w) and w.dim() == 2


def _takes(kernel: str, mod: Any) -> bool:
    """Whether ``kernel`` can run ``mod`` (oneDNN: float32 weights, and bfloat16 ones where
    :func:`pack_available` says oneDNN runs bfloat16 natively)."""
    import torch

    dtype = mod.weight.dtype
    return kernel == "tiles" or dtype == torch.float32 or (dtype == torch.bfloat16 and pack_available(dtype))


def _build(kernel: str, mod: Any) -> Any:
    import torch

    if kernel in TREE_KERNELS:  # shares the cached modules (and packed weights) of its base kernels
        one, trees = kernel_parts(kernel)
        return TreeRowsLinear(mod, _packed_module(mod, trees), None if one == "unpacked" else _packed_module(mod, one))

    w = mod.weight.detach()
    if kernel == "packed":
        return PackedLinear(mod, torch.ops.mkldnn._reorder_linear_weight(w.contiguous(), None))
    member = _MEMBERS.get(mod) if _GROUPED[0] else None
    parent = member[0]() if member is not None else None
    if parent is not None:
        built = _build_group(parent, member[1], mod)
        if built is not None:
            return built
    return TiledLinear(mod, _tiles_weight(w, mod.bias))


def _tiles_weight(w: "torch.Tensor", bias: Any) -> Any:
    """``tokenloom._core.TiledLinear`` of weight ``w`` [N, K] (float32 or bfloat16) and ``bias``."""
    import torch

    from tokenloom import _core

    b = None if bias is None else bias.detach().to(torch.float32).contiguous().numpy()
    if w.dtype == torch.bfloat16:
        return _core.TiledLinear(w.contiguous().view(torch.int16).numpy(), b, bf16=True, amx=tiles_amx())
    return _core.TiledLinear(w.contiguous().numpy(), b)


def _groupable(mods: Sequence[Any]) -> bool:
    """Whether linears ``mods`` can be one :class:`TiledGroup`: one dtype and input size, biases
    on all or none, each member but the last ending on a panel (16 columns: a column view's
    start)."""
    first = mods[0].weight
    return (
        len({id(m) for m in mods}) == len(mods)
        and all(m.weight.dtype == first.dtype and m.weight.shape[1] == first.shape[1] for m in mods)
        and len({m.bias is None for m in mods}) == 1
        and all(m.weight.shape[0] % 16 == 0 for m in mods[:-1])
    )


def _build_group(parent: Any, names: Tuple[str, ...], mod: Any) -> Optional["TiledLinear"]:
    """Packs the linears ``names`` of ``parent`` as one :class:`TiledGroup`, caches every
    member's module (:data:`_CACHE`, "tiles") and returns ``mod``'s; None where they no longer
    are a group (the caller packs ``mod`` alone)."""
    import torch

    # the linears themselves (a member already swapped in, within the block, by its original)
    mods = [parent._modules.get(n) for n in names]
    mods = [m.original[0] if isinstance(m, (_Swapped, PackedLinear)) else m for m in mods]
    if mod not in mods or not all(m is not None and _linear_ok(m) for m in mods) or not _groupable(mods):
        return None
    weights = [m.weight.detach() for m in mods]
    bias = None if mods[0].bias is None else torch.cat([m.bias.detach() for m in mods])
    tiled = _tiles_weight(torch.cat(weights), bias)
    group = TiledGroup(tiled, weights[0].dtype, tuple(int(w.shape[0]) for w in weights), [m.weight for m in mods])
    start, mine = 0, None
    for i, (m, w) in enumerate(zip(mods, weights)):
        end = start + int(w.shape[0])
        built = TiledLinear(m, tiled.columns(start, end), group, i)
        with _LOCK:
            _CACHE.setdefault(m, {})["tiles"] = (w.data_ptr(), w._version, built)
        if m is mod:
            mine = built
        start = end
    return mine


def set_grouped(enabled: bool) -> None:
    """Pack the :data:`TILED_GROUPS` of a model's tiles as one weight each (True, the default)
    or every linear alone (False: e.g. to time both). Frees the packed weights
    (:func:`clear_packed`): the next packed run packs them the new way.

    Raises:
        TypeError: ``enabled`` not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"set_grouped: expected a bool, got {type(enabled).__name__}")
    _GROUPED[0] = enabled
    clear_packed()


def grouped() -> bool:
    """Whether tiles groups are packed as one weight (:func:`set_grouped`)."""
    return _GROUPED[0]


def _groups_current(module: Any) -> bool:
    """Whether the :class:`TiledGroup` of a cached module (or of its parts) still holds its
    members' current weights (an edited sibling repacks the whole group)."""
    parts = (module.fast[0], module.one[0]) if isinstance(module, TreeRowsLinear) else (module,)
    return all(p.group.current() for p in parts if isinstance(p, TiledLinear) and p.group is not None)


def _packed_module(mod: Any, kernel: str = "packed") -> Any:
    """The cached swapped-in module of ``mod`` for ``kernel``, rebuilt when its weight changed."""
    w = mod.weight.detach()
    key_ptr, key_ver = w.data_ptr(), w._version
    with _LOCK:
        hit = _CACHE.get(mod, {}).get(kernel)
    if hit is not None and hit[0] == key_ptr and hit[1] == key_ver and _groups_current(hit[2]):
        return hit[2]
    packed = _build(kernel, mod)
    with _LOCK:
        _CACHE.setdefault(mod, {})[kernel] = (key_ptr, key_ver, packed)
    return packed


def _plan(model: Any) -> List[Tuple[Any, str, Any]]:
    """(parent, name, linear) of every float32 / bfloat16 CPU linear of ``model`` (cached; re-scanned when the
    model's structure, a linear's dtype or its device changed; a linear added to a model
    already planned is only seen after :func:`clear_packed`). An empty plan is not cached: a
    model moved back to the CPU (or run outside a forced accelerator path) is scanned again."""
    weak = _PLANS.get(model)
    if weak is not None:
        plan = [(p(), name, c()) for p, name, c in weak]
        if all(parent is not None and child is not None and parent._modules.get(name) is child and _linear_ok(child)
               for parent, name, child in plan):
            return plan
    plan = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if _linear_ok(child)
    ]
    if plan:
        _PLANS[model] = [(weakref.ref(parent), name, weakref.ref(child)) for parent, name, child in plan]
        _register_groups(plan)
    else:
        _PLANS.pop(model, None)
    return plan


def _register_groups(plan: List[Tuple[Any, str, Any]]) -> None:
    """Notes (:data:`_MEMBERS`) the linears of ``plan`` that form a :data:`TILED_GROUPS` group."""
    children: Dict[int, Tuple[Any, Dict[str, Any]]] = {}
    for parent, name, child in plan:
        children.setdefault(id(parent), (parent, {}))[1][name] = child
    for parent, named in children.values():
        for names in TILED_GROUPS:
            mods = [named.get(n) for n in names]
            if all(m is not None for m in mods) and _groupable(mods):
                with _LOCK:
                    for m in mods:  # the parent weakly: a value must not keep its key alive
                        _MEMBERS[m] = (weakref.ref(parent), names)


_PACK_VALUES = ("auto", "tiles", "packed-trees", "tiles-trees", "tiles-packed")


def _resolve_plan(model: Any, pack: Union[bool, str]) -> Tuple[str, List[Tuple[Any, str, Any]]]:
    """(kernel, the linears to swap) for ``pack`` = True / ``"auto"`` / ``"tiles"`` / False;
    an empty list: run as loaded. ``"auto"`` here means oneDNN when possible (the measured
    choice among kernels is :func:`tokenloom.spec.calibration.auto_pack`'s)."""
    if pack is False or pack is None:
        return "unpacked", []
    if pack is not True and pack not in _PACK_VALUES:
        raise ValueError(f"pack: expected True, False, 'auto', 'tiles', 'packed-trees', 'tiles-trees' or 'tiles-packed', got {pack!r}")
    kernel = "packed" if pack is True or pack == "auto" else str(pack)
    bases = {k for k in kernel_parts(kernel) if k != "unpacked"}
    base = "packed" if "packed" in bases else "tiles"  # what an error names: oneDNN's needs first
    plan = _plan(model) if isinstance(model, module_base()) else []
    plan = [entry for entry in plan if all(_takes(b, entry[2]) for b in bases)]
    works = all(tiles_available() if b == "tiles" else pack_available() for b in bases)
    if pack == "auto":
        return ("packed", plan) if plan and works else ("unpacked", [])
    what = "pack=True" if pack is True else f"pack={pack!r}"
    if not works:
        raise ValueError(f"{what}: this torch build has no working oneDNN packed linear (torch.ops.mkldnn)" if base == "packed"
                         else f"{what}: the compiled extension's TiledLinear kernel is missing or wrong here")
    if not plan:
        raise ValueError(f"{what}: the model has no float32 CPU nn.Linear layers to pack (bfloat16 ones need a CPU "
                         "where oneDNN runs bfloat16 natively: AVX-512, best with AVX512-BF16 or AMX)" if base == "packed"
                         else f"{what}: the model has no float32 or bfloat16 CPU nn.Linear layers")
    return kernel, plan


def resolve_pack(model: Any, pack: Union[bool, str]) -> bool:
    """Decide whether packing is possible: ``"auto"`` when the model has float32 CPU linears and
    the oneDNN ops work; ``True`` insists (ValueError when impossible); ``"tiles"`` insists on
    :class:`TiledLinear` (float32 or bfloat16 CPU linears); ``False`` never packs.
    Whether packing is *faster* here is measured above this layer:
    ``tokenloom.generate(..., pack="auto")`` packs only where
    :func:`tokenloom.spec.calibration.choose_pack` measured it faster."""
    return resolve_kernel(model, pack) != "unpacked"


def resolve_kernel(model: Any, pack: Union[bool, str]) -> str:
    """The kernel name (a key of :data:`PACK_KERNELS`) a :func:`packed_linears` block with
    ``pack`` runs: inside a block already, the block's kernel; else as :func:`resolve_pack`.

    Raises:
        ValueError: a ``pack`` of another value; ``True`` / ``"tiles"`` where impossible.
    """
    if (pack is True or pack in _PACK_VALUES) and is_packed(model):
        return active_kernel(model)
    return _resolve_plan(model, pack)[0]


def available_kernels(model: Any) -> List[str]:
    """The kernels ``model`` can run with here, ``"unpacked"`` first: oneDNN where it has float32
    CPU linears (or bfloat16 ones and oneDNN runs bfloat16 natively) and the ops work, tiles
    where it has float32 / bfloat16 CPU linears and the kernel works."""
    kernels = ["unpacked"]
    for kernel in ("packed", "tiles"):
        try:
            if _resolve_plan(model, PACK_KERNELS[kernel])[1]:
                kernels.append(kernel)
        except ValueError:
            pass
    return kernels


def row_invariant_pack(model: Any) -> Union[bool, str]:
    """The ``pack`` value whose linears give every row the same result whatever the row count
    (what a bit-exact tree step needs, :func:`tokenloom.runtime.gqa.exact_rows`): ``"tiles"``
    where it runs the model (each output is the same sequential sum for any M), else False
    (the model as loaded: torch's kernels, not guaranteed)."""
    return "tiles" if "tiles" in available_kernels(model) else False


def pack_value(kernel: str) -> Union[bool, str]:
    """The ``pack`` value that selects ``kernel`` (:data:`PACK_KERNELS`).

    Raises:
        ValueError: an unknown kernel name.
    """
    if kernel not in PACK_KERNELS:
        raise ValueError(f"kernel: expected one of {tuple(PACK_KERNELS)}, got {kernel!r}")
    return PACK_KERNELS[kernel]


def active_kernel(model: Any) -> str:
    """The kernel of the :func:`packed_linears` block ``model`` is in, else ``"unpacked"``."""
    try:
        return _ACTIVE.get(model, "unpacked")
    except TypeError:
        return "unpacked"


def is_packed(model: Any) -> bool:
    """True inside a :func:`packed_linears` block of ``model`` (any kernel but "unpacked")."""
    try:
        return model in _ACTIVE
    except TypeError:
        return False


@contextlib.contextmanager
def torch_on_one_thread() -> Iterator[None]:
    """Within the block torch's intra-op threads are 1 and :class:`TiledLinear` calls split over
    the count torch had (:func:`tiles_threads`); restored when the outermost such block exits.

    Why: the tiles pool and torch's OpenMP team are two sets of threads on the same cores; each
    spins a while after its work before it sleeps, so on a 2-core machine they take the cores
    from each other between a step's ~200 linears and its small torch operations. Measured on
    the 2-core Intel Xeon (AVX-512, float32, the embedded model, 200 cached tokens, medians of
    5): a 1 / 9 / 17-token step in tiles cost 73.0 / 85.2 / 106.3 ms with torch on 2 threads and
    39.8 / 59.7 / 70.0 ms with torch on one (as loaded, torch on 2 threads: 40.2 / 76.1 /
    82.7 ms). A step's non-linear operations are small enough that one thread runs them as fast.
    """
    import torch

    with _LOCK:
        depth = _TORCH.get("depth", 0)
        if depth == 0:
            _TORCH["saved"] = int(torch.get_num_threads())
            if _TORCH["saved"] > 1:
                torch.set_num_threads(1)
        _TORCH["depth"] = depth + 1
    try:
        yield
    finally:
        with _LOCK:
            _TORCH["depth"] -= 1
            if _TORCH["depth"] == 0:
                saved = _TORCH.pop("saved")
                del _TORCH["depth"]
                if saved > 1:
                    torch.set_num_threads(saved)


@contextlib.contextmanager
def torch_threads_back() -> Iterator[None]:
    """Inside :func:`torch_on_one_thread`: torch's own thread count again for the block (a
    prompt's long linears through the original module: compute-bound, they need every core);
    elsewhere a no-op."""
    import torch

    saved = _TORCH.get("saved", 1)
    if saved <= 1 or int(torch.get_num_threads()) != 1:
        yield
        return
    torch.set_num_threads(saved)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def _rows_threads(torch_runs: bool) -> None:
    """Inside :func:`torch_on_one_thread`: torch's own thread count when torch runs the linear
    (the original module, oneDNN), one thread when the tiles pool runs it; set only on a change
    (a row-split linear changes kernel once per step, with the row count). (Switching per
    linear call instead cost ~6 ms per one-token step on the 2-core Xeon: OpenMP rebuilds its
    team each time.)"""
    saved = _TORCH.get("saved", 1)
    if saved <= 1:
        return
    import torch

    want = saved if torch_runs else 1
    if int(torch.get_num_threads()) != want:
        torch.set_num_threads(want)


@contextlib.contextmanager
def packed_linears(model: Any, enabled: Union[bool, str] = True) -> Iterator[Any]:
    """``with packed_linears(model): ...`` runs ``model`` with packed linears; restores the
    original modules on exit (also on error). Nested use is a no-op. Yields ``model``. The one
    swapper of every kernel of :data:`PACK_KERNELS` (a tiles kernel swaps the RMS norms and
    SiLU activations too, for the rows it runs as tiles: :mod:`tokenloom.runtime.layerops`).

    Args:
        model: a torch module (an HF causal LM).
        enabled: True (oneDNN; raise if impossible), ``"tiles"`` (:class:`TiledLinear`; raise if
            impossible), ``"auto"`` (oneDNN when possible) or False.
    """
    kernel, plan = ("unpacked", []) if is_packed(model) else _resolve_plan(model, enabled)
    if not plan:
        yield model
        return
    swapped: List[Tuple[Any, str, Any]] = []
    parts = kernel_parts(kernel)
    tiles = "tiles" in parts
    try:
        for parent, name, child in plan:
            parent._modules[name] = _packed_module(child, kernel)
            swapped.append((parent, name, child))
        # the rows tokenloom's tiles run get tokenloom's norms and activations too (one call
        # each, fused with the residual add / the up product); rows a kernel runs through torch
        # (tiles-trees' one row, tiles-packed's more rows) keep transformers': each part stays
        # its base kernel's bits
        if tiles:
            from tokenloom.runtime import layerops

            for parent, name, child in layerops.layer_plan(model):
                parent._modules[name] = layerops.swapped_module(child, parts[0] == "tiles", parts[1] == "tiles")
                swapped.append((parent, name, child))
        _ACTIVE[model] = kernel
        # tiles: torch's own threads step aside for the tiles pool (see torch_on_one_thread);
        # a row-split kernel gives them back to its torch-run part (TreeRowsLinear)
        with torch_on_one_thread() if tiles else contextlib.nullcontext():
            yield model
    finally:
        _ACTIVE.pop(model, None)
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


def clear_packed() -> None:
    """Free every cached packed weight (they are rebuilt on the next packed run)."""
    with _LOCK:
        _CACHE.clear()
        _PLANS.clear()
        _MEMBERS.clear()
    from tokenloom.runtime.layerops import clear_layer_kernels

    clear_layer_kernels()
