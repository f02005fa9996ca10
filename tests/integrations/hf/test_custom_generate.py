"""Drop-in paths (issue 7 items 2-3): ``custom_generate=tokenloom.hf.recycling_generate``, the
assisted-generation ``RecyclingCandidateGenerator``, the step API (``TokenRecycler.propose`` /
``TreeStep.accept``) and ``examples/own_loop.py``: same greedy tokens as HF greedy and
``tokenloom.generate``; lossless sampling through the step API; clear errors on bad input."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

import tokenloom
import tokenloom.integrations.hf.custom_generate as tlhf
from tokenloom.runtime.compat import cache_arg
from tokenloom.spec.recycling.recycler import TokenRecycler

from tests.reference.greedy import same_or_near_tie as _same_or_near_tie
from tests.reference.spec import exact_joint as _exact_joint, prompt_ids as _prompt

ROOT = pathlib.Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def own_loop():
    spec = importlib.util.spec_from_file_location("own_loop_example", ROOT / "examples" / "own_loop.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.own_loop


def _hf(model, ids, n, **kw):
    import torch

    kw.setdefault("eos_token_id", None)
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, pad_token_id=0, **kw)


class _Streamer:
    def __init__(self):
        self.parts, self.ended = [], 0

    def put(self, x):
        self.parts.append(x.flatten().tolist())

    def end(self):
        self.ended += 1


# --- tiny random Llama: exact structural equality ---------------------------------------------


def test_custom_generate_greedy_equals_hf(tiny_llama):
    rec = TokenRecycler(49152)
    for seed in range(3):
        ids = _prompt(seed)
        hf = _hf(tiny_llama, ids, 40, do_sample=False)
        st = _Streamer()
        ours = _hf(tiny_llama, ids, 40, do_sample=False, custom_generate=tlhf.recycling_generate,
                   recycler=rec, streamer=st)
        assert ours.tolist() == hf.tolist()
        assert sum(st.parts, []) == hf[0].tolist() and st.ended == 1, "prompt once, then the new tokens"
        tl = tokenloom.generate(tiny_llama, ids, method="recycling", max_new_tokens=40, eos_token_id=[], recycler=rec)
        assert tl.sequences.tolist() == hf.tolist()
    out = _hf(tiny_llama, ids, 9, do_sample=False, custom_generate=tlhf.recycling_generate,
              return_dict_in_generate=True)
    assert type(out).__name__ == "GenerateDecoderOnlyOutput" and out.sequences.tolist() == hf[:, : ids.shape[1] + 9].tolist()


def test_custom_generate_stops_at_eos(tiny_llama):
    ids = _prompt(5)
    hf = _hf(tiny_llama, ids, 30, do_sample=False)
    eos = int(hf[0, ids.shape[1] + 7])
    want = _hf(tiny_llama, ids, 30, do_sample=False, eos_token_id=eos)
    ours = _hf(tiny_llama, ids, 30, do_sample=False, eos_token_id=eos, custom_generate=tlhf.recycling_generate)
    assert ours.tolist() == want.tolist() and ours[0, -1].item() == eos


def test_custom_generate_maps_sampling(tiny_llama, monkeypatch):
    """do_sample + temperature / top_k / top_p / min_p reach tokenloom.generate unchanged, and
    the seed comes from torch's global generator (torch.manual_seed reproduces a run with a
    fixed draft tree and the same recycler state: each run gets a fresh recycler, as the
    process-wide one learns from every run; tree="auto" re-sizes drafts from measured step
    times)."""
    import torch

    import importlib

    gen_module = importlib.import_module("tokenloom.decoding.generate")  # where custom_generate finds it
    seen = []
    real = gen_module.generate

    def spy(*args, **kw):
        seen.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(gen_module, "generate", spy)
    ids = _prompt(3)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(_hf(tiny_llama, ids, 12, do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05,
                        custom_generate=tlhf.recycling_generate, tree="2.2.2-8", recycler=TokenRecycler(49152)))
    assert runs[0].tolist() == runs[1].tolist()
    kw = seen[0]
    assert (kw["temperature"], kw["top_k"], kw["top_p"], kw["min_p"]) == (0.7, 20, 0.9, 0.05)
    assert kw["method"] == "recycling" and kw["max_new_tokens"] == 12 and kw["seed"] == seen[1]["seed"]
    _hf(tiny_llama, ids, 5, do_sample=True, custom_generate=tlhf.recycling_generate)  # HF's defaults: top_k=50
    assert (seen[-1]["temperature"], seen[-1]["top_k"], seen[-1]["top_p"]) == (1.0, 50, None)
    _hf(tiny_llama, ids, 5, do_sample=False, top_k=5, custom_generate=tlhf.recycling_generate)
    assert seen[-1]["temperature"] == 0.0 and seen[-1]["exact_rows"] is False
    _hf(tiny_llama, ids, 5, do_sample=False, custom_generate=tlhf.recycling_generate, exact_rows=True)
    assert seen[-1]["exact_rows"] is True  # passes through HF's generate


def test_assisted_candidate_generator_greedy_equals_hf(tiny_llama):
    rec = TokenRecycler(49152)
    model = tiny_llama
    for seed in range(3):
        ids = _prompt(seed)
        hf = _hf(model, ids, 40, do_sample=False)
        gen = tlhf.RecyclingCandidateGenerator(rec, num_tokens=5)
        st = _Streamer()
        ours = _hf(model, ids, 40, do_sample=False, custom_generate=tlhf.recycling_assisted_generate,
                   candidate_generator=gen, streamer=st)
        assert ours.tolist() == hf.tolist()
        assert sum(st.parts, []) == hf[0].tolist() and st.ended == 1
        assert "_get_candidate_generator" not in vars(model), "the patch is undone"
    assert gen.mean_accepted > 1.5, "the tiny model repeats itself: a hot recycler's chains are accepted"
    assert rec.adjacency()[hf[0, -3:]].any(), "update_candidate_strategy wrote rows"


def test_candidate_generator_chain_and_update():
    import torch

    rec = TokenRecycler(50, k=3)
    rec.update([7, 8, 9], [[8, 1, 2], [9, 3, 4], [11, 5, 6]])
    gen = tlhf.RecyclingCandidateGenerator(rec, num_tokens=4, eos_token_id=11, max_length=100)
    ids = torch.tensor([[3, 7]])
    cand, logits = gen.get_candidates(ids)
    assert logits is None and cand.tolist() == [[3, 7, 8, 9]], "rank-0 chain 7 -> 8 -> 9, cut before EOS 11"
    scores = torch.full((1, 3, 50), -1.0)
    for i, best in enumerate(([20, 21, 22], [23, 24, 25], [26, 27, 28])):
        scores[0, i, best] = torch.tensor([3.0, 2.0, 1.0])
    gen.update_candidate_strategy(torch.tensor([[3, 7, 8]]), scores, 1)
    a = rec.adjacency()
    assert a[7].tolist() == [20, 21, 22] and a[8].tolist() == [23, 24, 25] and a[9].tolist() == [26, 27, 28]
    assert gen.mean_accepted == 2.0
    short = tlhf.RecyclingCandidateGenerator(rec, num_tokens=4, max_length=4)
    assert short.get_candidates(torch.tensor([[1, 2, 7]]))[0].tolist() == [[1, 2, 7]], "no room: no candidates"
    with pytest.raises(ValueError, match="num_tokens"):
        tlhf.RecyclingCandidateGenerator(rec, num_tokens=0)


def test_assisted_patch_restored_on_error(tiny_llama):
    class Boom(tlhf.RecyclingCandidateGenerator):
        def get_candidates(self, input_ids):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        _hf(tiny_llama, _prompt(1), 5, do_sample=False, custom_generate=tlhf.recycling_assisted_generate,
            candidate_generator=Boom(TokenRecycler(49152)))
    assert "_get_candidate_generator" not in vars(tiny_llama)


def test_step_api_and_example_equal_greedy(tiny_llama, own_loop):
    rec = TokenRecycler(49152)
    for seed in range(3):
        ids = _prompt(seed)
        want = tokenloom.generate(tiny_llama, ids, method="greedy", max_new_tokens=40, eos_token_id=[]).sequences
        assert own_loop(tiny_llama, ids, 40, eos=-1, recycler=rec).tolist() == want.tolist()
    assert rec.adjacency()[want[0, -5:]].any()


def test_step_fields_and_keep(tiny_llama):
    import torch
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import cache_length
    from tokenloom.runtime.treeattn import tree_attention_mask, tree_position_ids

    rec = TokenRecycler(49152)
    ids = _prompt(9)
    tokenloom.generate(tiny_llama, ids, method="recycling", max_new_tokens=30, recycler=rec, eos_token_id=[],
                       tree="2.2.2-8")
    cache = DynamicCache()
    with torch.inference_mode():
        logits = tiny_llama(input_ids=ids, **cache_arg(tiny_llama, cache)).logits
        last, past = int(logits[0, -1].argmax()), ids.shape[1]
        step = _propose(rec, last, past, tree="2.2.2-8")
        t = step.size
        assert step.input_ids.shape == (1, t) and step.input_ids[0, 0].item() == last
        assert step.input_ids.dtype == torch.long and step.position_ids.dtype == torch.long
        assert torch.equal(step.attention_mask, tree_attention_mask(step.tree.parents, past))
        assert torch.equal(step.position_ids, tree_position_ids(step.tree.depths, past))
        out = tiny_llama(input_ids=step.input_ids, attention_mask=step.attention_mask,
                         position_ids=step.position_ids, **cache_arg(tiny_llama, cache)).logits
        new, keep = step.verify(out)
    assert len(new) == len(step.path) >= 1 and step.path[0] == 0
    assert keep.tolist() == list(range(past)) + [past + int(i) for i in step.path]
    assert cache_length(cache) == past + t
    seq = ids[0].tolist() + [last]
    want = tokenloom.generate(tiny_llama, ids, method="greedy", max_new_tokens=1 + len(new), eos_token_id=[])
    assert seq[past:] + new == want.sequences[0, past:].tolist()
    with pytest.raises(RuntimeError, match="already verified"):
        step.verify(out)
    with pytest.raises(RuntimeError, match="already verified"), pytest.warns(DeprecationWarning, match="TreeStep.verify"):
        step.accept(out)  # the old name


def _propose(rec, last, past, tree="2.2.2-4", **kw):
    """The step API over Token Recycling's drafter (which owns the template ``tree``)."""
    from tokenloom.spec.recycling.drafter import RecyclingDrafter
    from tokenloom.spec.step import TreeStep

    return TreeStep.propose(RecyclingDrafter(rec, tree=tree, seed_prefill=False), last, past, **kw)


def _step_sampling_joint(model, ids, rec, tree, temperature, top_k, trials, depth=3):
    """Sample ``depth`` tokens with the step API only: the prompt's last token is the first root."""
    import torch
    from transformers import DynamicCache

    counts, accepted = {}, 0
    with torch.inference_mode():
        for i in range(trials):
            cache = DynamicCache()
            model(input_ids=ids[:, :-1], **cache_arg(model, cache))
            out, last, past, steps = [], int(ids[0, -1]), ids.shape[1] - 1, 0
            while len(out) < depth:
                step = _propose(rec, last, past, tree)
                logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                               position_ids=step.position_ids, **cache_arg(model, cache)).logits
                new, keep = step.verify(logits, temperature=temperature, top_k=top_k, seed=1000 * i + steps)
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys.index_select(2, keep), layer.values.index_select(2, keep)
                out += new
                past, last, steps = past + len(new), new[-1], steps + 1
            key = tuple(out[:depth])
            counts[key] = counts.get(key, 0) + 1
            accepted += steps < depth
    return counts, accepted


def test_step_api_sampling_is_lossless(tiny_llama):
    """Seeded chi-square: three tokens sampled through propose/accept (trees that hit and miss)
    follow the exact joint law of token-by-token sampling with the same transforms."""
    from tokenloom.eval.exactness import chi2_pvalue

    temperature, top_k, trials = 2.0, 3, 1500
    ids = _prompt(21, n=8)
    rec = TokenRecycler(49152)
    tokenloom.generate(tiny_llama, ids, method="recycling", max_new_tokens=20, recycler=rec, eos_token_id=[],
                       tree="2.2.2")
    exact = _exact_joint(tiny_llama, ids, temperature, top_k, 3)
    counts, accepted = _step_sampling_joint(tiny_llama, ids, rec, [[0], [1], [0, 0], [0, 1], [1, 0]], temperature, top_k, trials)
    assert set(counts) <= set(exact) and sum(counts.values()) == trials
    assert accepted > 100, "drafts were accepted in many trials"
    assert chi2_pvalue(exact, counts) > 1e-3


# --- bad input --------------------------------------------------------------------------------


def test_step_bad_input():
    import torch

    rec = TokenRecycler(100, k=4)
    with pytest.raises(IndexError):
        _propose(rec, 100, 0)
    with pytest.raises(ValueError, match="past_len"):
        _propose(rec, 1, -1)
    with pytest.raises(ValueError, match="dtype"):
        _propose(rec, 1, 0, dtype=torch.int64)
    with pytest.raises(TypeError, match="last_token"):
        _propose(rec, 1.5, 0)
    step = _propose(rec, 3, 2)
    t = step.size
    with pytest.raises(ValueError, match="float tensor"):
        step.verify(torch.zeros(t, 100, dtype=torch.long))
    with pytest.raises(ValueError, match=rf"expected shape \[{t}, V\]"):
        step.verify(torch.zeros(100))  # 1-D
    with pytest.raises(ValueError, match=rf"expected shape \[{t}, V\]"):
        step.verify(torch.zeros(t + 1, 100))
    with pytest.raises(ValueError, match=rf"expected shape \[{t}, V\]"):
        step.verify(torch.zeros(2, t, 100))  # batch > 1
    with pytest.raises(ValueError, match="vocabulary axis"):
        step.verify(torch.zeros(t, 101))
    bad = torch.zeros(t, 100)
    bad[1, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        step.verify(bad)
    with pytest.raises(ValueError, match="NaN"):
        step.verify(bad, temperature=1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        step.verify(np.zeros((t, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="temperature"):
        step.verify(torch.zeros(t, 100), temperature=-1.0)
    with pytest.raises(ValueError):
        step.verify(torch.zeros(t, 100), temperature=1.0, top_p=2.0)
    assert not rec.adjacency().any(), "a refused accept writes nothing"
    ok = torch.zeros(1, t, 100)  # [1, T, V] is fine
    ok[..., 5] = 1.0  # the target wants 5 everywhere; the cold rows drafted 0s: nothing accepted
    new, keep = step.verify(ok)
    assert new == [5] and keep.tolist() == [0, 1, 2] and step.path.tolist() == [0]
    assert rec.adjacency()[0, 0] == 5 and rec.adjacency()[3, 0] == 5


def test_hf_paths_bad_input(tiny_llama):
    import torch

    ids = _prompt(2)
    two = torch.cat([ids, ids])
    with pytest.raises(ValueError, match="batch size 1"):
        tiny_llama.generate(two, attention_mask=torch.ones_like(two), max_new_tokens=4, pad_token_id=0,
                            custom_generate=tlhf.recycling_assisted_generate)
    g = tlhf.recycling_generate
    padded = torch.ones_like(ids)
    padded[0, -1] = 0
    with pytest.raises(ValueError, match="right padding"):
        tiny_llama.generate(ids, attention_mask=padded, max_new_tokens=4, pad_token_id=0, custom_generate=g)
    with pytest.raises(ValueError, match="RepetitionPenaltyLogitsProcessor is not supported"):
        _hf(tiny_llama, ids, 4, repetition_penalty=1.3, custom_generate=g)
    with pytest.raises(ValueError, match="MaxTimeCriteria is not supported"):
        _hf(tiny_llama, ids, 4, max_time=100.0, custom_generate=g)
    with pytest.raises(ValueError, match="output_scores"):
        _hf(tiny_llama, ids, 4, return_dict_in_generate=True, output_scores=True, custom_generate=g)
    with pytest.raises(ValueError, match="beam search"):
        _hf(tiny_llama, ids, 4, num_beams=2, custom_generate=g)
    with pytest.raises(TypeError, match="through model.generate"):
        g(tiny_llama, ids)
    with pytest.raises(TypeError, match="TokenRecycler"):
        tlhf.RecyclingCandidateGenerator(object())


def test_recycling_generate_batch_is_hf_batched_greedy(tiny_llama):
    """custom_generate with a left-padded batch of 3 (rows of different lengths): HF's own
    batched greedy tokens, finished rows padded as HF pads them."""
    import torch

    rows = [_prompt(s)[0, : 12 - 3 * s] for s in range(3)]
    ids = torch.zeros((3, 12), dtype=torch.long)
    mask = torch.zeros((3, 12), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, 12 - len(r) :], mask[b, 12 - len(r) :] = r, 1
    kw = dict(attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    ref = tiny_llama.generate(ids, **kw)
    ours = tiny_llama.generate(ids, custom_generate=tlhf.recycling_generate, **kw)
    assert ours.tolist() == ref.tolist()


# --- the embedded model -----------------------------------------------------------------------

EMBEDDED_PROMPTS = [
    "Explain speculative decoding in two sentences.",
    "Write a Python function that returns the n-th Fibonacci number.",
]


@pytest.mark.model
def test_every_path_equals_hf_greedy_on_embedded_model(smollm, own_loop):
    from tokenloom.integrations.hf.chat import chat_input_ids

    model, tok = smollm
    rec = TokenRecycler(model.config.vocab_size)
    step_rec = TokenRecycler(model.config.vocab_size)
    exact = 0
    for prompt in EMBEDDED_PROMPTS:
        ids = chat_input_ids(tok, prompt)
        hf = _hf(model, ids, 64, do_sample=False, eos_token_id=2)[0].tolist()
        outs = {
            "generate": tokenloom.generate(model, ids, method="recycling", max_new_tokens=64, recycler=rec,
                                          tree="2.2.2-16").sequences,
            "custom_generate": _hf(model, ids, 64, do_sample=False, eos_token_id=2,
                                   custom_generate=tlhf.recycling_generate, recycler=rec, tree="2.2.2-16"),
            "assisted": _hf(model, ids, 64, do_sample=False, eos_token_id=2,
                            custom_generate=tlhf.recycling_assisted_generate, recycler=rec),
            "own_loop": own_loop(model, ids, 64, eos=2, recycler=step_rec),
        }
        for name, out in outs.items():
            exact += _same_or_near_tie(model, out[0].tolist(), hf)
    assert exact >= 4 * len(EMBEDDED_PROMPTS) - 1


def test_recycler_propose_is_deprecated_and_still_works():
    """``recycler.propose`` (the step API over the recycler's own template) warns and gives
    the step of a drafter owning that template."""
    with pytest.warns(DeprecationWarning):
        rec = TokenRecycler(100, k=4, template="2.2.2-4")
    rec.update([3, 5], [[5, 6, 7, 8], [9, 1, 2, 4]])
    with pytest.warns(DeprecationWarning, match="TreeStep.propose"):
        old = rec.propose(3, 2)
    new = _propose(rec, 3, 2, tree="2.2.2-4")
    assert old.tree.tokens.tolist() == new.tree.tokens.tolist() and old.tree.parents.tolist() == new.tree.parents.tolist()
