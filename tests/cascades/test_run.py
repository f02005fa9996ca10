"""tokenloom.cascade: the deferral rules against NumPy, post-hoc fitting (recovers a separable
rule, beats chance on held-out data), the cost-quality curve against brute force, the
early-exit sibling, the cascade itself and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tokenloom
from tokenloom.cascades import (
    FEATURE_NAMES,
    Quantile,
    SequenceMean,
    SequenceSum,
    deferral_curve,
    early_exit_model,
    features,
    fit_posthoc,
    make_rule,
    quantized_model,
)
from tokenloom.cascades.models import round_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rules_match_numpy():
    lp = np.array([-0.1, -3.0, -0.5, -0.2])
    assert SequenceSum().score(lp) == pytest.approx(lp.sum())
    assert SequenceMean().score(lp) == pytest.approx(lp.mean())
    assert Quantile(0.0).score(lp) == -3.0 and Quantile(1.0).score(lp) == -0.1
    assert Quantile(0.5).score(lp) == pytest.approx(np.median(lp))
    f = features(lp)
    assert f.shape == (len(FEATURE_NAMES),) and f[2] == 4 and f[3] == -3.0
    assert make_rule("quantile:0.25") == Quantile(0.25) and make_rule("mean") == SequenceMean()
    for bad in ("median", "quantile:x", "quantile:2"):
        with pytest.raises(ValueError):
            make_rule(bad)
    with pytest.raises(ValueError, match="at least one"):
        SequenceMean().score([])
    with pytest.raises(ValueError, match="<= 0"):
        SequenceMean().score([0.5])


def test_posthoc_fit_learns_the_minimum_token():
    rng = np.random.default_rng(0)

    def sample(n):
        lps, ys = [], []
        for _ in range(n):
            lp = -rng.exponential(0.3, rng.integers(3, 30))
            y = int(lp.min() > -1.0)  # "good" exactly when no token is very unlikely
            lps.append(lp)
            ys.append(y)
        return lps, np.array(ys)

    train, ytrain = sample(300)
    test, ytest = sample(300)
    rule = fit_posthoc(train, ytrain)
    s = np.array([rule.score(lp) for lp in test])
    acc = ((s > 0.5) == ytest).mean()
    assert acc > 0.9  # the length-biased mean cannot separate this; the min quantile can
    from tokenloom.scores import auroc

    assert auroc(s, ytest) > auroc([SequenceMean().score(lp) for lp in test], ytest)
    with pytest.raises(ValueError, match="both classes"):
        fit_posthoc(train[:3], [1, 1, 1])
    with pytest.raises(ValueError, match="length"):
        fit_posthoc(train[:3], [1, 0])


def test_deferral_curve_matches_brute_force():
    rng = np.random.default_rng(1)
    n = 9
    s = rng.normal(size=n)
    qs, ql = rng.integers(0, 2, n).astype(float), rng.integers(0, 2, n).astype(float)
    c = deferral_curve(s, qs, ql)
    assert c.deferral_rate[0] == 0 and c.deferral_rate[-1] == 1
    for k in range(n + 1):
        defer = s < c.thresholds[k]
        assert defer.sum() == k
        assert c.quality[k] == pytest.approx(np.where(defer, ql, qs).mean())
    assert c.quality[0] == qs.mean() and c.quality[-1] == ql.mean()
    assert c.area == pytest.approx(np.trapezoid(c.quality, c.deferral_rate))
    with pytest.raises(ValueError):
        deferral_curve([1.0], [1.0, 0.0], [1.0])


def test_early_exit_model_is_a_prefix_of_the_layers(tiny_llama):
    small = early_exit_model(tiny_llama, 1)
    assert len(small.model.layers) == 1 and len(tiny_llama.model.layers) == 2
    assert small.lm_head.weight is tiny_llama.lm_head.weight
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        h = tiny_llama.model.embed_tokens(ids)
        pos = torch.arange(3).view(1, -1)
        pe = tiny_llama.model.rotary_emb(h, pos)
        mask = torch.full((3, 3), float("-inf")).triu(1).view(1, 1, 3, 3)
        h = tiny_llama.model.layers[0](h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        h = h[0] if isinstance(h, tuple) else h
        want = tiny_llama.lm_head(tiny_llama.model.norm(h))
        got = small(ids).logits
    assert torch.allclose(got, want, atol=1e-4)
    with pytest.raises(ValueError, match="n_layers"):
        early_exit_model(tiny_llama, 3)


def test_early_exit_model_runs_no_hook_of_the_whole_model(tiny_llama):
    """A hook on the whole model (e.g. a test recording the target's forwards) is not the early
    exit's; the shared layers keep theirs."""
    seen = []
    handles = [tiny_llama.register_forward_hook(lambda *a: seen.append("model")),
               tiny_llama.model.layers[0].register_forward_hook(lambda *a: seen.append("layer0"))]
    try:
        small = early_exit_model(tiny_llama, 1)
        with torch.no_grad():
            small(torch.tensor([[5, 6, 7]]))
    finally:
        for h in handles:
            h.remove()
    assert seen == ["layer0"]


def round_reference(w, bits, group):
    """Element by element: each group's symmetric grid of 2**bits levels, nearest level."""
    qmax = 2 ** (bits - 1) - 1
    out = np.empty_like(w)
    for r in range(w.shape[0]):
        for g in range(0, w.shape[1], group):
            seg = w[r, g : g + group]
            scale = max(float(np.abs(seg).max()) / qmax, 1e-12)
            for j, x in enumerate(seg):
                q = min(max(np.round(x / scale), -qmax - 1), qmax)
                out[r, g + j] = q * scale
    return out


@pytest.mark.parametrize("bits,group", [(2, 4), (3, 8), (4, 16), (8, 32)])
def test_round_weights_matches_reference(bits, group):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(bits * 100 + group))
    w[0, :group] = 0.0  # an all-zero group stays zero
    got = round_weights(w, bits, group).numpy()
    assert np.allclose(got, round_reference(w.numpy().astype(np.float64), bits, group), atol=1e-6)
    levels = [len(np.unique(np.round(got[r, g : g + group] / np.abs(got[r, g : g + group]).max(), 6))) for r in range(1, 6) for g in range(0, 32, group)]
    assert max(levels) <= 2**bits


def test_quantized_model_rounds_only_decoder_linears(tiny_llama):
    small = quantized_model(tiny_llama, bits=3, group_size=8)
    lin = tiny_llama.model.layers[0].self_attn.q_proj.weight
    got = small.model.layers[0].self_attn.q_proj.weight
    assert torch.allclose(got, round_weights(lin, 3, 8)) and not torch.equal(got, lin)
    assert torch.equal(small.lm_head.weight, tiny_llama.lm_head.weight)
    assert torch.equal(small.model.embed_tokens.weight, tiny_llama.model.embed_tokens.weight)
    assert not torch.equal(tiny_llama.model.layers[0].self_attn.q_proj.weight, got)  # the original is unchanged
    ids = torch.tensor([[5, 6, 7]])
    assert small(ids).logits.shape == tiny_llama(ids).logits.shape
    for bad, err in [(dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(group_size=5), "group_size"), (dict(group_size=0), "group_size")]:
        with pytest.raises(ValueError, match=err):
            quantized_model(tiny_llama, **bad)


def test_cascade_defers_below_the_threshold(tiny_llama):
    small = early_exit_model(tiny_llama, 1)
    ids = torch.tensor([[1, 2, 3, 4]])
    kw = dict(max_new_tokens=5, eos_token_id=2)
    keep = tokenloom.cascade(small, tiny_llama, ids, rule="mean", threshold=-1e9, **kw)
    assert not keep.deferred
    assert keep.sequences.tolist() == tokenloom.generate(small, ids, **kw).sequences.tolist()
    with torch.no_grad():
        logp = torch.log_softmax(small(keep.sequences).logits[0].double(), -1)
    new = keep.sequences[0, 4:]
    want = logp[torch.arange(3, 3 + len(new)), new].numpy()
    np.testing.assert_allclose(keep.small_logprobs, want, atol=1e-4)
    assert keep.score == pytest.approx(want.mean(), abs=1e-4)
    defer = tokenloom.cascade(small, tiny_llama, ids, rule="quantile:0", threshold=0.0, **kw)
    assert defer.deferred
    assert defer.sequences.tolist() == tokenloom.generate(tiny_llama, ids, **kw).sequences.tolist()
    with pytest.raises(ValueError, match="threshold"):
        tokenloom.cascade(small, tiny_llama, ids, threshold=float("nan"))
    with pytest.raises(ValueError, match="rule"):
        tokenloom.cascade(small, tiny_llama, ids, rule="best", threshold=0.0)
