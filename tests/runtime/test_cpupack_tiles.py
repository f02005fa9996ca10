"""The ``pack="tiles"`` kernel (tokenloom._core.TiledLinear behind
tokenloom.runtime.cpupack.TiledLinear): parity with ``torch.nn.functional.linear`` for random
shapes, float32 and bfloat16 weights; clear errors on bad input; the shared swapper puts it in
and takes it out; greedy tokens equal HF greedy run through the same layers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from tokenloom import _core  # noqa: E402
from tokenloom.runtime.cpupack import (  # noqa: E402
    TILED_MAX_ROWS,
    TiledLinear,
    active_kernel,
    available_kernels,
    clear_long_rows,
    long_rows_choice,
    set_long_rows,
    is_packed,
    packed_linears,
    resolve_kernel,
    resolve_pack,
    set_tiles_threads,
    tiles_available,
    tiles_threads,
)

from tests.conftest import make_tiny_llama  # noqa: E402
from tokenloom.runtime.kernels import PACK_KERNELS  # noqa: E402
from tests.reference.greedy import count_same_as_hf, same_or_near_tie  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not tiles_available(), reason="the compiled extension has no working TiledLinear"),
    pytest.mark.usefixtures("one_torch_thread"),
]

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


def _close(got, want, x, w):
    """Within float32 rounding of a K-term dot product: a few ulps of sum |x| |w| per element."""
    mag = x.abs().double() @ w.abs().double().t()
    tol = 8 * x.shape[1] * torch.finfo(torch.float32).eps * (mag + 1.0)
    assert ((got.double() - want.double()).abs() <= tol).all(), float((got.double() - want.double()).abs().max())


@SETTINGS
@given(m=st.integers(1, 70), n=st.integers(1, 70), k=st.integers(1, 90), bias=st.booleans(), bf16=st.booleans(),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_matches_torch_linear(m, n, k, bias, bf16, threads, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    if bf16:  # the kernel keeps bf16 weights; torch runs float32 on the same bf16-rounded values
        wb = w.to(torch.bfloat16)
        w = wb.float()
        lin = _core.TiledLinear(wb.view(torch.int16).numpy(), None if b is None else b.numpy(), bf16=True)
    else:
        lin = _core.TiledLinear(w.numpy(), None if b is None else b.numpy())
    got = torch.from_numpy(lin.forward(x.numpy(), threads))
    assert got.shape == (m, n) and got.dtype == torch.float32
    _close(got, torch.nn.functional.linear(x, w, b), x, w)
    assert (lin.out_features, lin.in_features, lin.bf16) == (n, k, bf16)
    assert lin.weight_bytes == -(-n // 16) * 16 * k * (2 if bf16 else 4)


@SETTINGS
@given(m=st.integers(2, 70), n=st.integers(1, 70), k=st.integers(1, 90), bias=st.booleans(), bf16=st.booleans(),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_a_row_does_not_depend_on_the_other_rows(m, n, k, bias, bf16, threads, seed):
    """Batch invariance, bit for bit: each row of an m-row call equals the same row run alone (one
    thread) and inside any other slice of the rows. What a tree step needs to give exactly the
    tokens of one-token steps through the same linears (the rest of the step permitting)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).numpy()
    w = torch.randn(n, k, generator=gen)
    b = torch.randn(n, generator=gen).numpy() if bias else None
    lin = (_core.TiledLinear(w.to(torch.bfloat16).view(torch.int16).numpy(), b, bf16=True) if bf16
           else _core.TiledLinear(w.numpy(), b))
    full = lin.forward(x, threads)
    alone = np.concatenate([lin.forward(x[i:i + 1].copy(), 1) for i in range(m)])
    assert np.array_equal(full, alone)
    cut = int(torch.randint(1, m, (1,), generator=gen))
    assert np.array_equal(lin.forward(x[cut:].copy(), threads), full[cut:])


@settings(derandomize=True, max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(m=st.integers(1, 70), n=st.integers(1, 40), k=st.integers(1, 90), bias=st.booleans(), amx=st.booleans(),
       threads=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_bfloat16_rows_in_and_out(m, n, k, bias, amx, threads, seed):
    """bfloat16 weights, bfloat16 rows (int16 bits) in and out: the float32 call's output rounded
    as torch's ``.to(torch.bfloat16)`` rounds, bit for bit; with ``amx=True`` (the AMX kernel where
    this CPU has it, else its portable stand-in) within float32 rounding of torch on the
    bf16-rounded values, and every row bit-equal to the row run alone."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=gen).to(torch.bfloat16)
    wb = torch.randn(n, k, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, generator=gen) if bias else None
    lin = _core.TiledLinear(wb.view(torch.int16).numpy(), None if b is None else b.numpy(), bf16=True, amx=amx)
    assert lin.amx == amx and lin.bf16
    assert lin.kernel == (("amx-bf16" if _core.amx_available() else "amx-portable") if amx else _core.tiled_linear_isa())
    y32 = torch.from_numpy(lin.forward(x.float().numpy(), threads))
    bits = lin.forward(x.view(torch.int16).numpy(), threads)
    assert bits.dtype == np.int16 and bits.shape == (m, n)
    assert torch.equal(torch.from_numpy(bits).view(torch.bfloat16), y32.to(torch.bfloat16))
    _close(y32, torch.nn.functional.linear(x.float(), wb.float(), b), x.float(), wb.float())
    alone = np.concatenate([lin.forward(x[i:i + 1].view(torch.int16).numpy(), 1) for i in range(m)])
    assert np.array_equal(bits, alone)


def test_amx_errors_and_availability():
    w = torch.ones(4, 3)
    with pytest.raises(ValueError, match="amx=True"):
        _core.TiledLinear(w.numpy(), amx=True)
    lin = _core.TiledLinear(w.numpy())
    with pytest.raises(ValueError, match="need a bfloat16 weight"):
        lin.forward(w.to(torch.bfloat16).view(torch.int16).numpy())
    with pytest.raises(ValueError, match="int16 / uint16"):
        _core.TiledLinear(w.to(torch.bfloat16).view(torch.int16).numpy(), bf16=True, amx=True).forward(np.ones((1, 3), np.int32))
    assert isinstance(_core.amx_available(), bool)
    assert "kernel=" in repr(lin)


def test_amx_tiles_and_onednn_amx_alternate_on_one_thread():
    """The AMX kernel configures the tiles for each call and releases them after; oneDNN's
    bfloat16 kernels (AMX on such a CPU) configure their own. Alternating the two, and torch's
    own bfloat16 linear, on the same threads gives the same results every time (a kernel that
    relied on a tile configuration the other had replaced would fault or compute garbage)."""
    from tokenloom.runtime.cpupack import pack_available

    gen = torch.Generator().manual_seed(3)
    w = torch.randn(96, 64, generator=gen).to(torch.bfloat16)
    xs = [torch.randn(m, 64, generator=gen).to(torch.bfloat16) for m in (1, 17, 5)]
    amx = _core.TiledLinear(w.view(torch.int16).numpy(), bf16=True, amx=True)
    packed = torch.ops.mkldnn._reorder_linear_weight(w, None) if pack_available(torch.bfloat16) else None
    first = None
    for _ in range(3):
        got = []
        for x in xs:
            got.append(amx.forward(x.view(torch.int16).numpy(), 2))
            got.append(torch.nn.functional.linear(x, w).float().numpy())
            if packed is not None:
                got.append(torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "").float().numpy())
        if first is None:
            first = got
        assert all(np.array_equal(a, b) for a, b in zip(got, first))


def test_bad_inputs_are_clear_errors():
    w = np.ones((4, 3), np.float32)
    for bad, match in [(np.ones(3, np.float32), "2-D float32"), (w.astype(np.float64), "2-D float32"),
                       (np.ones((0, 3), np.float32), "non-empty"), (np.ones((4, 0), np.float32), "non-empty"),
                       (np.ones((4, 6), np.float32)[:, ::2], "C-contiguous"), ([[1.0]], "2-D float32")]:
        with pytest.raises(ValueError, match=match):
            _core.TiledLinear(bad)
    with pytest.raises(ValueError, match="int16 or uint16"):
        _core.TiledLinear(w, bf16=True)
    with pytest.raises(ValueError, match="bias"):
        _core.TiledLinear(w, np.ones(3, np.float32))
    with pytest.raises(ValueError, match="bias"):
        _core.TiledLinear(w, np.ones(4, np.float64))
    lin = _core.TiledLinear(w, np.zeros(4, np.float32))
    for x, match in [(np.ones((2, 4), np.float32), "3 columns"), (np.ones((0, 3), np.float32), "at least one row"),
                     (np.ones((2, 3), np.float64), "2-D float32"), (np.ones(3, np.float32), "2-D float32"),
                     (np.ones((2, 6), np.float32)[:, ::2], "C-contiguous")]:
        with pytest.raises(ValueError, match=match):
            lin.forward(x)
    for threads, err in [(0, ValueError), (65, ValueError), (1.5, TypeError)]:
        with pytest.raises(err, match="threads"):
            lin.forward(np.ones((1, 3), np.float32), threads)
    np.testing.assert_array_equal(lin.forward(np.ones((2, 3), np.float32)), np.full((2, 4), 3.0, np.float32))
    assert _core.tiled_linear_isa() in ("avx512f", "avx2+fma", "scalar")


def test_threads_setting():
    set_tiles_threads(2)
    try:
        assert tiles_threads() == 2
        with pytest.raises(ValueError, match="set_tiles_threads"):
            set_tiles_threads(0)
    finally:
        set_tiles_threads(None)
    assert tiles_threads() == torch.get_num_threads()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_logits_close_and_modules_restored(dtype):
    model = make_tiny_llama(vocab_size=128, seed=0).to(dtype)
    before = {n: m for n, m in model.named_modules()}
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = model(ids).logits.float()
        with packed_linears(model, "tiles"):
            assert is_packed(model) and active_kernel(model) == "tiles" and resolve_kernel(model, "auto") == "tiles"
            swapped = [m for m in model.modules() if isinstance(m, TiledLinear)]
            assert swapped and all(m.tiled.bf16 == (dtype == torch.bfloat16) for m in swapped)
            got = model(ids).logits.float()
            long = torch.randint(0, 128, (1, 2 * TILED_MAX_ROWS + 3))  # a prompt: three chunks
            try:
                set_long_rows(False)
                assert torch.equal(model(long).logits, _run_plain(model, long))  # the original linears
                set_long_rows(True)
                chunked = model(long).logits.float()
            finally:
                set_long_rows(None)
        long_ref = model(long).logits.float()
    assert {n: m for n, m in model.named_modules()} == before and active_kernel(model) == "unpacked"
    tol = 1e-4 if dtype == torch.float32 else 0.05  # bf16: the output is rounded to bf16 either way
    assert (got - ref).abs().max() <= tol * (1 + ref.abs().max())
    assert (chunked - long_ref).abs().max() <= tol * (1 + long_ref.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_inputs_in_chunks_match_torch_linear(dtype):
    lin = torch.nn.Linear(40, 24, bias=True).to(dtype)
    x = torch.randn(2 * TILED_MAX_ROWS + 5, 40, generator=torch.Generator().manual_seed(3)).to(dtype)
    with torch.inference_mode(), packed_linears(torch.nn.Sequential(lin), "tiles") as seq:
        layer = seq[0]
        assert isinstance(layer, TiledLinear)
        got = layer.chunks(x)
    want = torch.nn.functional.linear(x.float(), lin.weight.float(), lin.bias.float())
    if dtype == torch.float32:
        _close(got, want, x, lin.weight.detach())
    else:  # each output rounded to bfloat16 once
        assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), want, rtol=1e-2, atol=1e-2)


def test_long_inputs_take_the_measured_faster_path():
    """:func:`long_rows_choice`: interleaved medians decide, once per weight shape and dtype;
    ``set_long_rows`` forces either path; bad values are refused."""
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(TILED_MAX_ROWS + 1, 16)

    def clock(orig_s, chunk_s):
        # each timed call reads the clock twice; rounds time the original first, then the chunks
        steps = iter([0.0, orig_s, 0.0, chunk_s] * 3)
        now = [0.0]

        def tick():
            now[0] += next(steps)
            return now[0]
        return tick

    clear_long_rows()
    try:
        with torch.inference_mode(), packed_linears(torch.nn.Sequential(lin), "tiles") as seq:
            layer = seq[0]
            assert long_rows_choice(layer, x, timer=clock(2.0, 1.0)) is True
            assert long_rows_choice(layer, x, timer=clock(1.0, 2.0)) is True  # cached for this shape
            clear_long_rows()
            assert long_rows_choice(layer, x, timer=clock(1.0, 2.0)) is False
            set_long_rows(True)
            assert long_rows_choice(layer, x) is True
            out = layer(x)
            assert torch.equal(out, layer.chunks(x))
            set_long_rows(False)
            assert torch.equal(layer(x), lin(x))
            with pytest.raises(ValueError, match="set_long_rows: expected True, False or None"):
                set_long_rows(1)  # type: ignore[arg-type]
    finally:
        clear_long_rows()


def _run_plain(model, ids):
    """``model(ids).logits`` with every TiledLinear's original module (the same numerics)."""
    saved = [(p, name, m) for p in model.modules() for name, m in p.named_children() if isinstance(m, TiledLinear)]
    for p, name, m in saved:
        p._modules[name] = m.original[0]
    try:
        return model(ids).logits
    finally:
        for p, name, m in saved:
            p._modules[name] = m


def test_kernels_and_errors():
    model = make_tiny_llama(vocab_size=128, seed=0)
    assert available_kernels(model) in (["unpacked", "packed", "tiles"], ["unpacked", "tiles"])
    # oneDNN packs bfloat16 only where it runs bfloat16 natively (AVX-512 CPUs)
    from tokenloom.runtime.cpupack import pack_available

    bf16 = ["unpacked", "packed", "tiles"] if pack_available(torch.bfloat16) else ["unpacked", "tiles"]
    assert available_kernels(model.to(torch.bfloat16)) == bf16
    assert resolve_kernel(model, "tiles") == "tiles" and resolve_pack(model, "tiles") is True
    assert available_kernels(model.to(torch.float64)) == ["unpacked"]
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        resolve_pack(model.to(torch.float64), "tiles")


@pytest.mark.parametrize("pack", ["tiles-trees", "packed-trees", "tiles-packed"])
def test_row_split_kernels_run_one_row_and_more_rows_through_their_bases(pack):
    """``"tiles-trees"`` / ``"packed-trees"``: one-row inputs go through the original linears
    (bit-identical logits), inputs of more rows through the base kernel (its numerics);
    ``"tiles-packed"``: one row through tiles, more through oneDNN (each bit-identical to its
    base kernel alone)."""
    from tokenloom.runtime.cpupack import TreeRowsLinear, pack_available
    from tokenloom.runtime.kernels import kernel_parts

    if "packed" in kernel_parts(pack) and not pack_available():
        pytest.skip("no oneDNN packed linear in this torch build")
    model = make_tiny_llama(vocab_size=128, seed=0)
    one_k, many_k = (PACK_KERNELS[k] for k in kernel_parts(pack))
    one, many = torch.tensor([[7]]), torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want_many_ref = model(many).logits
        with packed_linears(model, one_k):
            want_one = model(one).logits
        with packed_linears(model, many_k):
            want_many = model(many).logits
        with packed_linears(model, pack):
            assert active_kernel(model) == pack and resolve_kernel(model, "auto") == pack
            split = [m for m in model.modules() if isinstance(m, TreeRowsLinear)]
            assert split and all(m.weight is m.original[0].weight for m in split)
            assert torch.equal(model(one).logits, want_one)
            assert torch.equal(model(many).logits, want_many)
    assert (want_many - want_many_ref).abs().max() <= 1e-4 * (1 + want_many_ref.abs().max())
    assert not any(isinstance(m, TreeRowsLinear) for m in model.modules())
    with pytest.raises(ValueError, match="pack: expected"):
        with packed_linears(model, "trees"):
            pass


class _Siblings(torch.nn.Module):
    """A module with q / k / v projections of the given output sizes (a TILED_GROUPS group)."""

    def __init__(self, sizes, bias=(False, False, False), k=32):
        super().__init__()
        g = torch.Generator().manual_seed(sum(sizes))
        for name, n, b in zip(("q_proj", "k_proj", "v_proj"), sizes, bias):
            lin = torch.nn.Linear(k, n, bias=b)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=g))
                if b:
                    lin.bias.copy_(torch.randn(n, generator=g))
            setattr(self, name, lin)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sibling_linears_are_one_weight_and_one_call(dtype):
    """q / k / v (and gate / up) tiles are column views of one packed weight (no second copy):
    ``group_step`` gives, bit for bit, each member's own output and the output of each linear
    packed alone (``set_grouped(False)``), for 1 to TILED_MAX_ROWS rows; it declines (None)
    whatever is not the whole group in order on a tiles input of the group's dtype."""
    from tokenloom.runtime.cpupack import group_step, grouped, set_grouped

    model = make_tiny_llama(vocab_size=128, seed=0).to(dtype)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    gen = torch.Generator().manual_seed(4)
    xs = [torch.randn(1, m, 32, generator=gen).to(dtype) for m in (1, 3, 17, TILED_MAX_ROWS)]
    with torch.inference_mode():
        try:
            set_grouped(False)
            with packed_linears(model, "tiles"):
                assert attn.q_proj.group is None and group_step((attn.q_proj, attn.k_proj, attn.v_proj), xs[0]) is None
                alone = [[m.step(x) for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)] for x in xs]
        finally:
            set_grouped(True)
        assert grouped()
        with packed_linears(model, "tiles"):
            q, k, v, gate, up = attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj
            group = q.group
            assert group is not None and k.group is group and v.group is group and group.sizes == (32, 16, 16)
            assert [q.group_index, k.group_index, v.group_index] == [0, 1, 2] and gate.group is up.group is not group
            assert q.tiled.weight_bytes + k.tiled.weight_bytes + v.tiled.weight_bytes == group.tiled.weight_bytes
            for x, want in zip(xs, alone):
                got = list(group_step((q, k, v), x).split(group.sizes, -1)) + list(group_step((gate, up), x).split([64, 64], -1))
                own = [m.step(x) for m in (q, k, v, gate, up)]
                assert [y.shape for y in got] == [y.shape for y in want]
                assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(got, own, want))
            other = model.model.layers[1].self_attn
            declined = [((k, q, v), xs[0]), ((q, k), xs[0]), ((q, k, other.v_proj), xs[0]), ((q, k, v), xs[0].float() if dtype != torch.float32 else xs[0].double()),
                        ((q, k, v), torch.randn(1, TILED_MAX_ROWS + 1, 32).to(dtype)), ((q, k, v), torch.randn(2, 16).to(dtype)), ((q, model.lm_head, v), xs[0])]
            for mods, x in declined:
                assert group_step(mods, x) is None
        # an edited weight is packed again, with its group
        with torch.no_grad():
            attn.k_proj.weight.mul_(2)
        with packed_linears(model, "tiles"):
            assert attn.k_proj.group is attn.q_proj.group is not group
            got = group_step((attn.q_proj, attn.k_proj, attn.v_proj), xs[1]).split([32, 16, 16], -1)
            want = torch.nn.functional.linear(xs[1].float(), model.model.layers[0].self_attn.k_proj.weight.float())
            assert (got[1].float() - want).abs().max() <= (1e-4 if dtype == torch.float32 else 0.05) * (1 + want.abs().max())
    with pytest.raises(TypeError, match="set_grouped"):
        set_grouped("yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("sizes,bias,grouped_", [
    ((16, 32, 24), (False, False, False), True),  # the last member may end off a panel
    ((24, 16, 16), (False, False, False), False),  # a member before the last off a panel
    ((16, 16, 16), (True, True, True), True),
    ((16, 16, 16), (True, False, True), False),  # biases on some only
])
def test_which_siblings_form_a_group(sizes, bias, grouped_):
    mod = _Siblings(sizes, bias)
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = [torch.nn.functional.linear(x, m.weight, m.bias) for m in (mod.q_proj, mod.k_proj, mod.v_proj)]
        with packed_linears(mod, "tiles"):
            from tokenloom.runtime.cpupack import group_step

            assert (mod.q_proj.group is not None) == grouped_
            got = group_step((mod.q_proj, mod.k_proj, mod.v_proj), x)
            assert (got is not None) == grouped_
            got = None if got is None else got.split(list(sizes), -1)
            mods = (mod.q_proj, mod.k_proj, mod.v_proj)
            for a, b, m in zip(got or [m.step(x) for m in mods], want, mods):
                _close(a, b, x, m.weight.detach())


def test_tiles_greedy_equals_hf_greedy_through_the_same_layers(tiny_llama):
    """HF greedy run inside the same packed_linears block: the same tokens (or a near-tie)."""
    import tokenloom
    from tokenloom.eval.exactness import hf_greedy

    ids = torch.tensor([[1, 5, 9, 200, 17]])
    with torch.inference_mode(), packed_linears(tiny_llama, "tiles"):
        ref = hf_greedy(tiny_llama, ids, 16, eos=None)[0].tolist()
    for method in ("greedy", "recycling"):
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=16, eos_token_id=[], pack="tiles")
        same_or_near_tie(tiny_llama, out.sequences[0].tolist(), ref)


def test_tiles_greedy_equals_hf_greedy_on_the_embedded_model(smollm):
    model, tok = smollm
    count_same_as_hf(model, tok, ["What is 17 * 23? Explain step by step."], 24, method="recycling", eos_token_id=[2],
                     pack="tiles")


def test_bfloat16_greedy_equals_hf_greedy_through_tiles_on_the_embedded_model():
    """bfloat16 end to end on the real model: with every linear in tiles (row-invariant, above)
    tokenloom's greedy loop gives exactly HF's bfloat16 greedy tokens through the same layers.
    (Tree methods can still differ in bfloat16: torch's sdpa is not batch-invariant, docs/recycling.md.)"""
    import tokenloom
    from tokenloom.eval.exactness import first_diff, hf_greedy
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default

    model, tok = load_or_default(dtype="bfloat16")
    ids = chat_input_ids(tok, "Name three rivers in Europe and one fact about each.")
    with torch.inference_mode(), packed_linears(model, "tiles"):
        ref = hf_greedy(model, ids, 24, [2])[0].tolist()
    out = tokenloom.generate(model, ids, method="plain", max_new_tokens=24, eos_token_id=[2], pack="tiles")
    assert first_diff(out.sequences[0].tolist(), ref) is None and len(ref) > ids.shape[1]


@pytest.mark.parametrize("pack,many_threads,one_threads", [("tiles", 1, 1), ("tiles-trees", 1, 2), ("tiles-packed", 2, 1)])
def test_torch_steps_aside_for_the_tiles_pool_and_gets_its_threads_back(pack, many_threads, one_threads):
    """Inside a tiles block torch runs on one thread while the tiles calls split over the count
    torch had; a row-split kernel gives torch its threads back for the inputs its other part
    (torch's linear, oneDNN) runs -- "tiles-trees" one row, "tiles-packed" more rows -- and
    takes them again for the tiles part; on exit (also on error, also nested) torch has its
    count again. Outputs are unchanged by where the threads went."""
    from tokenloom.runtime.cpupack import pack_available, torch_threads_back

    if pack == "tiles-packed" and not pack_available():
        pytest.skip("no oneDNN packed linear in this torch build")
    model = make_tiny_llama(vocab_size=128, seed=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            ref = model(ids).logits
            with pytest.raises(RuntimeError, match="boom"), packed_linears(model, pack):
                assert torch.get_num_threads() == 1 and tiles_threads() == 2
                got = model(ids).logits  # 9 rows
                assert torch.get_num_threads() == many_threads
                model(ids[:, :1])  # one row
                assert torch.get_num_threads() == one_threads
                with torch_threads_back():
                    assert torch.get_num_threads() == 2
                with packed_linears(model, pack):  # nested: no second change
                    model(ids)
                    assert torch.get_num_threads() == many_threads and tiles_threads() == 2
                raise RuntimeError("boom")
            assert torch.get_num_threads() == 2 and tiles_threads() == 2
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        with torch_threads_back():  # outside a tiles block: nothing to give back
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("pack", ["tiles", "tiles-trees"])
def test_a_packed_model_is_freed_with_its_packed_weights(pack):
    """The packing caches hold their models weakly: once the caller drops a model that ran
    packed (every kernel of ``pack``, sibling groups included), it and its packed modules go."""
    import gc
    import weakref

    from tokenloom.runtime import cpupack

    model = make_tiny_llama(vocab_size=128, seed=0)
    with torch.inference_mode(), packed_linears(model, pack):
        model(torch.tensor([[1, 2, 3]]))
        model(torch.tensor([[4]]))
    gone = [weakref.ref(model), weakref.ref(model.lm_head), weakref.ref(model.model.layers[0].self_attn.q_proj)]
    linears = [m for m in model.modules() if m in cpupack._CACHE]
    cached = [weakref.ref(entry[2]) for m in linears for entry in cpupack._CACHE[m].values()]
    assert len(linears) == 2 * 7 + 1 and len(cached) >= len(linears)
    del model, linears
    gc.collect()
    assert all(r() is None for r in gone + cached)
