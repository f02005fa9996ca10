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
)

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
