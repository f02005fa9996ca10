"""A decoder layer's non-linear parts at the embedded model's sizes (hidden 576, intermediate
1536, 9 query + 3 key heads of 64), 1 and 17 rows, float32 and bfloat16, torch on one thread
(as inside a tiles block): tokenloom's one-call kernels (``tokenloom.runtime.layerops``, the
lean forward's rotation) against the torch operations they replace (transformers' modules: the
anchor). Every row checks its result against the other side: the rotation bit for bit, the
norm and the activation within float32 rounding (bfloat16: one ulp)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenloom.runtime import leanforward as lf  # noqa: E402
from tokenloom.runtime.layerops import TiledRMSNorm, TiledSiLU  # noqa: E402

H, INTER, HEADS, D = 576, 1536, 12, 64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _close(a, b, dtype):
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert torch.allclose(a.float(), b.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["tokenloom", "torch"])
def test_residual_add_and_norm(benchmark, rows, dtype, impl):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(rows)
    norm = LlamaRMSNorm(H, eps=1e-5).to(dt)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(H, generator=gen))
    fused = TiledRMSNorm(norm)
    x, d = (torch.randn(1, rows, H, generator=gen).to(dt) for _ in range(2))
    benchmark.group = f"residual add + RMS norm, {rows} rows, {dtype}"

    def theirs():
        s = x + d
        return s, norm(s)

    with torch.inference_mode():
        got = benchmark(lambda: fused.add_step(x, d)) if impl == "tokenloom" else benchmark(theirs)
        other = theirs() if impl == "tokenloom" else fused.add_step(x, d)
    assert torch.equal(got[0], other[0])
    _close(got[1], other[1], dt)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["tokenloom", "torch"])
def test_silu_times_up(benchmark, rows, dtype, impl):
    dt = getattr(torch, dtype)
    act = torch.nn.SiLU()
    fused = TiledSiLU(act)
    gate_up = (3 * torch.randn(1, rows, 2 * INTER, generator=torch.Generator().manual_seed(rows))).to(dt)
    benchmark.group = f"silu(gate) * up from [gate | up], {rows} rows, {dtype}"

    def theirs():
        return act(gate_up[..., :INTER].contiguous()) * gate_up[..., INTER:]

    with torch.inference_mode():
        got = benchmark(lambda: fused.mul_step(gate_up, INTER)) if impl == "tokenloom" else benchmark(theirs)
        other = theirs() if impl == "tokenloom" else fused.mul_step(gate_up, INTER)
    _close(got, other, dt)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["tokenloom", "torch"])
def test_rotary(benchmark, rows, dtype, impl):
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(rows)
    qkv = torch.randn(1, rows, (HEADS + 3) * D, generator=gen).to(dt)
    cos, sin = torch.randn(1, rows, D, generator=gen).to(dt), torch.randn(1, rows, D, generator=gen).to(dt)
    ssin = lf._signed_sin(sin)
    rows_cs = lf._rows_cos_sin(cos, ssin, qkv, 1, rows)
    benchmark.group = f"rotary of {HEADS} heads, {rows} rows, {dtype}"

    def theirs():
        heads = qkv.view(1, rows, -1, D).transpose(1, 2)
        return lf._rotate(heads[:, :HEADS], cos.unsqueeze(1), ssin.unsqueeze(1))

    def mine():
        return lf._rotate_rows(qkv, HEADS, D, rows_cs, 1, rows)

    got = benchmark(mine) if impl == "tokenloom" else benchmark(theirs)
    assert torch.equal(got, theirs() if impl == "tokenloom" else mine())
