"""generate(method="cautious") (CNTP): the trial-count schedule and perplexity selection, plain
sampling when the trigger never fires, every trial's log-probabilities from the one tree forward
per step against separate plain forwards, the stop rules, determinism, bad input."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import tokenloom
from tokenloom.decoding.cautious import CautiousRecord, entropy, punctuation_ids, select_trial, trial_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = torch.tensor([[1, 450, 3092, 17, 2241, 88]])


def test_trial_count_schedule():
    # the reference: int(min + (max - min) * clamp((H - low) / (high - low), 0, 1))
    assert trial_count(0.0, 0.01, 1.5, 1, 10) == 1
    assert trial_count(0.01, 0.01, 1.5, 1, 10) == 1
    assert trial_count(1.5, 0.01, 1.5, 1, 10) == 10
    assert trial_count(9.0, 0.01, 1.5, 1, 10) == 10
    assert trial_count(0.755, 0.01, 1.5, 1, 10) == 5  # 1 + 9 * 0.5 = 5.5 -> 5
    hs = np.linspace(0, 2, 50)
    counts = [trial_count(h, 0.01, 1.5, 1, 10) for h in hs]
    assert counts == sorted(counts)  # more trials as confidence drops


def test_select_trial_lowest_perplexity_first_on_ties():
    assert select_trial([[-1.0, -1.0], [-0.5], [-2.0]]) == 1
    assert select_trial([[-0.5, -0.5], [-0.5]]) == 0  # equal mean: the earliest
    assert select_trial([[-3.0, -0.1, -0.1], [-1.0]]) == 1  # mean, not sum: 1.07 > 1.0
    with pytest.raises(ValueError):
        select_trial([])
    with pytest.raises(ValueError):
        select_trial([[]])


def test_entropy_and_punctuation(tokenizer):
    assert entropy(np.array([0.5, 0.5, 0.0])) == pytest.approx(math.log(2))
    ids = punctuation_ids(tokenizer)
    assert len(ids) == 10 and tokenizer.encode(".", add_special_tokens=False)[0] in ids


@pytest.mark.parametrize("temperature, dtype", [(0.0, "float32"), (1.0, "float32"), (1.0, "bfloat16")])
def test_equals_plain_sampling_when_the_trigger_never_fires(tiny_llama, temperature, dtype):
    if dtype == "bfloat16":  # verification and the entropy trigger read float32 logits of a bfloat16 model
        tiny_llama = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    kw = dict(max_new_tokens=12, temperature=temperature, seed=5, eos_token_id=2)
    plain = tokenloom.generate(tiny_llama, PROMPT, method="plain", **kw)
    rec = CautiousRecord()
    cautious = tokenloom.generate(
        tiny_llama, PROMPT, method="cautious", punctuation=[13], entropy_threshold_low=1e6,
        entropy_threshold_high=2e6, record=rec, **kw,
    )
    assert cautious.sequences.tolist() == plain.sequences.tolist()
    assert rec.triggered == 0 and rec.forwards == 12  # prefill + one forward per token but the last


def _plain_logprobs(model, ids, n_new, sampler):
    """log p(token) of the last n_new tokens of ids, each from a separate full forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    rows = logits[len(ids) - n_new - 1 : len(ids) - 1]
    p = sampler.probs(rows).double().numpy()
    return [math.log(p[j, t]) for j, t in enumerate(ids[len(ids) - n_new :])]


def test_tree_trials_equal_separate_sequences_and_selection(tiny_llama):
    from tokenloom.sampling.sampler import Sampler

    rec = CautiousRecord(keep_trials=True)
    punct = [13, 29889, 11]
    out = tokenloom.generate(
        tiny_llama, PROMPT, method="cautious", punctuation=punct, max_new_tokens=14, temperature=1.0,
        top_k=40, seed=3, eos_token_id=2, max_trial_tokens=4, max_trials=6, record=rec,
    )
    new = out.sequences[0, PROMPT.shape[1] :].tolist()
    assert rec.triggered >= 2 and len(rec.steps) == rec.triggered
    probe = Sampler(temperature=1.0, top_k=40)
    shared = 0
    for step in rec.steps:
        off = step["offset"]
        context = PROMPT[0].tolist() + new[:off]
        # the trial count follows the entropy of the step's distribution
        with torch.no_grad():
            last = tiny_llama(torch.tensor([context])).logits[0, -1:].float()
        h = entropy(probe.probs(last)[0].double().numpy())
        assert len(step["tokens"]) == trial_count(h, 0.01, 1.5, 1, 6)
        for toks, lps in zip(step["tokens"], step["logprobs"]):
            # one tree forward per step == a separate sequence per trial
            np.testing.assert_allclose(lps, _plain_logprobs(tiny_llama, context + toks, len(toks), probe), atol=2e-4)
            stopped = toks[-1] in punct or toks[-1] == 2
            assert stopped or len(toks) == min(4, 14 - off)
            assert not any(t in punct or t == 2 for t in toks[:-1])
        shared += len(step["tokens"]) - len({tuple(t[:1]) for t in step["tokens"]})
        best = step["chosen"]
        nll = [-np.mean(lp) for lp in step["logprobs"]]
        assert best == int(np.argmin(nll))
        chosen = step["tokens"][best]
        assert new[off : off + len(chosen)] == chosen[: len(new) - off]
    assert rec.forwards < sum(len(t) for s in rec.steps for t in s["tokens"]) + len(new)  # fewer than one per trial token
    again = tokenloom.generate(
        tiny_llama, PROMPT, method="cautious", punctuation=punct, max_new_tokens=14, temperature=1.0,
        top_k=40, seed=3, eos_token_id=2, max_trial_tokens=4, max_trials=6,
    )
    assert again.sequences.tolist() == out.sequences.tolist()


def test_cautious_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="tokenizer"):
        tokenloom.generate(tiny_llama, PROMPT, method="cautious", max_new_tokens=2, temperature=1.0, seed=0)
    for kw, msg in [
        (dict(entropy_threshold_low=2.0, entropy_threshold_high=1.0), "entropy_threshold_high"),
        (dict(max_trials=0), "max_trials"),
        (dict(min_trials=3, max_trials=2), "max_trials"),
        (dict(entropy_threshold_low=float("nan")), "entropy_threshold_low"),
        (dict(max_trial_tokens=0), "max_trial_tokens"),
    ]:
        with pytest.raises(ValueError, match=msg):
            tokenloom.generate(tiny_llama, PROMPT, method="cautious", punctuation=[13], max_new_tokens=2, **kw)
    with pytest.raises(TypeError, match="unexpected keyword"):
        tokenloom.generate(tiny_llama, PROMPT, method="cautious", trials=3)
    assert "cautious" in tokenloom.methods()


def test_cautious_triggers_in_bfloat16(tiny_llama):
    """A bfloat16 model: the trials of a triggered step are scored from float32 log-probabilities
    (finite, <= 0) and the run is deterministic under a seed."""
    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    kw = dict(method="cautious", punctuation=[13, 29889, 11], max_new_tokens=10, temperature=1.0, top_k=40, seed=3,
              eos_token_id=2, max_trial_tokens=3, max_trials=4)
    rec = CautiousRecord(keep_trials=True)
    out = tokenloom.generate(model, PROMPT, record=rec, **kw)
    assert rec.triggered >= 1
    for step in rec.steps:
        for lps in step["logprobs"]:
            assert all(math.isfinite(x) and x <= 0.0 for x in lps)
    assert tokenloom.generate(model, PROMPT, **kw).sequences.tolist() == out.sequences.tolist()
