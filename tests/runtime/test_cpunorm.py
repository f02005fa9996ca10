"""tokenloom's RMS norm (tokenloom._core.RmsNorm behind tokenloom.runtime.cpunorm.TiledRMSNorm):
bit parity with a short numpy reference of its documented summation order, float32 rounding of
transformers' norm, the fused residual add equal to torch's add, clear errors on bad input, and
the swap into tiles blocks (in and out, the original's fallbacks, freed with its model)."""

from __future__ import annotations

import gc
import inspect
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tokenloom import _core  # noqa: E402
from tokenloom.runtime import cpunorm  # noqa: E402
from tokenloom.runtime.cpupack import packed_linears, tiles_available  # noqa: E402
from tokenloom.runtime.cpunorm import NORM_CLASSES, TiledRMSNorm, norm_plan, set_fused_norms  # noqa: E402

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
        set_fused_norms(1)


def test_every_listed_class_has_llamas_forward():
    """NORM_CLASSES are the classes whose forward the kernel computes: checked against the
    installed transformers (a class it lacks is skipped)."""
    import importlib

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def body(cls):
        return inspect.getsource(cls.forward).replace(cls.__name__, "X")

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
    assert len(norms) == 2 * len(model.model.layers) + 1 == len(norm_plan(model))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        with packed_linears(model, "tiles"):
            inside = [m for m in model.modules() if isinstance(m, TiledRMSNorm)]
            assert len(inside) == len(norms) and {id(m.original[0]) for m in inside} == {id(n) for n in norms}
            logits = model(ids).logits
        assert not any(isinstance(m, TiledRMSNorm) for m in model.modules())
        with packed_linears(model, True if dtype == "float32" else False):  # oneDNN / as loaded: torch's norms
            assert not any(isinstance(m, TiledRMSNorm) for m in model.modules())
        set_fused_norms(False)
        try:
            with packed_linears(model, "tiles"):
                assert not any(isinstance(m, TiledRMSNorm) for m in model.modules())
                plain = model(ids).logits
        finally:
            set_fused_norms(True)
    tol = 1e-4 if dtype == "float32" else 0.1
    assert torch.allclose(logits.float(), plain.float(), atol=tol, rtol=tol)


def test_a_swapped_norm_does_not_keep_its_model_alive():
    model = make_tiny_llama().eval()
    with torch.inference_mode(), packed_linears(model, "tiles"):
        model(torch.tensor([[3, 4]]))
    assert len(cpunorm._CACHE) >= 1
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
