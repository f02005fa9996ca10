"""tokenloom's vLLM proposer without vLLM: chain drafters, the history-keyed per-request state
(rows reordered between steps), the target top-k capture and its alignment check, and the
errors for bad configurations. The run on vLLM itself is tests/eval/test_vllmbench.py."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from tokenloom.spec.chains import (
    RecyclingChains,
    chain_drafters,
    make_chain_drafter,
    register_chain_drafter,
)
from tokenloom.integrations.vllm.proposer import (
    Proposer,
    RecyclingProposer,
    check_vllm_version,
    proposer_class,
)

from tests.reference.spec import Batch, drive_reordered, move_to_front_reference

V = 50


def _config(num_tokens=3, max_model_len=64, vocab=V):
    model_config = types.SimpleNamespace(max_model_len=max_model_len, get_vocab_size=lambda: vocab)
    spec = types.SimpleNamespace(num_speculative_tokens=num_tokens)
    return types.SimpleNamespace(model_config=model_config, speculative_config=spec)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.32.0"
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setenv("TOKENLOOM_VLLM_DRAFTER", "recycling")  # these tests are about recycling's chains
    monkeypatch.delenv("TOKENLOOM_VLLM_UPDATE", raising=False)
    monkeypatch.delenv("TOKENLOOM_VLLM_OPTIONS", raising=False)
    monkeypatch.delenv("TOKENLOOM_VLLM_STATS", raising=False)
    return mod


# --- the chain drafter ---------------------------------------------------------------------------


def test_recycling_chains_reference():
    """Against a pure-Python model of the matrix: move-to-front rows, chains stop at unknown rows."""
    d = RecyclingChains(V, 4, k=3)
    rows = {}

    def mtf(t, s):
        move_to_front_reference(rows, [t], [s], 3)

    def chain(root, n):
        out, t = [], root
        while len(out) < n and t in rows:
            t = rows[t][0]
            out.append(t)
        return out

    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 12, 30)
    d.start(prompt)
    for a, b in zip(prompt[:-1], prompt[1:]):  # rows unknown before the call: every bigram, in order
        mtf(int(a), int(b))
    d.start(np.array([3, 40, 3, 41]))  # row 3 is known: kept; row 40 is new
    mtf(40, 3)
    for _ in range(40):
        root = int(rng.integers(0, 12))
        assert d.propose(np.array([5, root]), 4) == chain(root, 4)
        emitted = rng.integers(0, 12, int(rng.integers(1, 4)))
        d.observe(np.array([root]), emitted, None)
        for a, b in zip([root] + emitted[:-1].tolist(), emitted.tolist()):
            mtf(a, int(b))
        for t in rows:
            assert d.row(t).tolist() == rows[t]
    assert d.propose(np.array([49]), 4) == []  # never-written row: no guess


def test_recycling_chains_topk_update_is_the_paper_rule():
    d = RecyclingChains(V, 3, k=2)
    d.observe(np.array([1, 7, 8]), np.array([7, 9]), np.array([[7, 3], [9, 4], [10, 11]]))
    assert d.row(1).tolist() == [7, 3] and d.row(7).tolist() == [9, 4] and d.row(8).tolist() == [10, 11]
    assert d.propose(np.array([1]), 3) == [7, 9]  # row 9 unknown: the chain stops after it
    with pytest.raises(ValueError, match="topk"):
        d.observe(np.array([1, 2]), np.array([2]), np.array([[1, 2]]))


def test_chain_drafter_table():
    assert "recycling" in chain_drafters()
    with pytest.raises(ValueError, match="unknown chain drafter 'nope'.*recycling"):
        make_chain_drafter("nope", V, 3)
    with pytest.raises(ValueError):
        register_chain_drafter("", RecyclingChains)
    with pytest.raises(TypeError):
        register_chain_drafter("x", 3)
    with pytest.raises(ValueError, match="num_tokens"):
        RecyclingChains(V, 0)
    with pytest.raises(ValueError, match="vocab_size"):
        RecyclingChains(V, 2, recycler=RecyclingChains(V + 1, 2).recycler)


# --- the proposer --------------------------------------------------------------------------------


def test_state_follows_requests_across_row_reordering(fake_vllm):
    """Two requests with periodic continuations; rows swap every step and a third request comes
    and goes. Every step's committed tokens must be learnt under the right request: the
    proposals become exact and the proposer never loses a request."""
    p = Proposer(_config(num_tokens=3))
    seqs = {"a": [1, 2, 3, 4] * 3, "b": [10, 11, 12] * 4, "c": [20, 21]}
    period = {"a": [1, 2, 3, 4], "b": [10, 11, 12], "c": [20, 21, 22]}
    orders = [["a", "b"] if step % 2 else ["b", "a"] for step in range(12)]
    for step in range(3, 7):
        orders[step].insert(1, "c")
    proposals = drive_reordered(p, seqs, period, orders, {6: "c"})
    s = p.stats()
    assert s["unmatched_rows"] == 0 and s["new_rows"] == 3
    assert s["accepted_tokens"] > 0 and s["verified_rows"] == s["rows"] - s["new_rows"]
    assert proposals["a"] == [period["a"][(len(seqs["a"]) + j) % 4] for j in range(3)]


def test_topk_capture_alignment(fake_vllm):
    """A fake target model: compute_logits rows laid out as vLLM lays them (per row in batch
    order, 1 + drafted tokens). The proposer uses them for the paper's update; a row count that
    does not match is refused and counted, never misapplied."""
    import torch

    class Target:
        def __init__(self):
            self.next_rows = None

        def compute_logits(self, hidden):
            return hidden

    target = Target()
    p = Proposer(_config(num_tokens=2))
    p.load_model(target)
    assert p.update == "topk"
    b = Batch([[1, 2, 3]])
    first = p.propose([[3]], b.lengths, b.tokens)  # new request: learns from the prompt
    assert first == [[]]  # row 3 never written
    # Step 2: the target verified the root 3 (no drafts): logits row favours 7 then 8.
    logits = torch.zeros(1, V)
    logits[0, 7], logits[0, 8] = 2.0, 1.0
    target.compute_logits(logits)
    b = Batch([[1, 2, 3, 7]])
    p.propose([[7]], b.lengths, b.tokens)
    assert p.drafter.row(3).tolist()[:2] == [7, 8]
    assert p.stats()["topk_steps"] == 1
    # A logits batch with the wrong row count is refused.
    target.compute_logits(torch.zeros(5, V))
    b = Batch([[1, 2, 3, 7, 9]])
    p.propose([[9]], b.lengths, b.tokens)
    assert p.stats()["topk_misaligned_steps"] == 1
    assert p.drafter.row(3).tolist()[:2] == [7, 8]


def test_update_from_accepted_tokens(fake_vllm, monkeypatch):
    monkeypatch.setenv("TOKENLOOM_VLLM_UPDATE", "accepted")
    p = Proposer(_config(num_tokens=3))
    p.load_model(types.SimpleNamespace(compute_logits=lambda h: h))
    assert p.update == "accepted" and p._capture is None
    b = Batch([[5, 6, 7, 5, 6]])
    assert p.propose([[6]], b.lengths, b.tokens) == [[7, 5, 6]]


def test_rows_that_did_not_sample_are_skipped(fake_vllm):
    p = Proposer(_config(num_tokens=3, max_model_len=6))
    b = Batch([[5, 6, 7, 5, 6], [1, 2]])
    out = p.propose([[6], []], b.lengths, b.tokens)
    assert out[1] == [] and len(out[0]) == 0  # max_model_len 6 leaves no room after 5 tokens


def test_bad_configurations(fake_vllm, monkeypatch):
    monkeypatch.setenv("TOKENLOOM_VLLM_DRAFTER", "nope")
    with pytest.raises(ValueError, match="unknown chain drafter 'nope'"):
        Proposer(_config())
    monkeypatch.delenv("TOKENLOOM_VLLM_DRAFTER")
    monkeypatch.setenv("TOKENLOOM_VLLM_UPDATE", "sometimes")
    with pytest.raises(ValueError, match="TOKENLOOM_VLLM_UPDATE"):
        Proposer(_config())
    monkeypatch.delenv("TOKENLOOM_VLLM_UPDATE")
    assert isinstance(RecyclingProposer(_config()).drafter, RecyclingChains)
    with pytest.raises(ValueError, match="unknown chain drafter"):
        proposer_class("nope")
    fake_vllm.__version__ = "0.31.2"
    with pytest.raises(RuntimeError, match=r"vLLM 0.31.2 is outside .*>=0.32,<0.33"):
        Proposer(_config())
    for v in ("0.32.0", "0.32.1+cpu"):
        assert check_vllm_version(v) == v
    for v in ("0.33.0", "1.0", "x"):
        with pytest.raises(RuntimeError):
            check_vllm_version(v)


def test_missing_vllm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"tokenloom\[vllm\]"):
        Proposer(_config())


def test_importing_tokenloom_never_imports_vllm():
    code = (
        "import sys, tokenloom, tokenloom.integrations.vllm as v, tokenloom.integrations.vllm.proposer, "
        "tokenloom.eval.vllmbench; v.chain_drafters(); "
        "assert 'vllm' not in sys.modules, sorted(m for m in sys.modules if m.startswith('vllm'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
