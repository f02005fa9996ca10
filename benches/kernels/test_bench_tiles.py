"""The three CPU linear kernels on the embedded model's layer shapes: PyTorch's default
``nn.Linear`` (MKL), oneDNN pre-packed (``pack=True``) and tokenloom's tiles (``pack="tiles"``,
float32 and bfloat16 weights), at M = 1 and 17 rows. In bfloat16 also: PyTorch's own bfloat16
linear (``default-bf16``, the model as loaded: the anchor) and the AMX tiles kernel
(``tiles-bf16-amx``, bfloat16 rows in and out as ``TiledLinear`` calls it; skipped without
AMX; ``tiles-bf16-amx-grouped``: q / k / v and gate / up each packed as one weight and called
once, as a step runs them, ``cpupack.TILED_GROUPS``), against the AVX-512 / AVX2 tiles kernel on bfloat16 weights (``tiles-bf16``). One pass runs the 7 linears of all 30
layers with distinct weights (~425 MB in float32, far above the L3), so the weights come from
memory as in a real step; "tiles / default" and "tiles / onednn" per M are the ratios to read.

    python -m pytest benches/kernels/test_bench_tiles.py --benchmark-group-by=group
"""

from __future__ import annotations

import pytest

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]  # q k v o gate up down
LAYERS = 30


@pytest.fixture(scope="module")
def weights():
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, k, generator=gen) * 0.02 for _ in range(LAYERS) for n, k in SHAPES]


@pytest.mark.model
@pytest.mark.parametrize("kernel", ["default", "onednn", "tiles", "tiles-bf16", "default-bf16", "tiles-bf16-amx", "tiles-bf16-amx-grouped"])
@pytest.mark.parametrize("m", [1, 17])
def test_layer_pass(benchmark, weights, m, kernel):
    import torch

    from tokenloom import _core
    from tokenloom.runtime.cpupack import pack_available, tiles_available, tiles_threads

    if kernel == "onednn" and not pack_available():
        pytest.skip("no oneDNN packed linear in this torch build")
    if kernel.startswith("tiles") and not tiles_available():
        pytest.skip("no working TiledLinear in this build")
    if kernel.startswith("tiles-bf16-amx") and not _core.amx_available():
        pytest.skip("no AMX-BF16 on this CPU / OS")
    benchmark.group = f"30 layers of linears, M={m} rows"
    xs = {k: torch.randn(m, k) for k in (576, 1536)}
    if kernel == "default":
        calls = [lambda w=w: torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights]
    elif kernel == "default-bf16":
        xb = {k: x.to(torch.bfloat16) for k, x in xs.items()}
        calls = [lambda w=w: torch.nn.functional.linear(xb[w.shape[1]], w) for w in (w.to(torch.bfloat16) for w in weights)]
    elif kernel.startswith("tiles-bf16-amx"):
        threads = tiles_threads()
        bits = {k: x.to(torch.bfloat16).view(torch.int16).numpy() for k, x in xs.items()}
        packs = weights
        if kernel.endswith("grouped"):  # per layer: q k v as one, o, gate up as one, down
            layers = [weights[i : i + len(SHAPES)] for i in range(0, len(weights), len(SHAPES))]
            packs = [w for q, k, v, o, g, u, d in layers for w in (torch.cat([q, k, v]), o, torch.cat([g, u]), d)]
        tiled = [(_core.TiledLinear(w.to(torch.bfloat16).view(torch.int16).numpy(), bf16=True, amx=True), w.shape[1])
                 for w in packs]
        calls = [lambda t=t, k=k: t.forward(bits[k], threads) for t, k in tiled]
    elif kernel == "onednn":
        packed = [(torch.ops.mkldnn._reorder_linear_weight(w, None), w.shape[1]) for w in weights]
        calls = [lambda p=p, k=k: torch.ops.mkldnn._linear_pointwise(xs[k], p, None, "none", [], "") for p, k in packed]
    else:
        bf16, threads = kernel == "tiles-bf16", tiles_threads()
        tiled = [(_core.TiledLinear(w.to(torch.bfloat16).view(torch.int16).numpy(), bf16=True) if bf16
                  else _core.TiledLinear(w.numpy()), w.shape[1]) for w in weights]
        arrays = {k: x.numpy() for k, x in xs.items()}
        calls = [lambda t=t, k=k: t.forward(arrays[k], threads) for t, k in tiled]

    def one_pass():
        for call in calls:
            call()

    with torch.inference_mode():
        benchmark.pedantic(one_pass, rounds=8, iterations=1, warmup_rounds=2)


@pytest.mark.model
@pytest.mark.parametrize("path", ["original", "chunks"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("m", [128, 256])
def test_long_input(benchmark, m, dtype, path):
    """A prompt's prefill through one layer's 7 linears: the original ``nn.Linear`` against
    :class:`~tokenloom.runtime.cpupack.TiledLinear` in chunks of ``TILED_MAX_ROWS`` rows (what
    :func:`~tokenloom.runtime.cpupack.long_rows_choice` measures and picks between)."""
    import torch

    from tokenloom.runtime.cpupack import TiledLinear, tiles_available

    if not tiles_available():
        pytest.skip("no working TiledLinear in this build")
    from tokenloom import _core

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(m)
    layers = []
    for n, k in SHAPES:
        lin = torch.nn.Linear(k, n, bias=False).to(dt)
        w = lin.weight.detach()
        tiled = _core.TiledLinear(w.view(torch.int16).numpy(), bf16=True) if dt == torch.bfloat16 else _core.TiledLinear(w.numpy())
        # the linear stays referenced here: a TiledLinear holds the one it replaces weakly
        layers.append((TiledLinear(lin, tiled), torch.randn(m, k, generator=gen).to(dt), lin))
    benchmark.group = f"one layer's linears, {m} prompt rows, {dtype}"

    def one_pass():
        for layer, x, _ in layers:
            layer.chunks(x) if path == "chunks" else layer.original[0](x)

    with torch.inference_mode():
        benchmark.pedantic(one_pass, rounds=5, iterations=1, warmup_rounds=1)
