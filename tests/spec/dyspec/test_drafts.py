"""Draft models for DySpec: every frontier row equals a plain forward over prefix + path, the
caches follow commits, EarlyExitDraft equals the truncated target, vocabulary checks."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tokenloom import DynamicTreeBuilder, EarlyExitDraft, HFDraft
from tokenloom.spec.dyspec.drafts import check_vocab
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import compact_cache
from tokenloom.runtime.treeattn import causal_attention_mask, prefix_tree_mask

from tokenloom.integrations.hf.models import make_tiny_llama

K = 3


@pytest.fixture(scope="module")
def tiny4():
    return make_tiny_llama(layers=4, seed=3)


def truncated(model, n_layers):
    """The first n_layers of a Llama + its final norm + lm_head, as a plain HF model."""
    m = copy.deepcopy(model)
    m.model.layers = m.model.layers[:n_layers]
    m.config.num_hidden_layers = n_layers
    return m


def plain_topk(model, tokens, k=K, temperature=1.0):
    with torch.inference_mode():
        logits = model(torch.tensor([tokens])).logits[0, -1].float()
    top = torch.softmax(logits / temperature, -1).topk(k)
    return top.indices, top.values


def path_of(b, n):
    out = []
    while n >= 0:
        tok, n, _ = b.node(n)
        out.append(tok)
    return list(reversed(out))


def check_step(draft, ref_model, seq, budget=10, max_depth=4, **builder_kw):
    """Grow one tree from seq[-1]; every frontier row must match ref_model on seq[:-1] + path."""
    b = DynamicTreeBuilder(budget, max_depth, k=K, **builder_kw)
    b.reset(seq[-1])
    checked = 0
    while not b.done:
        f = b.frontier()
        ids, probs = draft.expand(f)
        assert ids.shape == (f.size, K) and probs.dtype == torch.float32
        for r, n in enumerate(f.ids.tolist()):
            want_ids, want_probs = plain_topk(ref_model, seq[:-1] + path_of(b, n), temperature=draft.temperature)
            torch.testing.assert_close(probs[r], want_probs, atol=1e-4, rtol=0)
            # Random tiny models give top probabilities ~1e-3: also compare on the log scale.
            torch.testing.assert_close(probs[r].log(), want_probs.log(), atol=1e-4, rtol=0)
            assert ids[r].tolist() == want_ids.tolist()
            checked += 1
        b.expand(f.ids, ids, probs)
    assert draft.cache_len == len(seq) + checked - 1  # prefix + every forwarded non-root node
    return b.tree(), checked


def emitted_along(tree, n_accept, bonus):
    """Tokens a verifier would emit accepting the first n_accept nodes of the deepest path."""
    leaf = int(np.argmax(tree.depths))
    path = []
    while leaf > 0:
        path.append(int(tree.tokens[leaf]))
        leaf = int(tree.parents[leaf])
    path.reverse()
    return path[:n_accept] + [bonus]


@pytest.mark.parametrize("sampled", [False, True])
def test_hf_draft_rows_match_plain_forward(tiny_llama, sampled):
    target = make_tiny_llama(seed=1)
    draft = HFDraft(tiny_llama, target=target, k=K, temperature=0.7 if sampled else 1.0)
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(3, 49152, (7,), generator=gen).tolist()
    draft.start(seq)
    assert draft.cache_len == 6 and draft.pending == [seq[-1]]
    # Steps: accept the whole deepest path, nothing, then one token; the second step also
    # exercises a commit without any tree in between.
    for n_accept in (10, 0, 1):
        tree, checked = check_step(draft, tiny_llama, seq, sampled=sampled, seed=5)
        assert checked >= 2
        bonus = int(torch.randint(3, 49152, (1,), generator=gen))
        emitted = emitted_along(tree, n_accept, bonus)
        draft.commit(emitted)
        seq = seq + emitted
        assert draft.seq_len == len(seq) and draft.pending[-1] == bonus
        assert draft.cache_len + len(draft.pending) == len(seq)
    draft.commit([5, 6])  # tokens emitted without a tree: all pending
    seq += [5, 6]
    assert draft.pending[-2:] == [5, 6]
    check_step(draft, tiny_llama, seq)


def test_early_exit_equals_truncated_target(tiny4):
    for n_layers in (1, 2, 4):
        draft = EarlyExitDraft(tiny4, n_layers, k=K)
        ref = truncated(tiny4, n_layers)
        seq = list(range(100, 109))
        draft.start(seq)
        tree, _ = check_step(draft, ref, seq, budget=8, max_depth=3)
        emitted = emitted_along(tree, 2, 777)
        draft.commit(emitted)
        check_step(draft, ref, seq + emitted, budget=8, max_depth=3)


def test_early_exit_matches_hidden_states(tiny4):
    # Independent of the truncated copy: hidden_states[n] of the full target, then norm + head.
    seq = [5, 17, 300, 41, 9]
    draft = EarlyExitDraft(tiny4, 2, k=K)
    draft.start(seq)
    b = DynamicTreeBuilder(4, 1, k=K)
    b.reset(seq[-1])
    logits = draft.logits(b.frontier())[0]
    with torch.inference_mode():
        h = tiny4(torch.tensor([seq]), output_hidden_states=True).hidden_states[2][0, -1]
        want = tiny4.lm_head(tiny4.model.norm(h))
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_early_exit_adopts_target_cache(tiny4):
    from transformers import DynamicCache

    ref = truncated(tiny4, 2)
    seq = list(range(200, 210))
    draft = EarlyExitDraft(tiny4, 2, k=K)
    draft.start(seq)
    tree, _ = check_step(draft, ref, seq)
    emitted = emitted_along(tree, 2, 4242)
    draft.commit(emitted)
    seq = seq + emitted
    # The target's cache on the committed sequence minus the bonus token (as after a verify).
    cache = DynamicCache()
    with torch.inference_mode():
        tiny4(torch.tensor([seq[:-1]]), **cache_arg(tiny4, cache), use_cache=True)
    draft.adopt_cache(cache)
    assert draft.pending == [4242] and draft.cache_len == len(seq) - 1
    # Views of the target's tensors, not copies.
    assert draft._cache.layers[0].keys.data_ptr() == cache.layers[0].keys.data_ptr()
    check_step(draft, ref, seq)
    # The target's cache is left alone.
    assert cache.get_seq_length() == len(seq) - 1
    with pytest.raises(ValueError, match="commit"):
        draft.adopt_cache(cache)
    # Prefill straight from the target's prefill cache: nothing computed, same rows.
    fresh = EarlyExitDraft(tiny4, 2, k=K)
    fresh.start(seq, target_cache=cache)
    assert fresh.cache_len == len(seq) - 1 and fresh.pending == [4242]
    check_step(fresh, ref, seq)
    short = EarlyExitDraft(tiny4, 2, k=K)
    with pytest.raises(ValueError, match="outside"):
        short.start(seq[:5], target_cache=cache)


def test_mask_and_cache_helpers():
    m = prefix_tree_mask(2, 4, [[], [2], [3]], torch.float32, "cpu")[0, 0]
    seen = (m == 0).int().tolist()
    # Prefix [0, 2) always; rows also see their listed positions and themselves (4 + j).
    assert seen == [[1, 1, 0, 0, 1, 0, 0], [1, 1, 1, 0, 0, 1, 0], [1, 1, 0, 1, 0, 0, 1]]
    with pytest.raises(ValueError, match="visible"):
        prefix_tree_mask(2, 4, [[1]], torch.float32, "cpu")
    with pytest.raises(ValueError, match="prefix_len"):
        prefix_tree_mask(5, 4, [[]], torch.float32, "cpu")
    c = (causal_attention_mask(2, 1, torch.float32, "cpu")[0, 0] == 0).int().tolist()
    assert c == [[1, 1, 0], [1, 1, 1]]

    class L:
        def __init__(self):
            self.keys = torch.arange(6.0).view(1, 1, 6, 1)
            self.values = -self.keys

    class C:
        layers = [L()]

    cache = C()
    compact_cache(cache, 2, [2])  # prefix [0, 2) + tree entry 2 (position 4)
    assert cache.layers[0].keys.flatten().tolist() == [0, 1, 4]
    assert cache.layers[0].values.flatten().tolist() == [0, -1, -4]
    compact_cache(cache, 2, [])
    assert cache.layers[0].keys.flatten().tolist() == [0, 1]


def test_vocab_checks(tiny_llama):
    other = make_tiny_llama(vocab_size=1000)
    with pytest.raises(ValueError, match="vocabulary"):
        HFDraft(other, target=tiny_llama)

    class Tok:
        def __init__(self, v):
            self.v = v

        def get_vocab(self):
            return dict(self.v)

    with pytest.raises(ValueError, match="tokenizer"):
        check_vocab(tiny_llama, tiny_llama, Tok({"a": 0, "b": 1}), Tok({"a": 0, "c": 1}))
    check_vocab(tiny_llama, tiny_llama, Tok({"a": 0}), Tok({"a": 0}))


def test_vocab_check_real_tokenizer(tiny_llama, tokenizer):
    HFDraft(tiny_llama, target=tiny_llama, tokenizer=tokenizer, target_tokenizer=tokenizer)


def test_bad_draft_use(tiny_llama, tiny4):
    draft = HFDraft(tiny_llama)
    b = DynamicTreeBuilder(4, 2, k=K)
    b.reset(7)
    with pytest.raises(ValueError, match="start"):
        draft.expand(b.frontier())
    with pytest.raises(ValueError, match="start"):
        draft.commit([1])
    draft.start([1, 2, 3])
    with pytest.raises(ValueError, match="not the last committed token"):
        draft.expand(b.frontier())
    with pytest.raises(ValueError, match="at least one"):
        draft.start([])
    with pytest.warns(DeprecationWarning, match="use start"):
        draft.prefill([1, 2, 3])  # the old name
    b.reset(3)
    ids, probs = draft.expand(b.frontier())
    with pytest.raises(ValueError, match="at least one emitted"):
        draft.commit([])
    b.expand(b.frontier().ids, ids, probs)
    f = b.frontier()
    draft.expand(f)
    with pytest.raises(ValueError, match="already forwarded"):
        draft.expand(f)
    for bad in (0, 5, 1.5):
        with pytest.raises(ValueError, match="n_layers"):
            EarlyExitDraft(tiny4, bad)
    with pytest.raises(ValueError, match="Llama-style"):
        EarlyExitDraft(torch.nn.Linear(2, 2), 1)
    with pytest.raises(ValueError, match="k:"):
        HFDraft(tiny_llama, k=0)
    with pytest.raises(ValueError, match="temperature"):
        HFDraft(tiny_llama, temperature=0.0)


@pytest.mark.model
def test_early_exit_on_embedded_model(smollm):
    model, tok = smollm
    n_layers = 8
    draft = EarlyExitDraft(model, n_layers, k=4)
    seq = tok("The capital of France is")["input_ids"]
    draft.start(seq)
    b = DynamicTreeBuilder(6, 2, k=4)
    b.reset(seq[-1])
    while not b.done:
        f = b.frontier()
        ids, probs = draft.expand(f)
        for r, n in enumerate(f.ids.tolist()):
            with torch.inference_mode():
                hs = model(torch.tensor([seq[:-1] + path_of(b, n)]), output_hidden_states=True).hidden_states
                want = torch.softmax(model.lm_head(model.model.norm(hs[n_layers][0, -1])).float(), -1)
            torch.testing.assert_close(probs[r], want[ids[r]], atol=1e-4, rtol=0)
            assert ids[r].tolist() == want.topk(4).indices.tolist()
        b.expand(f.ids, ids, probs)
