"""Sampler and probs_from_logits: the transforms against a NumPy reference, the distribution
of samples (chi-square) for every transform combination, the device (torch) path on CPU
tensors, determinism, bad input, and plain sampling through tokenloom.generate."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenloom
from tokenloom import Sampler, probs_from_logits

from tests.reference.verify import P_MIN, chisq_p


def ref_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """NumPy reference of the documented transforms (one row)."""
    x = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        out = np.zeros_like(x)
        out[int(np.argmax(x))] = 1.0
        return out
    w = np.exp((x - x.max()) / temperature)
    if top_k is not None and top_k < np.isfinite(x).sum():
        kth = np.sort(x[np.isfinite(x)])[::-1][top_k - 1]
        w[x < kth] = 0
    if top_p is not None and top_p < 1:
        srt = np.sort(w[w > 0])[::-1]
        m = np.searchsorted(np.cumsum(srt), top_p * w.sum())  # first cum >= want
        w[w < srt[min(m, len(srt) - 1)]] = 0
    if min_p is not None and min_p > 0:
        w[w < min_p * w.max()] = 0
    return w / w.sum()


COMBOS = [
    dict(temperature=1.0),
    dict(temperature=0.6),
    dict(temperature=1.5, top_k=3),
    dict(temperature=1.0, top_p=0.7),
    dict(temperature=1.0, min_p=0.2),
    dict(temperature=0.8, top_k=5, top_p=0.9, min_p=0.05),
    dict(temperature=0.0),
]


@pytest.mark.parametrize("kw", COMBOS)
def test_sampler_distribution(kw):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, 8).astype(np.float32)
    logits[2] = -np.inf  # a masked token is never drawn
    n = 30_000
    ids = Sampler(seed=42, **kw)(np.tile(logits, (n, 1)))
    assert ids.dtype == np.int64 and ids.shape == (n,)
    want = ref_probs(logits, **kw)
    np.testing.assert_allclose(probs_from_logits(logits, **kw), want, rtol=1e-5, atol=1e-7)
    if kw["temperature"] == 0:
        assert (ids == np.argmax(logits)).all()
    else:
        assert chisq_p(ids, want) > P_MIN


def test_sampler_wrong_distribution_is_detected():
    logits = np.array([[0.0, 1.0, 2.0, 0.5]])
    ids = Sampler(temperature=1.0, seed=1)(np.repeat(logits, 20_000, 0))
    assert chisq_p(ids, ref_probs(logits[0], temperature=0.7)) < 1e-6


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(-8, 8), min_size=1, max_size=12),
    st.sampled_from([0.0, 0.3, 1.0, 2.0]),
    st.one_of(st.none(), st.integers(1, 12)),
    st.one_of(st.none(), st.floats(0.05, 1.0)),
    st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_transforms_match_reference_and_torch(logits, temperature, top_k, top_p, min_p):
    import torch

    from tokenloom.sampling import torch_ops as _torch_ops

    x = np.array(logits, dtype=np.float64)
    got = probs_from_logits(x, temperature, top_k, top_p, min_p)
    np.testing.assert_allclose(got, ref_probs(x, temperature, top_k, top_p, min_p), rtol=1e-9, atol=1e-12)
    dev = _torch_ops.probs(torch.from_numpy(x)[None], temperature, top_k, top_p, min_p)[0].numpy()
    np.testing.assert_allclose(dev, got, rtol=1e-9, atol=1e-12)


def test_device_path_on_cpu_tensors_matches_rust():
    import torch

    from tokenloom.sampling import torch_ops as _torch_ops

    logits = torch.randn(500, 50, generator=torch.Generator().manual_seed(0)) * 2
    for kw in COMBOS:
        rust = Sampler(seed=9, **kw)(logits)
        dev = _torch_ops.sample(logits, kw["temperature"], kw.get("top_k"), kw.get("top_p"), kw.get("min_p"), Sampler(seed=9).seed, 0)
        assert torch.equal(rust, dev), kw


def test_determinism_and_kinds():
    import torch

    logits = np.random.default_rng(1).normal(size=(16, 100)).astype(np.float32)
    a, b = Sampler(seed=3), Sampler(seed=3)
    seq_a = [a(logits).tolist() for _ in range(3)]
    assert seq_a == [b(logits).tolist() for _ in range(3)]
    assert seq_a[0] != seq_a[1]  # each call draws afresh
    assert Sampler(seed=4)(logits).tolist() != seq_a[0]
    t = Sampler(seed=3)(torch.from_numpy(logits))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.tolist() == seq_a[0]
    assert Sampler(seed=3)(torch.from_numpy(logits).to(torch.bfloat16)).shape == (16,)
    assert Sampler(seed=3)(logits.astype(np.float64)).tolist() == seq_a[0]
    pt = probs_from_logits(torch.from_numpy(logits), top_k=4)
    assert isinstance(pt, torch.Tensor) and pt.dtype == torch.float32 and pt.shape == (16, 100)
    assert ((pt > 0).sum(1) == 4).all()
    assert probs_from_logits(logits[0].astype(np.float64)).dtype == np.float64


@pytest.mark.parametrize(
    "logits, match",
    [
        (np.zeros(5, dtype=np.float32), "2-D"),
        (np.zeros((1, 2, 3), dtype=np.float32), "2-D"),
        (np.zeros((2, 5), dtype=np.int64), "float"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, np.inf]]), r"\+inf"),
        (np.array([[-np.inf, -np.inf]]), "every logit is -inf"),
    ],
)
def test_sampler_bad_logits(logits, match):
    with pytest.raises(ValueError, match=match):
        Sampler(seed=0)(logits)


def test_sampler_bad_logits_torch():
    import torch

    with pytest.raises(ValueError, match="2-D"):
        Sampler(seed=0)(torch.zeros(5))
    with pytest.raises(ValueError, match="float"):
        Sampler(seed=0)(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        Sampler(seed=0)(torch.tensor([[0.0, float("nan")]]))
    from tokenloom.sampling import torch_ops as _torch_ops

    with pytest.raises(ValueError, match="NaN"):
        _torch_ops.probs(torch.tensor([[0.0, float("nan")]]), 1.0, None, None, None)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(min_p=-0.1), "min_p"),
    ],
)
def test_sampler_bad_params(kw, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**kw)


def test_logits_processor_matches_transforms():
    import torch

    s = Sampler(temperature=0.7, top_k=5, top_p=0.9, seed=0)
    scores = torch.randn(3, 40)
    out = s.logits_processor()(torch.zeros(3, 1, dtype=torch.long), scores)
    want = probs_from_logits(scores, 0.7, 5, 0.9)
    torch.testing.assert_close(out.softmax(-1), want)
    assert torch.isinf(out).sum() == (want == 0).sum()


@pytest.fixture(scope="module")
def spread_llama():
    """A tiny random Llama (the 49k vocabulary) whose next-token law at temperature 0.8 has
    a few dozen tokens of noticeable mass, so that a chi-square over seeds has power."""
    import torch

    from tokenloom.integrations.hf.models import make_tiny_llama

    model = make_tiny_llama(seed=0)
    with torch.no_grad():
        model.lm_head.weight.mul_(2.0)
    return model


def test_generate_sampling_is_reproducible_and_exact(tiny_llama, spread_llama):
    import torch

    ids = torch.tensor([[1, 504, 3205, 314]])
    kw = dict(method="greedy", temperature=0.8, max_new_tokens=6, eos_token_id=[])
    a = tokenloom.generate(tiny_llama, ids, seed=123, **kw).sequences
    assert torch.equal(a, tokenloom.generate(tiny_llama, ids, seed=123, **kw).sequences)
    assert any(
        not torch.equal(a, tokenloom.generate(tiny_llama, ids, seed=s, **kw).sequences) for s in range(124, 130)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny forwards: threads only contend
    try:
        with torch.no_grad():
            logits = spread_llama(ids).logits[0, -1].double()
        want = torch.softmax(logits / 0.8, -1).numpy()
        assert (want * 3000 >= 5).sum() >= 10
        first = np.array(
            [
                int(
                    tokenloom.generate(
                        spread_llama, ids, seed=s, method="greedy", temperature=0.8, max_new_tokens=1
                    ).sequences[0, -1]
                )
                for s in range(3000)
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert chisq_p(first, want) > P_MIN
    assert chisq_p(first, torch.softmax(logits / 0.7, -1).numpy()) < 1e-6  # the check has teeth
