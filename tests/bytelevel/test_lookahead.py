"""ByteLM look-ahead rows: the candidate kernel against a pure-Python reference on the real
vocabulary, and exactness (look-ahead only moves work between forwards: every distribution,
greedy continuation and log-probability is the same as without it)."""

from __future__ import annotations

import numpy as np
import pytest

from tokenloom import ByteLM, ByteVocab
from tests.reference.bytes import expanded_tree, ref_top_straddling


@pytest.mark.parametrize("canonical", [False, True])
def test_top_straddling_matches_reference(tokenizer, canonical):
    vocab = ByteVocab.from_tokenizer(tokenizer)
    tree, nodes = expanded_tree(vocab, b"def fi", canonical)
    rng = np.random.default_rng(0)
    assert len(nodes) >= 2
    # Sparse random distributions (zeros exercise the "allowed" filter), restricted to tokens
    # the reference can afford to scan: tokens starting with one of a few byte strings.
    keep = np.array([bool(b) and (b[:1] in (b"d", b"e", b"f", b"i", b" ")) for b in vocab.token_bytes] + [False] * (vocab.width - len(vocab.token_bytes)))
    qs = []
    for _ in nodes:
        q = rng.random(vocab.width).astype(np.float32) * keep * (rng.random(vocab.width) < 0.7)
        qs.append((q / q.sum()).astype(np.float32))
    scales = [float(s) for s in rng.random(len(nodes)) + 0.1]
    for k in (1, 5, 40):
        got = tree.top_straddling(nodes, qs, scales, k)
        want = ref_top_straddling(vocab, tree, nodes, qs, scales, k)
        assert [(n, t) for n, t, _ in got] == [(n, t) for n, t, _ in want]
        assert np.allclose([s for *_, s in got], [s for *_, s in want], rtol=1e-9, atol=0)
    assert tree.top_straddling(nodes, qs, scales, 0) == []
    with pytest.raises(ValueError):
        tree.top_straddling(nodes, qs[:1], scales, 3)
    with pytest.raises(ValueError):
        tree.top_straddling(nodes, [q[:10] for q in qs], scales, 3)
    with pytest.raises(IndexError):
        tree.top_straddling([10**9], qs[:1], scales[:1], 3)


def _walk(lm, data):
    return [lm.next_byte_probs(data[:i]) for i in range(len(data) + 1)]


@pytest.mark.parametrize("canonical", [False, True])
def test_lookahead_is_exact_tiny(tiny_llama, tokenizer, canonical):
    data = b"def f(x):\n  return x" if canonical else b"def f("
    vocab = ByteVocab.from_tokenizer(tokenizer, vocab_size=tiny_llama.get_output_embeddings().weight.shape[0])
    ref = _walk(ByteLM(tiny_llama, tokenizer, canonical=canonical, vocab=vocab, lookahead=0), data)
    for la, cache in ((3, 256), (8, 256), (8, 2)):  # cache 2: look-ahead rows get evicted
        lm = ByteLM(tiny_llama, tokenizer, canonical=canonical, vocab=vocab, lookahead=la, cache_size=cache)
        got = _walk(lm, data)
        assert lm.lookahead_rows > 0
        assert max(np.abs(a - b).max() for a, b in zip(ref, got)) < 1e-6


def test_lookahead_bad_input(tiny_llama, tokenizer):
    for bad in (-1, 1.5, True, "8"):
        with pytest.raises(ValueError, match="lookahead"):
            ByteLM(tiny_llama, tokenizer, lookahead=bad)  # type: ignore[arg-type]


@pytest.mark.model
def test_lookahead_saves_forwards_on_embedded_model(smollm):
    """On the real model, look-ahead rows are used (hits), fewer forwards are needed, and the
    distributions, log-probability and greedy continuation do not change."""
    model, tok = smollm
    vocab = ByteVocab.from_tokenizer(tok)
    data = b"The capital of France is Paris, and the capital of Italy is Rome."
    start = 20
    off = ByteLM(model, tok, vocab=vocab, lookahead=0)
    on = ByteLM(model, tok, vocab=vocab, lookahead=8)
    ref = [off.next_byte_probs(data[:i]) for i in range(start, len(data) + 1)]
    f_off = off.forwards
    got = [on.next_byte_probs(data[:i]) for i in range(start, len(data) + 1)]
    assert max(np.abs(a - b).max() for a, b in zip(ref, got)) < 1e-5
    assert on.lookahead_hits > 0 and on.forwards < f_off
    assert abs(on.logprob(data) - off.logprob(data)) < 1e-4
    g_off = ByteLM(model, tok, vocab=vocab, lookahead=0).generate(b"def fibonac", 24)
    g_on = ByteLM(model, tok, vocab=vocab, lookahead=8).generate(b"def fibonac", 24)
    assert g_on == g_off


def test_continuation_masses_matches_reference(tokenizer):
    """ByteIndex.continuation_masses (the two-level look-ahead's next-byte guess) against a
    pure-Python sum over the vocabulary; bad input raises."""
    vocab = ByteVocab.from_tokenizer(tokenizer)
    rng = np.random.default_rng(1)
    q = rng.random(vocab.width).astype(np.float32)
    q /= q.sum()
    for data in (b" un", b"def", b"\n   ", b"\xe4", b"zzzzzzqq"):
        got = vocab.index.continuation_masses(data, q)
        want = np.zeros(257)
        for t, b in enumerate(vocab.token_bytes):
            if vocab.special[t] or not b.startswith(data):
                continue
            if len(b) == len(data):
                want[256] += float(q[t])
            else:
                want[b[len(data)]] += float(q[t])
        assert got.shape == (257,) and np.allclose(got, want, rtol=1e-9, atol=1e-12), data
    with pytest.raises(ValueError):
        vocab.index.continuation_masses(b"a", q[:10])


def test_context_mask_bad_input(tokenizer):
    vocab = ByteVocab.from_tokenizer(tokenizer)
    with pytest.raises(IndexError):
        vocab.index.context_mask(10**8, 5)
    with pytest.raises(IndexError):
        vocab.index.context_mask(5, 10**8)
    assert vocab.index.context_mask(5, -1) is None  # nothing before the first token to re-check
