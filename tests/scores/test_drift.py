"""tokenloom.scores.kl_drift: the token level against a NumPy KL of separate forwards, the byte
level against the token level where the two are the same thing (a one-byte-per-token
vocabulary: position by position), models with different tokenizers, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from tokenloom.scores import kl_drift
from tokenloom.scores.drift import kl_rows, message_spans

from tokenloom.integrations.hf.models import make_tiny_llama

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONV = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Say a word."},
    {"role": "assistant", "content": "Word."},
]


@pytest.fixture(scope="module")
def byte_tokenizer():
    """A fast tokenizer with one token per byte (ids 0..255) and an end token (256)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tokenloom.bytelevel.vocab import bytes_to_unicode

    b2u = bytes_to_unicode()
    bt = Tokenizer(models.BPE(vocab={b2u[i]: i for i in range(256)}, merges=[]))
    bt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bt.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bt, eos_token="<|end|>")
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|end|>{% endfor %}"
    return tok


@pytest.fixture(scope="module")
def pair():
    return make_tiny_llama(seed=0), make_tiny_llama(seed=1)


def _numpy_kl(a, b, ids, rows):
    import torch

    with torch.no_grad():
        la = torch.log_softmax(a(torch.tensor([ids])).logits[0].double(), -1).numpy()
        lb = torch.log_softmax(b(torch.tensor([ids])).logits[0].double(), -1).numpy()
    return kl_rows(np.exp(la[rows]), np.exp(lb[rows]))


def test_token_level_matches_numpy_kl(pair, tokenizer):
    a, b = pair
    r = kl_drift(a, b, CONV, tokenizer)
    assert r.level == "token" and [t.message for t in r.turns] == [1, 3]
    full, spans = message_spans(tokenizer, CONV)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    for turn in r.turns:
        cs, ce = spans[turn.message]
        first = len(tokenizer(full[:cs], add_special_tokens=False)["input_ids"])
        last = len(tokenizer(full[:ce], add_special_tokens=False)["input_ids"])  # content tokens end here
        rows = list(range(first - 1, last))  # content tokens + the end-of-turn token
        want = _numpy_kl(a, b, ids, rows)
        np.testing.assert_allclose(turn.positions, want, rtol=1e-6, atol=1e-9)
        assert turn.kl == pytest.approx(want.mean()) and turn.kl_sum == pytest.approx(want.sum())
    assert np.allclose(kl_drift(a, a, CONV, tokenizer).kl, 0.0)
    assert (r.kl > 0).all()


def test_byte_level_equals_token_level_for_a_byte_vocabulary(byte_tokenizer):
    a, b = make_tiny_llama(vocab_size=257, seed=0), make_tiny_llama(vocab_size=257, seed=1)
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hé, yo!"}]
    tok_level = kl_drift(a, b, conv, byte_tokenizer, level="token")
    byte_level = kl_drift(a, b, conv, byte_tokenizer, level="byte")
    assert byte_level.level == "byte"
    t, y = tok_level.turns[0].positions, byte_level.turns[0].positions
    assert t.shape == y.shape == (len("Hé, yo!".encode()) + 1,)
    np.testing.assert_allclose(y, t, rtol=1e-5, atol=1e-7)


def test_different_tokenizers_compare_at_the_byte_level(pair, tokenizer, byte_tokenizer):
    a = pair[0]
    b = make_tiny_llama(vocab_size=257, seed=2)
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes."}]
    r = kl_drift(a, b, conv, tokenizer, byte_tokenizer)
    assert r.level == "byte"
    pos = r.turns[0].positions
    assert pos.shape == (5,) and np.isfinite(pos).all() and (pos >= -1e-12).all()


def test_kl_drift_bad_input(pair, tokenizer, byte_tokenizer):
    a, b = pair
    with pytest.raises(ValueError, match="level='byte'"):
        kl_drift(a, b, CONV, tokenizer, byte_tokenizer, level="token")
    with pytest.raises(ValueError, match="level"):
        kl_drift(a, b, CONV, tokenizer, level="tokens")
    with pytest.raises(TypeError, match="conversation"):
        kl_drift(a, b, "hello", tokenizer)
    with pytest.raises(TypeError, match="conversation\\[0\\]"):
        kl_drift(a, b, [{"role": "user"}], tokenizer)
    with pytest.raises(ValueError, match="no message"):
        kl_drift(a, b, CONV[:1], tokenizer)
    with pytest.raises(ValueError, match="shape"):
        kl_rows(np.ones((2, 3)), np.ones((2, 4)))
    assert kl_rows([[0.5, 0.5]], [[1.0, 0.0]])[0] == np.inf
