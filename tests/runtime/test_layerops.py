"""tokenloom's one-call layer kernels (tokenloom.runtime.layerops): the RMS norm
(tokenloom._core.RmsNorm) and the SiLU activation (tokenloom._core.silu / silu_mul) bit for bit
against short numpy references of their documented arithmetic, within float32 rounding of
transformers' modules, the fused residual add and gated product equal to torch's operations,
clear errors on bad input, and the swap into tiles blocks (in and out, per row-split part, the
originals' fallbacks, freed with the model)."""

from __future__ import annotations

import gc
import inspect
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tokenloom import _core  # noqa: E402
from tokenloom.runtime import layerops  # noqa: E402
from tokenloom.runtime.cpupack import packed_linears, tiles_available  # noqa: E402
from tokenloom.runtime.layerops import NORM_CLASSES, TiledRMSNorm, TiledSiLU, layer_plan, set_layer_kernels  # noqa: E402

from tests.conftest import make_tiny_llama  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not tiles_available(), reason="the compiled extension has no working TiledLinear"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _bf16(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 values (nearest even, through torch), as float32."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16).to(torch.float32).numpy()


def _reference(x: np.ndarray, w: np.ndarray, eps: float, bf16: bool) -> np.ndarray:
    """The documented arithmetic in numpy float32: squares summed in 16 lanes in order, the
    lanes added pairwise, r = 1 / sqrt(ss / H + eps), y = round(w * round(x * r))."""
    f = np.float32
    rnd = _bf16 if bf16 else (lambda a: a)
    rows, h = x.shape
    out = np.empty_like(x)
    for i in range(rows):
        acc = np.zeros(16, dtype=f)
        for j in range(h):
            acc[j % 16] = f(acc[j % 16] + f(x[i, j] * x[i, j]))
        width = 8
        while width:
            acc[:width] = acc[:width] + acc[width : 2 * width]
            width //= 2
        r = f(1.0) / np.sqrt(f(acc[0] / f(h)) + f(eps))
        out[i] = rnd(w * rnd(x[i] * r))
    return out


def _kernel_rows(norm, x: np.ndarray, bf16: bool) -> np.ndarray:
    if not bf16:
        return norm.forward(x)
    bits = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
    return torch.from_numpy(norm.forward(bits)).view(torch.bfloat16).to(torch.float32).numpy()


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("h", [1, 15, 16, 33, 576])
def test_the_kernel_equals_its_numpy_reference_bit_for_bit(bf16, h):
    rng = np.random.default_rng(h + 100 * bf16)
    w = (rng.normal(1.0, 0.3, h)).astype(np.float32)
    x = (rng.normal(0, 2.0, (3, h)) * rng.choice([1e-3, 1.0, 30.0], (3, 1))).astype(np.float32)
    if bf16:
        w, x = _bf16(w), _bf16(x)
    wk = torch.from_numpy(w).to(torch.bfloat16).view(torch.int16).numpy() if bf16 else w
    norm = _core.RmsNorm(wk, 1e-5, bf16=bf16)
    got = _kernel_rows(norm, x, bf16)
    np.testing.assert_array_equal(got, _reference(x, w, 1e-5, bf16))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_within_rounding_of_transformers_norm_and_the_add_is_torchs(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(5)
    ref = LlamaRMSNorm(576, eps=1e-5).to(dt)
    with torch.no_grad():
        ref.weight.copy_(1 + 0.3 * torch.randn(576, generator=gen))
    swapped = TiledRMSNorm(ref)
    x = (3 * torch.randn(2, 7, 576, generator=gen)).to(dt)
    d = torch.randn(2, 7, 576, generator=gen).to(dt)
    with torch.inference_mode():
        want = ref(x).float()
        got = swapped(x)
        assert got.dtype == dt and got.shape == x.shape
        tol = 1e-5 if dtype == "float32" else 1e-2  # a flipped bfloat16 rounding is one ulp
        assert torch.allclose(got.float(), want, rtol=tol, atol=tol)
        s, y = swapped.add_step(x, d)
        assert torch.equal(s, x + d)  # bit for bit
        assert torch.equal(y, swapped(x + d))
        # shapes the fused call does not take: the add and the norm apart, same result
        s2, y2 = swapped.add_step(x, d[:, :1].expand_as(x))
        assert torch.equal(s2, x + d[:, :1]) and torch.equal(y2, swapped(s2))


def test_fallbacks_run_the_original_module():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = LlamaRMSNorm(64, eps=1e-6)
    swapped = TiledRMSNorm(ref)
    x = torch.randn(3, 64, requires_grad=True)
    y = swapped(x)  # grad mode: the original (differentiable)
    assert y.requires_grad and torch.equal(y, ref(x))
    with torch.inference_mode():
        other = torch.randn(3, 64, dtype=torch.float64)
        assert torch.equal(swapped(other), ref(other))  # another dtype
        narrow = torch.randn(3, 32)
        with pytest.raises(RuntimeError):  # another width: the original's own error
            swapped(narrow)
        assert swapped(torch.randn(0, 64)).shape == (0, 64)


def test_bad_input_is_a_clear_error():
    norm = _core.RmsNorm(np.ones(8, np.float32), 1e-5)
    with pytest.raises(ValueError, match="columns"):
        norm.forward(np.ones((2, 7), np.float32))
    with pytest.raises(ValueError, match="at least one row"):
        norm.forward(np.ones((0, 8), np.float32))
    with pytest.raises(ValueError, match="float32 weight"):
        norm.forward(np.ones((1, 8), np.int16))
    with pytest.raises(ValueError, match="2-D"):
        norm.forward(np.ones(8, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        norm.forward(np.ones((1, 8), np.float64))
    with pytest.raises(ValueError, match="delta"):
        norm.add_forward(np.ones((2, 8), np.float32), np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="eps"):
        _core.RmsNorm(np.ones(8, np.float32), float("nan"))
    with pytest.raises(ValueError, match="weight"):
        _core.RmsNorm(np.ones(0, np.float32), 1e-5)
    with pytest.raises(ValueError, match="1-D"):
        _core.RmsNorm(np.ones((2, 4), np.float32), 1e-5)
    with pytest.raises(ValueError, match="bfloat16 bits"):
        _core.RmsNorm(np.ones(8, np.float32), 1e-5, bf16=True)
    bf = _core.RmsNorm(np.ones(8, np.int16), 1e-5, bf16=True)
    assert bf.bf16 and bf.hidden_size == 8
    with pytest.raises(ValueError, match="bfloat16"):
        bf.forward(np.ones((1, 8), np.float32))
    with pytest.raises(TypeError):
        set_layer_kernels(1)


def test_every_listed_class_has_llamas_forward():
    """NORM_CLASSES are the classes whose forward the kernel computes: checked against the
    installed transformers (a class it lacks is skipped)."""
    import importlib

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def body(cls):  # the statements (a transformers line may annotate the signature or not)
        return "\n".join(inspect.getsource(cls.forward).splitlines()[1:]).replace(cls.__name__, "X")

    want = body(LlamaRMSNorm)
    for name in NORM_CLASSES:
        family = name[: -len("RMSNorm")].lower()
        try:
            mod = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        except ImportError:
            continue
        assert body(getattr(mod, name)) == want, name


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiles_blocks_swap_the_norms_in_and_out(dtype):
    model = make_tiny_llama().to(getattr(torch, dtype)).eval()
    norms = [m for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    acts = [m for m in model.modules() if type(m).__name__ in ('SiLUActivation', 'SiLU')]
    assert acts and len(norms) == 2 * len(model.model.layers) + 1 and len(layer_plan(model)) == len(norms) + len(acts)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        with packed_linears(model, "tiles"):
            inside = [m for m in model.modules() if isinstance(m, TiledRMSNorm)]
            assert len(inside) == len(norms) and {id(m.original[0]) for m in inside} == {id(n) for n in norms}
            assert sum(isinstance(m, TiledSiLU) for m in model.modules()) == len(acts)
            logits = model(ids).logits
        assert not any(isinstance(m, (TiledRMSNorm, TiledSiLU)) for m in model.modules())
        with packed_linears(model, True if dtype == "float32" else False):  # oneDNN / as loaded: torch's norms
            assert not any(isinstance(m, TiledRMSNorm) for m in model.modules())
        set_layer_kernels(False)
        try:
            with packed_linears(model, "tiles"):
                assert not any(isinstance(m, (TiledRMSNorm, TiledSiLU)) for m in model.modules())
                plain = model(ids).logits
        finally:
            set_layer_kernels(True)
    tol = 1e-4 if dtype == "float32" else 0.1
    assert torch.allclose(logits.float(), plain.float(), atol=tol, rtol=tol)


def test_a_swapped_norm_does_not_keep_its_model_alive():
    model = make_tiny_llama().eval()
    with torch.inference_mode(), packed_linears(model, "tiles"):
        model(torch.tensor([[3, 4]]))
    assert len(layerops._CACHE) >= 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def _exp_reference(x: np.ndarray) -> np.ndarray:
    """The core's exp in numpy float32, operation for operation (its module docs)."""
    f = np.float32
    c = np.minimum(np.maximum(x, f(-87.33655)), f(88.37626))
    rounder = f(12582912.0)
    shifted = c * f(1.4426950408889634) + rounder
    n = shifted - rounder
    r = c - n * f(0.6933594) - n * f(-2.1219444e-4)
    r2 = r * r
    p = np.full_like(r, f(1.9875691e-4))
    for k in (1.3981999e-3, 8.333452e-3, 4.1665796e-2, 1.6666665e-1, 5.0000001e-1):
        p = p * r + f(k)
    y = p * r2 + r + f(1.0)
    e = (shifted.view(np.uint32) - rounder.view(np.uint32) + np.uint32(127)).astype(np.uint32)
    v = y * (e << np.uint32(23)).view(np.float32)
    return np.where(np.isnan(x), x, v)


@pytest.mark.parametrize("bf16", [False, True])
def test_silu_kernels_equal_their_numpy_reference_bit_for_bit(bf16):
    rng = np.random.default_rng(7 + bf16)
    gu = (rng.normal(0, 4.0, (5, 2 * 37)) * rng.choice([0.01, 1.0, 30.0], (5, 1))).astype(np.float32)
    gu[0, :3] = [0.0, -0.0, 100.0]
    if bf16:
        gu = _bf16(gu)
    rnd = _bf16 if bf16 else (lambda a: a)
    with np.errstate(over="ignore"):
        silu = rnd(gu / (np.float32(1.0) + _exp_reference(-gu)))
    want_mul = rnd(silu[:, :37] * gu[:, 37:])

    def run(fn, x):
        if not bf16:
            return fn(x)
        out = fn(torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy())
        return torch.from_numpy(out).view(torch.bfloat16).to(torch.float32).numpy()

    np.testing.assert_array_equal(run(_core.silu, gu), silu)
    np.testing.assert_array_equal(run(_core.silu_mul, gu), want_mul)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_silu_within_rounding_of_torch_and_the_fused_product(dtype):
    dt = getattr(torch, dtype)
    act = torch.nn.SiLU()
    swapped = TiledSiLU(act)
    gen = torch.Generator().manual_seed(3)
    gu = (4 * torch.randn(3, 5, 2 * 48, generator=gen)).to(dt)
    with torch.inference_mode():
        got, want = swapped(gu), torch.nn.functional.silu(gu)
        tol = 1e-6 if dtype == "float32" else 1e-2
        assert got.dtype == dt and torch.allclose(got.float(), want.float(), rtol=tol, atol=tol)
        fused = swapped.mul_step(gu, 48)
        assert torch.equal(fused, swapped(gu[..., :48].contiguous()) * gu[..., 48:])
        # rows the fused call does not take (another dtype): the original and torch's product
        g64 = gu.to(torch.float64)
        assert torch.equal(swapped.mul_step(g64, 48), act(g64[..., :48]) * g64[..., 48:])
        other = torch.randn(4, 8, dtype=torch.float64)
        assert torch.equal(swapped(other), act(other))
        assert torch.equal(swapped(torch.randn(0, 8)), torch.randn(0, 8))
    x = torch.randn(2, 8, requires_grad=True)
    assert swapped(x).requires_grad  # grad mode: the original
    assert TiledSiLU(act, one_row=False)(torch.randn(1, 8)).shape == (1, 8)
    with pytest.raises(ValueError, match="gate \\| up"):
        _core.silu_mul(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="at least one value"):
        _core.silu(np.ones((0, 4), np.float32))


def test_rotate_heads_errors_are_clear():
    x = np.ones((4, 24), np.float32)
    cs = np.ones((4, 8), np.float32)
    assert _core.rotate_heads(x, 3, 8, cs, cs, 2).shape == (12, 8)
    with pytest.raises(ValueError, match="head_dim"):
        _core.rotate_heads(x, 3, 7, cs, cs)
    with pytest.raises(ValueError, match="columns"):
        _core.rotate_heads(x, 4, 8, cs, cs)
    with pytest.raises(ValueError, match="multiple of batch"):
        _core.rotate_heads(x, 3, 8, cs, cs, 3)
    with pytest.raises(ValueError, match="cos"):
        _core.rotate_heads(x, 3, 8, cs[:3], cs)
    with pytest.raises(ValueError, match="dtype of x"):
        _core.rotate_heads(x, 3, 8, cs.astype(np.int16), cs)
