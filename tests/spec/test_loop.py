"""The one speculative engine: the Drafter protocol and DraftTree, the loop with any drafter
(a custom one registered explicitly), SpecStats invariants, the lookup drafter (tree shape vs a
brute-force reference, greedy == HF greedy, exact sampling), request validation up front, and
two threads sharing one recycler."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import tokenloom
from tokenloom.decoding.methods import register_drafter, resolve_method
from tokenloom.spec.base import DraftTree, Drafter
from tokenloom.spec.lookup import LookupDrafter
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.templates import compile_template

from tests.reference.greedy import count_same_as_hf, hf_greedy, same_or_near_tie
from tests.reference.spec import joint_chi2, prompt_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- lookup: the tree against a brute-force reference ------------------------------------------


def ref_lookup_paths(seq, max_ngram, num_tokens, max_matches):
    """Continuations of the longest n-gram ending at seq[-1] that occurred before, most recent
    occurrence first (the rule of LookupDrafter, written plainly)."""
    for n in range(min(max_ngram, len(seq)), 0, -1):
        suffix = seq[len(seq) - n :]
        conts = []
        for end in range(len(seq) - 2, n - 2, -1):
            if seq[end - n + 1 : end + 1] == suffix and seq[end + 1 : end + 1 + num_tokens]:
                conts.append(seq[end + 1 : end + 1 + num_tokens])
            if len(conts) == max_matches:
                break
        if conts:
            return conts
    return []


def tree_paths(tree):
    """Every root-to-node token path of a DraftTree (root excluded), as a set of tuples."""
    out, paths = set(), {0: ()}
    for i in range(1, tree.size):
        paths[i] = paths[int(tree.parents[i])] + (int(tree.tokens[i]),)
        out.add(paths[i])
    return out


@pytest.mark.parametrize("seed", range(40))
def test_lookup_tree_matches_reference(seed):
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, 4, size=int(rng.integers(2, 40))).tolist()  # small alphabet: many matches
    max_ngram, num_tokens, max_matches = int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 5))
    d = LookupDrafter(max_ngram=max_ngram, num_tokens=num_tokens, max_matches=max_matches, max_nodes=1000)
    import torch

    d.prefill(torch.tensor([seq[:-1]]), seq[-1], None, None)
    tree = d.propose(seq[-1], len(seq) - 1)
    assert tree.parents[0] == -1 and all(0 <= tree.parents[i] < i for i in range(1, tree.size))
    assert all(tree.depths[i] == tree.depths[tree.parents[i]] + 1 for i in range(1, tree.size))
    want = set()
    for c in ref_lookup_paths(seq, max_ngram, num_tokens, max_matches):
        want |= {tuple(c[:j]) for j in range(1, len(c) + 1)}
    assert tree_paths(tree) == want
    assert len(tree_paths(tree)) == tree.size - 1, "no duplicate siblings"


def test_lookup_tree_shape_budget_and_bad_args():
    import torch

    d = LookupDrafter(max_ngram=1, num_tokens=3, max_matches=3, max_nodes=4)
    seq = [5, 1, 2, 3, 5, 1, 7, 8, 5, 9, 9, 9, 5]
    d.prefill(torch.tensor([seq[:-1]]), seq[-1], None, None)
    tree = d.propose(5, len(seq) - 1)
    assert tree.size - 1 == 4  # 3 continuations (9 9 9 / 1 7 8 / 1 2 3) cut to 4 nodes
    assert tree_paths(tree) == {(9,), (9, 9), (9, 9, 9), (1,)}
    with pytest.raises(ValueError, match="root"):
        d.propose(6, len(seq) - 1)
    for kw in ({"max_ngram": 0}, {"num_tokens": -1}, {"max_matches": 1.5}, {"max_nodes": True}):
        with pytest.raises(ValueError):
            LookupDrafter(**kw)


# --- the loop with any drafter ----------------------------------------------------------------


class ChainOfRepeats:
    """A custom drafter: proposes the root repeated ``n`` times (deterministic)."""

    name = "repeats"
    prefill_positions = 1

    def __init__(self, n=3):
        self.n = n
        self.seen = []

    def prefill(self, input_ids, first_token, cache, logits):
        self.seen.append(("prefill", int(first_token), int(logits.shape[0])))

    def propose(self, root, past_len):
        t = self.n + 1
        return DraftTree(np.full(t, root, dtype=np.int64), np.arange(-1, t - 1, dtype=np.int64), np.arange(t, dtype=np.int64))

    def accept(self, tree, result, logits):
        assert logits.shape[0] == tree.size
        self.seen.append(("accept", len(result.path)))

    def stats(self):
        return {"repeats_calls": len(self.seen)}


def test_custom_drafter_registered_explicitly(tiny_llama):
    made = []

    def factory(model, cfg, next_seed, *, n=3):
        made.append(ChainOfRepeats(n))
        return made[-1]

    register_drafter("test-repeats", factory)
    assert "test-repeats" in tokenloom.methods()
    assert isinstance(ChainOfRepeats(), Drafter)
    ids = prompt_ids(3)
    ref = hf_greedy(tiny_llama, ids, 20)
    out = tokenloom.generate(tiny_llama, ids, method="test-repeats", max_new_tokens=20, eos_token_id=[], n=2)
    assert out.sequences.tolist() == ref.tolist()
    spec = out.stats.spec
    assert spec.drafter == "repeats" and spec.steps == out.stats.steps - 1
    assert spec.drafted == 2 * spec.steps and sum(spec.tree_sizes.values()) == spec.steps
    assert spec.accepted == sum(a * c for a, c in spec.accepted_hist.items())
    assert spec.accepted_per_depth[0] >= spec.accepted_per_depth[-1]
    assert out.stats.extra["repeats_calls"] == len(made[-1].seen)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tokenloom.generate(tiny_llama, ids, method="test-repeats", max_new_tokens=0, nope=1)


def test_bad_drafter_output_is_a_clear_error(tiny_llama):
    class Bad(ChainOfRepeats):
        def propose(self, root, past_len):
            return [root]

    register_drafter("test-bad", lambda m, c, s: Bad())
    with pytest.raises(TypeError, match="DraftTree"):
        tokenloom.generate(tiny_llama, prompt_ids(4), method="test-bad", max_new_tokens=5, eos_token_id=[])

    class WrongDepths(ChainOfRepeats):
        def propose(self, root, past_len):
            tree = super().propose(root, past_len)
            return DraftTree(tree.tokens, tree.parents, np.zeros_like(tree.depths))

    register_drafter("test-wrong-depths", lambda m, c, s: WrongDepths())
    with pytest.raises(ValueError, match="depths"):
        tokenloom.generate(tiny_llama, prompt_ids(4), method="test-wrong-depths", max_new_tokens=5, eos_token_id=[])


@pytest.mark.parametrize("method", ["lookup", "recycling", "dyspec"])
def test_every_drafter_equals_hf_greedy_tiny(tiny_llama, method):
    kw = {"draft_layers": 1} if method == "dyspec" else {}
    for seed in range(3):
        ids = prompt_ids(seed + 50)
        ref = hf_greedy(tiny_llama, ids, 24)
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=24, eos_token_id=[], **kw)
        assert out.sequences.tolist() == ref.tolist(), (method, seed)
        assert out.stats.spec.steps == out.stats.steps - 1


def test_lookup_sampling_exact(tiny_llama):
    """Lookup drafts on a repetitive prompt are accepted often; the samples follow the exact
    joint law of three tokens (temperature 2, top-k 3)."""
    import torch

    base = prompt_ids(7, n=4)[0].tolist()
    ids = torch.tensor([base * 4])
    # the random tiny model continues the repeats often enough for drafts to hit
    def run(i):
        out = tokenloom.generate(tiny_llama, ids, method="lookup", max_new_tokens=3, temperature=2.0, top_k=3,
                                 seed=i, eos_token_id=[])
        return out.sequences[0, ids.shape[1]:].tolist(), out.stats.steps < 3

    pvalue, accepted = joint_chi2(tiny_llama, ids, 2.0, 3, 3, 1200, run)
    assert pvalue > 1e-3


# --- request validation up front --------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, err",
    [
        ({"top_p": 1.5}, ValueError),
        ({"top_k": 0}, ValueError),
        ({"min_p": -0.1}, ValueError),
        ({"seed": "abc"}, TypeError),
        ({"seed": 1.5}, TypeError),
        ({"temperature": 5e-324}, ValueError),
        ({"temperature": float("nan")}, ValueError),
        ({"temperature": -1.0}, ValueError),
        ({"max_new_tokens": -5}, ValueError),
        ({"max_new_tokens": 2.0}, ValueError),
        ({"eos_token_id": 10**9}, IndexError),
        ({"eos_token_id": [-1]}, ValueError),
        ({"method": "foo"}, ValueError),
        ({"method": "recycling", "nope": 1}, TypeError),
        ({"method": "recycling", "recide_every": 8}, TypeError),
    ],
)
def test_request_refused_before_any_model_work(tiny_llama, kw, err):
    calls = []
    handle = tiny_llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        for n in (0, 5):  # validated whatever the token budget and temperature
            args = {"max_new_tokens": n, **kw}
            with pytest.raises(err):
                tokenloom.generate(tiny_llama, prompt_ids(1), **args)
    finally:
        handle.remove()
    assert not calls, "the model ran before the request was refused"


def test_prompt_ids_outside_vocabulary(tiny_llama):
    import torch

    for bad in (torch.tensor([[1, 49152]]), torch.tensor([[-1, 3]])):
        with pytest.raises(IndexError, match="vocabulary"):
            tokenloom.generate(tiny_llama, bad, max_new_tokens=0)


def test_greedy_is_an_alias_of_plain(tiny_llama):
    assert resolve_method("greedy") is resolve_method("plain")
    ids = prompt_ids(5)
    a = tokenloom.generate(tiny_llama, ids, method="greedy", max_new_tokens=8, eos_token_id=[])
    b = tokenloom.generate(tiny_llama, ids, method="plain", max_new_tokens=8, eos_token_id=[])
    assert a.sequences.tolist() == b.sequences.tolist() and a.stats.spec is None


# --- threads ----------------------------------------------------------------------------------


def test_two_threads_share_one_recycler(tiny_llama):
    """Two generate calls on two threads on one recycler (and on the process-wide default one):
    no error, the same tokens as sequential runs (greedy output does not depend on the
    recycler's state), and the matrix holds only valid ids."""
    from tokenloom.spec.recycling.recycler import default_recycler

    prompts = [prompt_ids(60 + i) for i in range(4)]
    want = [tokenloom.generate(tiny_llama, p, method="plain", max_new_tokens=24, eos_token_id=[]).sequences.tolist()
            for p in prompts]
    for rec in (TokenRecycler(49152), None):
        got, errors = {}, []

        def work(i):
            try:
                for j in range(i, len(prompts), 2):
                    out = tokenloom.generate(tiny_llama, prompts[j], method="recycling", max_new_tokens=24,
                                             recycler=rec, tree="2.2.2-16", eos_token_id=[])
                    got[j] = out.sequences.tolist()
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert [got[j] for j in range(len(prompts))] == want
        matrix = (rec or default_recycler(49152, model=tiny_llama)).adjacency()
        assert int(matrix.max()) < 49152


def test_recycler_draft_and_update_from_two_threads():
    rec = TokenRecycler(1000, 8)
    template = compile_template("2.2.2-16")
    errors = []

    def work(seed):
        r = np.random.default_rng(seed)
        try:
            for _ in range(300):
                tree = rec.draft(int(r.integers(0, 1000)), template)
                rec.update(tree.tokens, r.integers(0, 1000, size=(tree.size, 8)))
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert int(rec.adjacency().max()) < 1000


# --- the embedded model ------------------------------------------------------------------------

PROMPTS = [
    "Repeat exactly: the cat sat on the mat, the cat sat on the mat.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List the days of the week.",
]


@pytest.mark.model
def test_lookup_equals_hf_greedy_embedded(smollm):
    model, tok = smollm
    same, out = count_same_as_hf(model, tok, PROMPTS, 48, method="lookup")
    assert same >= len(PROMPTS) - 1
    assert out.stats.spec.drafter == "lookup"
