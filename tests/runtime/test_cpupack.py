"""Packed oneDNN CPU linears (tokenloom.cpupack): same logits up to float32 rounding, modules
restored after the block (also on error), greedy outputs unchanged up to near-ties, clear
errors."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokenloom.runtime.cpupack import (  # noqa: E402
    PACKED_ROW_SIZES,
    PackedLinear,
    clear_packed,
    is_packed,
    pack_available,
    packed_linears,
    packed_rows,
    resolve_pack,
)

from tests.conftest import make_tiny_llama  # noqa: E402
from tests.reference.greedy import count_same_as_hf, same_or_near_tie  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not pack_available(), reason="this torch build has no oneDNN packed linear"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _linears(model):
    return {name: mod for name, mod in model.named_modules() if type(mod) is torch.nn.Linear}


def test_packed_linear_matches_linear_on_every_shape():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40, bias=True)
    seq = torch.nn.Sequential(lin)
    for shape in [(1, 24), (7, 24), (2, 5, 24), (1, 1, 24)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            ref = lin(x)
            with packed_linears(seq):
                assert isinstance(seq[0], PackedLinear)
                got = seq(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert seq[0] is lin


def test_row_counts_map_to_a_bounded_set_of_shapes():
    """Every row count runs oneDNN at one of PACKED_ROW_SIZES (the smallest that holds it), or
    through the original linear past the last: a long process builds a bounded set of kernels."""
    assert list(PACKED_ROW_SIZES) == sorted(set(PACKED_ROW_SIZES)) and PACKED_ROW_SIZES[0] == 1
    for m in range(1, 3 * PACKED_ROW_SIZES[-1]):
        p = packed_rows(m)
        if m > PACKED_ROW_SIZES[-1]:
            assert p == 0
        else:
            assert p == min(s for s in PACKED_ROW_SIZES if s >= m)


def test_padded_and_unpacked_row_counts_match_linear(monkeypatch):
    """Padded rows (33 -> 40, 57 -> 64) and the unpacked path (past the last size) give the
    original linear's output, and oneDNN only ever sees row counts of PACKED_ROW_SIZES."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(32, 48, bias=True)
    seq = torch.nn.Sequential(lin)
    seen = []
    ns = torch.ops.mkldnn

    class Spy:  # torch.ops.mkldnn, counting the rows each packed call gets
        def __getattr__(self, name):
            return getattr(ns, name)

        def _linear_pointwise(self, x, *a):
            seen.append(int(x.shape[0]))
            return ns._linear_pointwise(x, *a)

    monkeypatch.setattr(torch.ops, "mkldnn", Spy())
    for m in (1, 17, 33, 57, PACKED_ROW_SIZES[-1], PACKED_ROW_SIZES[-1] + 1, 200):
        x = torch.randn(1, m, 32)
        with torch.inference_mode():
            ref = lin(x)
            with packed_linears(seq):
                got = seq(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert seen == [1, 17, 40, 64, PACKED_ROW_SIZES[-1]]


def test_model_logits_close_and_modules_restored():
    model = make_tiny_llama(vocab_size=512, seed=3)
    before = _linears(model)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits
        with packed_linears(model) as m:
            assert m is model and is_packed(model)
            assert not _linears(model)  # every nn.Linear swapped
            got = model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert _linears(model) == before and not is_packed(model)
    # Tied embeddings: the packed lm_head still exposes the original weight.
    with packed_linears(model):
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_restored_on_error_and_nested_noop():
    model = make_tiny_llama(vocab_size=256, seed=1)
    before = _linears(model)
    with pytest.raises(RuntimeError, match="boom"):
        with packed_linears(model):
            with packed_linears(model):  # nested: no second swap
                assert is_packed(model)
            assert is_packed(model)
            raise RuntimeError("boom")
    assert _linears(model) == before


def test_edited_weight_is_repacked():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(8, 8, bias=False))
    x = torch.randn(3, 8)
    with torch.inference_mode(), packed_linears(seq):
        a = seq(x)
    with torch.no_grad():
        seq[0].weight.mul_(2.0)
    with torch.inference_mode(), packed_linears(seq):
        b = seq(x)
    torch.testing.assert_close(b, 2 * a, atol=1e-5, rtol=1e-5)
    clear_packed()


def test_grad_mode_falls_back_to_the_original():
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(8, 4))
    x = torch.randn(2, 8, requires_grad=True)
    with packed_linears(seq):
        seq(x).sum().backward()  # packed path is inference-only: autograd still works
    assert x.grad is not None


def test_resolve_pack_errors():
    model = make_tiny_llama(vocab_size=128, seed=0)
    assert resolve_pack(model, False) is False
    assert resolve_pack(model, "auto") is True
    with pytest.raises(ValueError, match="pack"):
        resolve_pack(model, "yes")
    with pytest.raises(ValueError, match="no float32 CPU nn.Linear"):
        resolve_pack(torch.nn.Sequential(torch.nn.ReLU()), True)
    assert resolve_pack(model.to(torch.float64), "auto") is False  # nothing packable: auto skips


def test_generate_pack_flag_leaves_model_unchanged(tiny_llama):
    import tokenloom

    before = _linears(tiny_llama)
    ids = torch.tensor([[1, 5, 9, 200]])
    a = tokenloom.generate(tiny_llama, ids, method="recycling", max_new_tokens=12, eos_token_id=[], pack=True)
    b = tokenloom.generate(tiny_llama, ids, method="recycling", max_new_tokens=12, eos_token_id=[], pack=False)
    assert _linears(tiny_llama) == before
    same_or_near_tie(tiny_llama, a.sequences[0].tolist(), b.sequences[0].tolist())
    with pytest.raises(ValueError, match="pack"):
        tokenloom.generate(tiny_llama, ids, max_new_tokens=2, pack="fast")


@pytest.mark.parametrize("method", ["greedy", "recycling"])
def test_packed_greedy_equals_hf_greedy_on_the_embedded_model(smollm, method):
    model, tok = smollm
    prompts = ["Write a haiku about rust.", "What is 17 * 23? Explain step by step."]
    count_same_as_hf(model, tok, prompts, 40, method=method, eos_token_id=[2], pack=True)


BF16_PACKS = pack_available(torch.bfloat16)


@pytest.mark.skipif(not BF16_PACKS, reason="oneDNN has no native bfloat16 linear on this CPU (no AVX-512)")
def test_bfloat16_packed_linear_matches_linear_at_every_row_count():
    """bfloat16 weights packed for oneDNN: the output keeps the weight's dtype and agrees with
    the float32 product of the same bfloat16 values to bfloat16 rounding, for one row, tree
    sizes, padded sizes and the unpacked path past the last size; a float32 input goes to the
    original linear."""
    torch.manual_seed(2)
    lin = torch.nn.Linear(96, 80, bias=True).to(torch.bfloat16)
    seq = torch.nn.Sequential(lin)
    for m in (1, 2, 17, 33, PACKED_ROW_SIZES[-1] + 3):
        x = torch.randn(1, m, 96).to(torch.bfloat16)
        exact = x.float() @ lin.weight.float().t() + lin.bias.float()
        with torch.inference_mode(), packed_linears(seq):
            assert isinstance(seq[0], PackedLinear)
            got = seq(x)
        assert got.dtype == torch.bfloat16 and got.shape == exact.shape
        torch.testing.assert_close(got.float(), exact, atol=2e-2, rtol=2e-2)
    assert seq[0] is lin


def test_bfloat16_models_pack_only_where_onednn_runs_bfloat16():
    """pack=True on a bfloat16 model: packed where oneDNN runs bfloat16 natively, else a clear
    error that says what is missing; "auto" then runs the model as loaded."""
    model = make_tiny_llama(vocab_size=128, seed=0).to(torch.bfloat16)
    if BF16_PACKS:
        assert resolve_pack(model, True) is True
        with packed_linears(model):
            assert any(isinstance(m, PackedLinear) for m in model.modules())
    else:
        with pytest.raises(ValueError, match="bfloat16 ones need a CPU"):
            resolve_pack(model, True)
        assert resolve_pack(model, "auto") is False


@pytest.mark.skipif(not BF16_PACKS, reason="oneDNN has no native bfloat16 linear on this CPU (no AVX-512)")
def test_bfloat16_packed_greedy_equals_hf_greedy_through_the_same_layers_on_the_embedded_model():
    """bfloat16 end to end with oneDNN-packed linears (AMX / AVX512-BF16 kernels): tokenloom's
    greedy loop gives exactly HF's bfloat16 greedy tokens through the same packed layers."""
    import tokenloom
    from tokenloom.eval.exactness import first_diff, hf_greedy
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default

    model, tok = load_or_default(dtype="bfloat16")
    ids = chat_input_ids(tok, "Give two reasons why the sky looks blue at noon and red at dusk.")
    with torch.inference_mode(), packed_linears(model, True):
        ref = hf_greedy(model, ids, 24, [2])[0].tolist()
    out = tokenloom.generate(model, ids, method="plain", max_new_tokens=24, eos_token_id=[2], pack=True)
    assert first_diff(out.sequences[0].tolist(), ref) is None and len(ref) > ids.shape[1]
