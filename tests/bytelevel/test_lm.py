"""ByteLM: agreement with brute-force cover enumeration, sum to one, chain rule, incremental ==
from scratch, token-level agreement at a boundary, sampling statistics, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenloom import ByteLM

from tests.reference.bytes import BruteForce
from tests.reference.verify import chisq_p
from tokenloom.integrations.hf.models import make_tiny_llama

SHORT = [b"", b"d", b"de", b"def", b"a b", b"\xe6\x97", b"<|im", b"  x", b"'ll", b"\n   re", b"a  b"]


@pytest.fixture(scope="module", params=[False, True], ids=["all", "canonical"])
def lm_and_oracle(request, tiny_llama, tokenizer):
    lm = ByteLM(tiny_llama, tokenizer, canonical=request.param)
    return lm, BruteForce(tiny_llama, lm.vocab, lm.context_ids, request.param)


@pytest.mark.parametrize("x", SHORT)
def test_matches_brute_force(lm_and_oracle, x):
    lm, bf = lm_and_oracle
    p = lm.next_byte_probs(x)
    q, total = bf.next_byte_probs(x)
    assert p.shape == (257,) and p.dtype == np.float64
    assert abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
    assert np.abs(p - q).max() < 1e-5
    assert abs(lm.logprob(x) - math.log(total)) < 1e-5


def test_chain_rule_and_incremental(lm_and_oracle):
    lm, _ = lm_and_oracle
    data = b"def f(" if not lm.canonical else b"def f(x):\n  ret"
    lp = 0.0
    for i in range(len(data)):
        lm.reset()
        fresh = lm.next_byte_probs(data[:i])  # from scratch
        lm.reset()
        lm.next_byte_probs(data[: max(i - 1, 0)])
        inc = lm.next_byte_probs(data[:i])  # incremental (one more byte)
        assert np.abs(fresh - inc).max() < 1e-6
        lp += math.log(inc[data[i]])
        assert abs(lm.logprob(data[: i + 1]) - lp) < 1e-4
    # sum_b P(x b) = P(x) - P(x, EOS)
    x = data[:7]
    p = lm.next_byte_probs(x)
    px = math.exp(lm.logprob(x))
    pxb = sum(math.exp(lm.logprob(x + bytes([b]))) for b in np.flatnonzero(p[:256] > 1e-4))
    assert abs(pxb + px * p[256] - px) / px < 1e-3 + p[:256][p[:256] <= 1e-4].sum()


def test_token_level_agreement_at_boundary(tiny_llama, tokenizer):
    """Canonical mode: the only exact encoding of x is encode(x), so
    P(x) * P(EOS | x) = Q(encode(x)) * Q(specials | encode(x))."""
    import torch

    lm = ByteLM(tiny_llama, tokenizer, canonical=True)
    for text in ["def f", "Hello, world", "  x = 1"]:
        x = text.encode()
        ids = tokenizer(text, add_special_tokens=False).input_ids
        ctx = lm.context_ids + ids
        with torch.no_grad():
            logits = tiny_llama(torch.tensor([ctx])).logits[0].double()
        lq = 0.0
        for k, t in enumerate(ids):
            prev = ids[k - 1] if k else -1
            pprev = ids[k - 2] if k > 1 else -1
            m = torch.from_numpy(lm.vocab.index.next_mask_after(pprev, prev, True))
            row = torch.log_softmax(logits[len(lm.context_ids) - 1 + k].masked_fill(~m, -math.inf), -1)
            lq += float(row[t])
        m = torch.from_numpy(lm.vocab.index.next_mask_after(ids[-2] if len(ids) > 1 else -1, ids[-1], True))
        last = torch.softmax(logits[-1].masked_fill(~m, -math.inf), -1)
        want = lq + math.log(float(last[:17].sum()))
        got = lm.logprob(x) + math.log(lm.next_byte_probs(x)[256])
        assert abs(got - want) < 1e-4, text


def test_tree_forward_matches_plain_forward(tiny_llama, tokenizer):
    """Distributions computed with the tree mask + KV reuse equal plain uncached forwards."""
    lm = ByteLM(tiny_llama, tokenizer, canonical=False)
    bf = BruteForce(tiny_llama, lm.vocab, lm.context_ids, False)
    st = lm._sync(b"the cat")
    lm._ensure_expanded(st)
    checked = 0
    for n, q in st.q.items():
        if q.size:
            path = tuple(st.tree.path(n))
            assert np.abs(q - bf._dist(path)).max() < 1e-5
            checked += 1
    assert checked > 3


def test_padding_rows_and_width(tokenizer):
    model = make_tiny_llama(vocab_size=49152 + 64)
    lm = ByteLM(model, tokenizer, canonical=True)
    bf = BruteForce(model, lm.vocab, lm.context_ids, True)
    for x in [b"de", b"x "]:
        assert np.abs(lm.next_byte_probs(x) - bf.next_byte_probs(x)[0]).max() < 1e-5
    with pytest.raises(ValueError, match="do not match"):
        ByteLM(make_tiny_llama(vocab_size=1000), tokenizer)


def test_zero_probability_bytes(tiny_llama, tokenizer):
    """Bytes no token contains (0xFF: only 235 single-byte tokens) get probability 0."""
    lm = ByteLM(tiny_llama, tokenizer, canonical=True)
    p = lm.next_byte_probs(b"a")
    assert p[0xFF] == 0 and p[0xC0] == 0
    with pytest.raises(ValueError, match="probability 0"):
        lm.next_byte_probs(b"a\xff")


def test_sampling_matches_distribution(tiny_llama, tokenizer):

    lm = ByteLM(tiny_llama, tokenizer, canonical=True)
    x = b"de"
    p = lm.next_byte_probs(x)
    n = 400
    counts = np.zeros(257)
    for s in range(n):
        out = lm.generate(x, 1, temperature=1.0, seed=s, stop_at_eos=True)
        counts[out[0] if out else 256] += 1
    assert chisq_p(np.repeat(np.arange(257), counts.astype(int)), p) > 1e-3


def test_greedy_is_argmax_chain(tiny_llama, tokenizer):
    lm = ByteLM(tiny_llama, tokenizer, canonical=True)
    out = lm.generate(b"def", 12)
    x = b"def"
    for b in out:
        p = lm.next_byte_probs(x)
        assert int(np.argmax(p)) == b
        x += bytes([b])


def test_all_covers_guard(tiny_llama, tokenizer):
    lm = ByteLM(tiny_llama, tokenizer, canonical=False, max_paths=50)
    with pytest.raises(ValueError, match="max_paths"):
        lm.next_byte_probs(b"aaaaaaaaaaaaaaaaaaaa")


def test_bad_input(tiny_llama, tokenizer):
    lm = ByteLM(tiny_llama, tokenizer)
    with pytest.raises(TypeError, match="expected bytes, got str"):
        lm.next_byte_probs("def")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        lm.logprob(123)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lm.generate(b"x", -1)
    with pytest.raises(ValueError):
        lm.generate(b"x", 3, top_p=0)
    with pytest.raises(ValueError, match="tokenizer or a ByteVocab"):
        ByteLM(tiny_llama)


@pytest.mark.model
@pytest.mark.parametrize("x", [b"def fibonac", b"https:/", b"Hello wor"])
def test_smollm_matches_brute_force(smollm, x):
    model, tok = smollm
    lm = ByteLM(model, tok, canonical=True)
    bf = BruteForce(model, lm.vocab, lm.context_ids, True)
    p = lm.next_byte_probs(x)
    q, _ = bf.next_byte_probs(x)
    assert np.abs(p - q).max() < 1e-5


@pytest.mark.model
def test_smollm_all_covers_brute_force(smollm):
    model, tok = smollm
    lm = ByteLM(model, tok, canonical=False)
    bf = BruteForce(model, lm.vocab, lm.context_ids, False)
    for x in [b"de", b"if"]:
        assert np.abs(lm.next_byte_probs(x) - bf.next_byte_probs(x)[0]).max() < 1e-5



def test_shared_vocab_shares_masks_not_results(tiny_llama, tokenizer):
    """ByteLMs built on one ByteVocab share the allowed-next-token masks (static per vocabulary
    and mode) and give the same probabilities as a ByteLM with its own vocabulary."""
    from tokenloom import ByteVocab

    vocab = ByteVocab.from_tokenizer(tokenizer, vocab_size=tiny_llama.get_output_embeddings().weight.shape[0])
    a = ByteLM(tiny_llama, tokenizer, canonical=True, vocab=vocab)
    pa = a.next_byte_probs(b"def f")
    n = len(vocab._mask_cache)
    assert n > 0 and all(mode is True for _, mode in vocab._mask_cache)
    b = ByteLM(tiny_llama, tokenizer, canonical=False, vocab=vocab)
    b.next_byte_probs(b"de")
    assert any(mode is False for _, mode in vocab._mask_cache)  # modes never mix
    own = ByteLM(tiny_llama, tokenizer, canonical=True)
    assert np.abs(own.next_byte_probs(b"def f") - pa).max() < 1e-9
    c = ByteLM(tiny_llama, tokenizer, canonical=True, vocab=vocab)
    assert np.abs(c.next_byte_probs(b"def f") - pa).max() < 1e-9
