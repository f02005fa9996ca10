"""ByteLM on the accelerator branch (``bytelevel/rows.DeviceRows``), forced onto CPU tensors:
the distributions stay where the model runs and only byte masses per path cross to the host.
Checked against the brute-force oracle, against the host branch, for what crosses per call,
and for bad input (a model split over devices, a half-precision model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenloom import ByteLM
from tokenloom.device import force_accelerator_path

from tests.reference.bytes import BruteForce
from tokenloom.integrations.hf.models import make_tiny_llama
from tests.reference.host_copies import HostCopies

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT = [b"", b"d", b"def", b"a b", b"\xe6\x97", b"<|im", b"  x", b"'ll", b"\n   re"]


@pytest.fixture(scope="module", params=[False, True], ids=["all", "canonical"])
def forced_lm(request, tiny_llama, tokenizer):
    with force_accelerator_path():
        lm = ByteLM(tiny_llama, tokenizer, canonical=request.param)
    return lm, BruteForce(tiny_llama, lm.vocab, lm.context_ids, request.param)


def test_rows_live_on_the_accelerator_branch(forced_lm, tiny_llama, tokenizer):
    from tokenloom.bytelevel.rows import DeviceRows, HostRows

    lm, _ = forced_lm
    assert type(lm._engine.rows) is DeviceRows
    assert type(ByteLM(tiny_llama, tokenizer)._engine.rows) is HostRows


@pytest.mark.parametrize("x", SHORT)
def test_matches_brute_force(forced_lm, x):
    lm, bf = forced_lm
    with force_accelerator_path():
        p = lm.next_byte_probs(x)
        lp = lm.logprob(x)
    q, total = bf.next_byte_probs(x)
    assert p.shape == (257,) and p.dtype == np.float64 and abs(p.sum() - 1) < 1e-9
    assert np.abs(p - q).max() < 1e-5
    assert abs(lp - math.log(total)) < 1e-5


def test_only_byte_masses_cross(forced_lm):
    """Per call at most 258 numbers cross at once (the 256 byte masses, exact and end-of-text
    masses), never a vocabulary row (49,152), and O(rows x bytes) in all: per row fed, its
    first-byte marginal (a look-ahead prior) and the continuation masses of its token."""
    lm, _ = forced_lm
    width = lm.vocab.width
    lm.reset()
    for x in [b"d", b"def", b"def f(x):\n  ret"]:
        rows = lm.forward_rows
        with force_accelerator_path(), HostCopies() as c:
            lm.next_byte_probs(x)
        fed = lm.forward_rows - rows
        assert c.largest <= 258 < width, (x, c.largest)
        assert c.total <= 600 * (fed + 2), (x, c.total, fed)


def test_generation_equals_the_host_branch(tiny_llama, tokenizer):
    host = ByteLM(tiny_llama, tokenizer, canonical=True)
    with force_accelerator_path():
        acc = ByteLM(tiny_llama, tokenizer, canonical=True)
        greedy = acc.generate(b"def f", 12)
        sampled = acc.generate(b"def f", 12, temperature=1.0, seed=3)
        probs = acc.next_byte_probs(b"def f(x):\n  ret")
    assert greedy == host.generate(b"def f", 12)
    assert sampled == host.generate(b"def f", 12, temperature=1.0, seed=3)
    assert np.abs(probs - host.next_byte_probs(b"def f(x):\n  ret")).max() < 1e-6


def test_top_straddling_matches_the_rust_kernel(forced_lm):
    """The look-ahead's heaviest straddling extensions: the device form against the Rust one."""
    from tokenloom.bytelevel.rows import HostRows

    lm, _ = forced_lm
    with force_accelerator_path():
        st = lm._sync(b"de")
        lm._ensure_expanded(st)
    nodes, qs, lms = st.expanded_live()
    scales = [math.exp(x - max(lms)) for x in lms]
    dev = lm._engine.rows.top_straddling(st.tree, nodes, qs, scales, st.rests(nodes), 12)
    host = HostRows(lm.vocab, lm.canonical).top_straddling(st.tree, nodes, [q.numpy() for q in qs], scales, st.rests(nodes), 12)
    assert [(n, t) for n, t, _ in dev] == [(n, t) for n, t, _ in host]
    assert np.allclose([s for *_, s in dev], [s for *_, s in host], rtol=1e-9)


def test_half_precision_model_gets_float32_distributions(tokenizer):
    """A bfloat16 model is accepted on both branches: its logits become float32 before the
    softmax, so the result is the bfloat16 model's distribution (the oracle runs the same model)."""
    model = make_tiny_llama(layers=1).to(torch.bfloat16)
    for forced in (False, True):
        with force_accelerator_path(forced):
            lm = ByteLM(model, tokenizer, canonical=True)
            bf = BruteForce(model, lm.vocab, lm.context_ids, True)
            for x in [b"d", b"a b"]:
                p = lm.next_byte_probs(x)
                assert abs(p.sum() - 1) < 1e-9
                assert np.abs(p - bf.next_byte_probs(x)[0]).max() < 1e-3


class _LogitsElsewhere(torch.nn.Module):
    """A model whose logits come back on another device than its parameters (``meta``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids=None, cache=None, **kwargs):
        from tokenloom.runtime.compat import cache_arg

        out = self.inner(input_ids=input_ids, **kwargs, **cache_arg(self.inner, cache))
        out.logits = out.logits.to("meta")
        return out


def test_logits_on_another_device_are_refused(tokenizer):
    model = _LogitsElsewhere(make_tiny_llama(layers=1))
    lm = ByteLM(model, tokenizer, pack=False)
    with pytest.raises(ValueError, match="logits are on meta but its first parameters are on cpu"):
        lm.next_byte_probs(b"a")
