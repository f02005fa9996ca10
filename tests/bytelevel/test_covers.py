"""A prefix given at once (``logprob`` of a text, a new prompt) is expanded in one batched forward
(``CoverTree.extension_plan``): same numbers as byte by byte and as the brute force, in both
modes, with or without the plan (a tiny distribution cache forces the level-by-level fallback)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tokenloom import ByteLM

from tests.reference.bytes import BruteForce, plan_paths, ref_extension_plan

TEXTS = [b"def f(x):\n    return x + 1", b"Hello, world! It's a test.", b"a  b\n\n  c"]


def byte_by_byte_logprob(lm: ByteLM, data: bytes) -> float:
    """log P(data) by the chain rule, one next-byte distribution per byte."""
    lm.reset()
    return sum(math.log(lm.next_byte_probs(data[:i])[data[i]]) for i in range(len(data)))


@pytest.mark.parametrize("canonical", [True, False], ids=["canonical", "all"])
def test_whole_text_in_one_forward(tiny_llama, tokenizer, canonical):
    texts = TEXTS if canonical else [b"def f(x)", b"a b c"]
    lm = ByteLM(tiny_llama, tokenizer, canonical=canonical, lookahead=0)
    for data in texts:
        lm.reset()
        f0 = lm.forwards
        lp = lm.logprob(data)
        planned = lm.forwards - f0
        # the context, then one forward for every exact path (the plan), nothing sequential
        assert planned <= 2, data
        assert abs(lp - byte_by_byte_logprob(lm, data)) < 1e-4, data
        # the level-by-level fallback (the plan does not fit a tiny cache) agrees
        small = ByteLM(tiny_llama, tokenizer, canonical=canonical, lookahead=0, cache_size=2)
        assert abs(small.logprob(data) - lp) < 1e-5, data
        assert small.forwards > planned


@pytest.mark.parametrize("canonical", [True, False], ids=["canonical", "all"])
def test_jump_matches_brute_force(tiny_llama, tokenizer, canonical):
    """A fresh prefix of several tokens (one planned forward) against the brute force."""
    lm = ByteLM(tiny_llama, tokenizer, canonical=canonical)
    bf = BruteForce(tiny_llama, lm.vocab, lm.context_ids, canonical)
    for x in [b"def fib", b"x = 12", b"  a b"]:
        lm.reset()
        p = lm.next_byte_probs(x)
        q, total = bf.next_byte_probs(x)
        assert np.abs(p - q).max() < 1e-5, x
        assert abs(lm.logprob(x) - math.log(total)) < 1e-5, x


@pytest.mark.parametrize("data", [b"", b"a", b"https://", b"    return", b"def fib"])
def test_extension_plan_matches_reference(tokenizer, data):
    """From the root (all covers): the listed rows are exactly the exact prefixes of the covers
    (the pure-Python reference), and the root matters when any does."""
    from tokenloom import ByteVocab
    from tokenloom._core import CoverTree

    vocab = ByteVocab.from_tokenizer(tokenizer)
    tree = CoverTree(vocab.index, False)
    for b in data:
        tree.push(b)
    matters, rows = tree.extension_plan([0], 10**6)
    want = ref_extension_plan(vocab.token_bytes, data)
    assert matters == [bool(want)] and all(i == 0 for i, _, _ in rows)
    assert sorted(plan_paths(rows)) == [p for p in want if p]


def test_extension_plan_refuses_past_limit(tiny_llama, tokenizer):
    from tokenloom._core import CoverTree

    lm = ByteLM(tiny_llama, tokenizer, canonical=False)
    tree = CoverTree(lm.vocab.index, False)
    for b in b"abab":
        tree.push(b)
    matters, rows = tree.extension_plan([0], 10_000)
    assert matters == [True] and rows
    assert all(parent < k for k, (_, parent, _) in enumerate(rows))
    assert tree.extension_plan([0], len(rows) - 1) is None
    with pytest.raises(ValueError):
        tree.extension_plan([0], -1)
    tree.expand(0)
    with pytest.raises(ValueError, match="already expanded"):
        tree.extension_plan([0], 10)


def test_plan_dropped_when_past_the_memory_bound(tiny_llama, tokenizer):
    """When the planned rows would pass the memory bound, the forward goes level by level."""
    from tokenloom import MemoryBoundError

    data = TEXTS[0]
    ref = ByteLM(tiny_llama, tokenizer, lookahead=0).logprob(data)
    lm = ByteLM(tiny_llama, tokenizer, lookahead=0)
    eng = lm._engine
    check = eng._check_memory
    refused = []

    def tight(st, rows, what):
        if st is not None and not refused:
            refused.append(rows)
            raise MemoryBoundError("test bound")
        return check(st, rows, what)

    eng._check_memory = tight
    assert abs(lm.logprob(data) - ref) < 1e-5
    assert refused and lm.forwards > 2
