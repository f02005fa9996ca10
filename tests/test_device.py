"""The accelerator branches, run on CPU tensors through the one switch of
``tokenloom.device`` and checked against the host branches: the same results (greedy
tokens, verification results, samples, top-k ids, distributions), exact sampling (two-token
chi-square), and a count of what crosses to the host per step, bounded independently of the
vocabulary size."""

from __future__ import annotations

import collections
import pathlib
import re

import numpy as np
import pytest

import tokenloom
from tokenloom.device import FORCE_ENV, force_accelerator_path, forced, is_accelerator, synchronize

from tokenloom.integrations.hf.models import make_tiny_llama
from tests.reference.greedy import hf_greedy
from tests.reference.host_copies import HostCopies
from tests.reference.spec import joint_chi2, prompt_ids

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

PKG = pathlib.Path(__file__).resolve().parent.parent / "python" / "tokenloom"
LOSSLESS = [m for m in tokenloom.methods() if m not in ("cautious", "greedy")]  # greedy: plain's alias


def _method_kwargs(method):
    return {"punctuation": [13, 30]} if method == "cautious" else {}


def _repetitive_prompt(vocab, seed=3):
    base = prompt_ids(seed, n=6, vocab=vocab)
    return torch.cat([base, base, base], dim=1)  # lookup / suffix drafts hit


# --- the switch ---------------------------------------------------------------------------------


def test_switch_forces_cpu_tensors_only(monkeypatch):
    monkeypatch.delenv(FORCE_ENV, raising=False)
    t = torch.zeros(3)
    assert not forced() and not is_accelerator(t) and not is_accelerator(torch.device("cpu"))
    assert is_accelerator("cuda:0") and is_accelerator(torch.device("meta")) and is_accelerator(t.to("meta"))
    assert not is_accelerator(np.zeros(3)) and not is_accelerator(None) and not is_accelerator([1, 2])
    assert not is_accelerator("") and not is_accelerator("gpu0")  # not device names: on the host
    with force_accelerator_path():
        assert forced() and is_accelerator(t) and is_accelerator("cpu")
        assert not is_accelerator(np.zeros(3)) and not is_accelerator([1, 2])  # numpy stays on the host
        with force_accelerator_path(False):
            assert not is_accelerator(t)
    assert not is_accelerator(t)
    monkeypatch.setenv(FORCE_ENV, "1")
    assert is_accelerator(t)
    synchronize("cpu")
    synchronize(t)


@pytest.mark.parametrize("name", ["verify_tree", "verify_tree_batch", "verify_chain", "verify_chain_batch"])
def test_strings_as_data_are_refused_not_read_as_devices(name):
    """A string where probabilities go is bad data (a clean ValueError / TypeError), never a
    device name that sends the call down the accelerator branch (CI found ``verify_tree([], [],
    '')`` raising AttributeError there)."""
    f = getattr(tokenloom, name)
    for s in ("", "cuda", "cpu"):
        with pytest.raises((ValueError, TypeError)):
            f([], [], s) if name.startswith("verify_tree") else f([], s, s)


def test_no_device_branch_outside_the_switch():
    """Every branch on a device goes through ``is_accelerator``: no other module reads
    ``device.type`` or ``is_cuda``."""
    pattern = re.compile(r"\.type\s*[!=]=|\bis_cuda\b|device\.type\b")
    bad = []
    for path in PKG.rglob("*.py"):
        if path == PKG / "device.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{path.relative_to(PKG)}:{i}: {line.strip()}")
    assert not bad, bad


# --- each branch against the host branch --------------------------------------------------------


def _rows(rng, n, v):
    return torch.from_numpy(rng.dirichlet(np.ones(v), size=n))


def _case(seed, n=10, v=7):
    """A random tree with duplicate siblings (parents, tokens), target and draft rows, a chain."""
    from tests.reference.verify import random_tree

    rng = np.random.default_rng(seed)
    parents, tokens = random_tree(n, v, seed)
    t = len(parents)
    return parents, tokens, _rows(rng, t, v), _rows(rng, t, v), rng.integers(0, v, 4)


def test_verify_takes_the_device_branch_and_agrees(monkeypatch):
    import tokenloom.verify.device as dev

    calls = collections.Counter()
    for name in ("verify_tree_torch", "verify_chain_torch", "verify_tree_batch_torch", "verify_chain_batch_torch"):
        fn = getattr(dev, name)
        monkeypatch.setattr(dev, name, lambda *a, _fn=fn, _n=name: (calls.update([_n]), _fn(*a))[1])
    for seed in range(25):
        parents, tokens, p, q, x = _case(seed)
        for d in (None, q):
            host = tokenloom.verify_tree(parents, tokens, p, d, seed=seed)
            with force_accelerator_path():
                acc = tokenloom.verify_tree(parents, tokens, p, d, seed=seed)
            assert host.path.tolist() == acc.path.tolist() and host.tokens.tolist() == acc.tokens.tolist()
        host = tokenloom.verify_chain(x, q[:4], p[:5], seed=seed)
        with force_accelerator_path():
            acc = tokenloom.verify_chain(x, q[:4], p[:5], seed=seed)
        assert host.tokens.tolist() == acc.tokens.tolist()
    pb, qb = torch.stack([p, p]), torch.stack([q, q])
    par = np.array([parents, parents])
    tok = np.array([tokens, tokens])
    host = tokenloom.verify_tree_batch(par, tok, pb, qb, [len(parents), 6], seed=4)
    with force_accelerator_path():
        acc = tokenloom.verify_tree_batch(par, tok, pb, qb, [len(parents), 6], seed=4)
        acc_chain = tokenloom.verify_chain_batch(np.stack([x, x]), qb[:, :4], pb[:, :5], [4, 2], seed=4)
    assert [r.tokens.tolist() for r in host] == [r.tokens.tolist() for r in acc]
    host_chain = tokenloom.verify_chain_batch(np.stack([x, x]), qb[:, :4], pb[:, :5], [4, 2], seed=4)
    assert [r.tokens.tolist() for r in host_chain] == [r.tokens.tolist() for r in acc_chain]
    assert calls["verify_tree_torch"] >= 50 and calls["verify_chain_torch"] >= 25
    assert calls["verify_tree_batch_torch"] == 1 and calls["verify_chain_batch_torch"] == 1


def test_sampler_probs_and_topk_take_the_device_branch(monkeypatch):
    from tokenloom import _core
    from tokenloom.sampling.topk import top_k_ids

    logits = torch.randn(16, 300, generator=torch.Generator().manual_seed(1)) * 3
    for kw in (dict(), dict(temperature=0.7, top_k=20), dict(top_p=0.8, min_p=0.05), dict(temperature=0.0)):
        host = tokenloom.Sampler(seed=5, **kw)(logits)
        hp = tokenloom.probs_from_logits(logits, **kw)
        with force_accelerator_path():
            monkeypatch.setattr(_core, "sample_logits", None)  # the Rust path would fail
            acc = tokenloom.Sampler(seed=5, **kw)(logits)
            ap = tokenloom.probs_from_logits(logits, **kw)
        monkeypatch.undo()
        assert torch.equal(host, acc), kw
        assert torch.allclose(hp, ap, atol=1e-6), kw
    host = top_k_ids(logits, 8)
    with force_accelerator_path():
        monkeypatch.setattr(_core, "top_k_rows", None)
        acc = top_k_ids(logits, 8)
    assert np.array_equal(host, acc)


def test_cpupack_leaves_accelerator_linears_alone():
    from tokenloom.runtime.cpupack import packed_linears, resolve_pack

    model = make_tiny_llama(vocab_size=256)
    x = torch.tensor([[5, 6, 7]])
    with torch.inference_mode():
        ref = model(x).logits
        with force_accelerator_path():
            assert resolve_pack(model, "auto") is False  # an accelerator's weights are not packed
            with pytest.raises(ValueError, match="no float32 CPU"):
                resolve_pack(model, True)
        assert resolve_pack(model, "auto") is True  # scanned again on the host
        with packed_linears(model, True):
            with force_accelerator_path():  # packed modules fall back to the original linear
                acc = model(x).logits
    assert torch.equal(ref, acc)


def test_calibration_synchronises_through_the_switch(monkeypatch):
    import tokenloom.spec.calibration as calibration
    import tokenloom.spec.sizing as sizing

    synced = []
    monkeypatch.setattr(calibration, "synchronize", synced.append)
    model = make_tiny_llama(vocab_size=256, layers=1)
    sizing.calibrate_step_cost(model, tokens=(1, 4), past_len=8, repeats=1, disk=False, force=True)
    assert len(synced) == 2 * 2 * 2  # before and after each timed step (2 sizes, 2 rounds)


# --- whole methods ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", tokenloom.methods())
def test_greedy_identity_on_the_accelerator_branch(tiny_llama, method):
    """Every method on the forced branch gives the host branch's tokens, which are HF greedy's."""
    ids = _repetitive_prompt(49152)
    kw = _method_kwargs(method)
    host = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=16, eos_token_id=[], **kw)
    with force_accelerator_path():
        acc = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=16, eos_token_id=[], **kw)
    ref = hf_greedy(tiny_llama, ids, 16)
    assert acc.sequences.tolist() == host.sequences.tolist() == ref.tolist()


@pytest.fixture(scope="module")
def small_llama():
    return make_tiny_llama(vocab_size=1024, layers=1)


@pytest.mark.parametrize("method", LOSSLESS)
def test_sampling_exact_on_the_accelerator_branch(small_llama, method):
    """Two tokens sampled (temperature 2, top-k 3) on the forced branch follow their exact joint
    law (chi-square, seeded, so deterministic)."""
    ids = _repetitive_prompt(1024, seed=5)

    def run(i):
        out = tokenloom.generate(small_llama, ids, method=method, max_new_tokens=2, temperature=2.0, top_k=3,
                                 seed=i, eos_token_id=[])
        spec = out.stats.spec
        return out.sequences[0, ids.shape[1]:].tolist(), spec is not None and spec.accepted > 0

    with force_accelerator_path():
        pvalue, accepted = joint_chi2(small_llama, ids, 2.0, 3, 2, 300, run)
    assert pvalue > 1e-3, method
    assert method == "plain" or accepted > 50, (method, accepted)  # the acceptance branch ran


def test_sampled_tokens_equal_host_with_a_fixed_tree(small_llama):
    """A fixed tree (no timing-dependent sizing): the same seed gives the same tokens on both
    branches (the device mirrors use the Rust generator's uniforms)."""
    ids = _repetitive_prompt(1024)
    cases = [("plain", {}), ("recycling", {"tree": "2.2.2"}), ("lookup", {}), ("dyspec", {"tree": "fixed"}),
             ("cautious", _method_kwargs("cautious"))]
    for method, kw in cases:
        for seed in range(3):
            args = dict(max_new_tokens=12, temperature=1.3, seed=seed, eos_token_id=[], **kw)
            host = tokenloom.generate(small_llama, ids, method=method, **args)
            with force_accelerator_path():
                acc = tokenloom.generate(small_llama, ids, method=method, **args)
            assert host.sequences.tolist() == acc.sequences.tolist(), (method, seed)


@pytest.mark.parametrize("temperature", [0.0, 1.5], ids=["greedy", "sampled"])
@pytest.mark.parametrize("method", [m for m in tokenloom.methods() if m != "greedy"])
def test_host_copies_per_step_do_not_grow_with_the_vocabulary(tiny_llama, method, temperature):
    """On the accelerator branch only ids and a few numbers per tree node cross to the host:
    never a vocabulary row (49,152 here), and at most 32 numbers per fed tree node, prompt row
    (a drafter's prefill seeding) and step. What a process does once per model is done before
    counting: its fingerprint (4096 weights, :func:`tokenloom.spec.persist.model_key`) and the
    step-cost calibration of ``tree="auto"`` (top-k ids of each timed tree size)."""
    from tokenloom.spec.persist import model_key
    from tokenloom.spec.sizing import calibrate_step_cost

    model_key(tiny_llama)
    with force_accelerator_path():
        calibrate_step_cost(tiny_llama, disk=False)
    ids = _repetitive_prompt(49152)
    with force_accelerator_path(), HostCopies() as c:
        out = tokenloom.generate(tiny_llama, ids, method=method, max_new_tokens=16, eos_token_id=[],
                                 temperature=temperature, seed=1, **_method_kwargs(method))
    spec = out.stats.spec
    nodes = (spec.drafted + spec.steps) if spec is not None else out.stats.steps
    bound = 32 * (nodes + ids.shape[1] + out.stats.steps) + 256
    assert c.largest < 1024, (c.largest, dict(c.by))
    assert c.total <= bound, (c.total, bound, dict(c.by))


# --- bad input ----------------------------------------------------------------------------------


def test_input_ids_on_another_device_are_refused(small_llama):
    ids = torch.tensor([[5, 6, 7]], device="meta")
    with pytest.raises(ValueError, match="input_ids are on meta but the model is on cpu"):
        tokenloom.generate(small_llama, ids, max_new_tokens=2)


def test_force_env_var_reaches_the_branches(monkeypatch, small_llama):
    monkeypatch.setenv(FORCE_ENV, "1")
    with HostCopies() as c:
        tokenloom.generate(small_llama, torch.tensor([[5, 6, 7]]), max_new_tokens=4, temperature=1.0, seed=0, eos_token_id=[])
    assert c.by["cpu"] == 0 and c.largest <= 1  # the torch sampler: one id per step, no probability row
