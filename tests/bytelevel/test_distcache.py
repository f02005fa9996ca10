"""ByteLM memory: every internal table stays within its bound in a long-lived process, reset()
frees everything, the memory bound refuses all-covers blow-ups before allocating (canonical
mode unaffected), and models off the CPU are refused up front."""

from __future__ import annotations

import numpy as np
import pytest

from tokenloom import ByteLM, ByteVocab, MemoryBoundError
from tokenloom.bytelevel.distcache import KEYS_PER_DIST
from tokenloom.bytelevel.lookahead import AFTER_SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = b"def f(x):\n    return x + 1\n\nfor i in range(10):\n    print(f(i))\n"
FUZZ = b"    for i in range(len(s"


@pytest.fixture(scope="module")
def vocab(tiny_llama, tokenizer):
    return ByteVocab.from_tokenizer(tokenizer, vocab_size=tiny_llama.get_output_embeddings().weight.shape[0])


def _assert_bounded(lm, size):
    u = lm.memory_usage()
    assert u["distributions"] <= size
    assert u["prefix_ids"] <= KEYS_PER_DIST * max(size, 1)
    assert u["lookahead_keys"] <= u["distributions"]
    assert u["lookahead_priors"] <= AFTER_SIZE
    assert u["cover_dists"] <= u["cover_nodes"]
    assert 0 < u["bytes"] <= lm.max_memory_bytes
    return u


@pytest.mark.parametrize("canonical", [True, False])
def test_tables_bounded_and_reset_frees_everything(tiny_llama, tokenizer, vocab, canonical):
    size = 4
    lm = ByteLM(tiny_llama, tokenizer, canonical=canonical, vocab=vocab, cache_size=size)
    ref = ByteLM(tiny_llama, tokenizer, canonical=canonical, vocab=vocab)
    spans = [(i, j) for i in range(0, len(TEXT) - 8, 5) for j in (i + 3, i + 8)]
    seen_ids = 0
    for k, (i, j) in enumerate(spans):
        x = TEXT[i:j]
        p = lm.next_byte_probs(x)
        if k % 7 == 0:
            assert np.abs(p - ref.next_byte_probs(x)).max() < 1e-6
        lm.generate(x, 2)
        seen_ids = max(seen_ids, _assert_bounded(lm, size)["prefix_ids"])
    assert len(spans) >= 20 and seen_ids > size  # the id table was exercised past the dist bound
    lm.reset()
    assert all(v == 0 for v in lm.memory_usage().values()), lm.memory_usage()
    assert np.abs(lm.next_byte_probs(b"def f") - ref.next_byte_probs(b"def f")).max() < 1e-6


def test_reset_frees_the_default_cache(tiny_llama, tokenizer, vocab):
    lm = ByteLM(tiny_llama, tokenizer, vocab=vocab)
    lm.next_byte_probs(TEXT[:30])
    assert lm.memory_usage()["distributions"] > 0 and lm.memory_usage()["kv_slots"] > 0
    lm.reset()
    assert all(v == 0 for v in lm.memory_usage().values())


def test_memory_bound_refuses_all_covers_blowup(tiny_llama, tokenizer, vocab):
    """The fuzzing case: all covers of an indented line grow past any memory; with a bound the
    ByteLM refuses before the forward that would pass it, and holds less than the bound."""
    bound = 64 << 20
    lm = ByteLM(tiny_llama, tokenizer, canonical=False, vocab=vocab, max_paths=1 << 16, max_memory_bytes=bound)
    assert lm.max_memory_bytes == bound
    with pytest.raises(MemoryBoundError, match="max_memory_bytes") as err:
        for i in range(len(FUZZ) + 1):
            lm.next_byte_probs(FUZZ[:i])
    assert isinstance(err.value, MemoryError) and isinstance(err.value, ValueError)
    assert lm.memory_usage()["bytes"] <= bound
    # The same bound leaves canonical mode alone: same numbers as without a bound.
    canon = ByteLM(tiny_llama, tokenizer, vocab=vocab, max_paths=1 << 16, max_memory_bytes=bound)
    free = ByteLM(tiny_llama, tokenizer, vocab=vocab)
    for i in range(len(FUZZ) + 1):
        assert np.abs(canon.next_byte_probs(FUZZ[:i]) - free.next_byte_probs(FUZZ[:i])).max() < 1e-6
    assert canon.generate(FUZZ, 8) == free.generate(FUZZ, 8)


def test_memory_bound_drops_lookahead_rows_first(tiny_llama, tokenizer, vocab):
    """Near the bound, look-ahead rows (optional, exact) are left out before anything is refused."""
    x = b"def f(x):\n  return x"
    free = ByteLM(tiny_llama, tokenizer, vocab=vocab, lookahead=8)
    ps = [free.next_byte_probs(x[:i]) for i in range(len(x) + 1)]
    need = free.memory_usage()["bytes"]
    tight = ByteLM(tiny_llama, tokenizer, vocab=vocab, lookahead=8, max_memory_bytes=need + (2 << 20))
    qs = [tight.next_byte_probs(x[:i]) for i in range(len(x) + 1)]
    assert max(np.abs(p - q).max() for p, q in zip(ps, qs)) < 1e-6
    assert tight.lookahead_rows < free.lookahead_rows


def test_memory_bound_bad_input(tiny_llama, tokenizer, vocab):
    for bad in (0, -1, 1.5, True, "1GB"):
        with pytest.raises(ValueError, match="max_memory_bytes"):
            ByteLM(tiny_llama, tokenizer, vocab=vocab, max_memory_bytes=bad)  # type: ignore[arg-type]
    for bad in (-1, 2.5, "8"):
        with pytest.raises(ValueError, match="cache_size"):
            ByteLM(tiny_llama, tokenizer, vocab=vocab, cache_size=bad)  # type: ignore[arg-type]


def test_inputs_on_the_model_device(tiny_llama, tokenizer, vocab, monkeypatch):
    """Every tensor ByteLM hands the model is on the model's device (CPU here; the code makes
    them on ``model_dtype_device(model)``; the accelerator branch: tests/bytelevel/test_rows.py)."""
    import torch

    devices = []
    orig = type(tiny_llama).forward

    def spy(self, *args, **kwargs):
        devices.extend(v.device for v in list(args) + list(kwargs.values()) if isinstance(v, torch.Tensor))
        return orig(self, *args, **kwargs)

    monkeypatch.setattr(type(tiny_llama), "forward", spy)
    lm = ByteLM(tiny_llama, tokenizer, vocab=vocab)
    lm.next_byte_probs(TEXT[:20])
    lm.generate(b"def", 4)
    want = next(tiny_llama.parameters()).device
    assert devices and all(d == want for d in devices)
