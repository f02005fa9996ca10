"""verify_chain / verify_chain_batch: statistical exactness of the first token and two-token
prefix, parity with a pure-Python reference and with the torch (device) path, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import verify_chain, verify_chain_batch

from tests.reference.verify import P_MIN, CondModel, chisq_p, expected, prefixes, ref_verify_chain, sample_rows

V = 7
N = 20_000


def draw_chains(p: CondModel, q: CondModel, n: int, length: int, seed: int):
    """n chains of ``length`` draft tokens drawn from q (depending on the previous token), with
    their draft rows [n, length, V] and target rows [n, length + 1, V]."""
    rng = np.random.default_rng(seed)
    toks = np.zeros((n, length + 1), dtype=np.int64)  # column 0: the root token (0)
    draft = np.zeros((n, length, V))
    target = np.zeros((n, length + 1, V))
    for i in range(length + 1):
        d = np.full(n, i)
        target[:, i] = p.row(d, toks[:, i])
        if i < length:
            draft[:, i] = q.row(d, toks[:, i])
            toks[:, i + 1] = sample_rows(draft[:, i], rng)
    return toks[:, 1:], draft, target


@pytest.mark.parametrize("length", [1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_chain_is_exact(length, seed):
    p = CondModel(V, depth=6, seed=10 + seed, alpha=0.7)
    q = CondModel(V, depth=6, seed=20 + seed, alpha=0.7)
    x, draft, target = draw_chains(p, q, N, length, seed)
    rs = verify_chain_batch(x, draft, target, seed=seed)
    assert 0.2 < np.mean([r.accepted for r in rs]) < length
    first, pref = prefixes(rs, p, seed=3)
    e1, e2 = expected(p, 0)
    assert chisq_p(first, e1) > P_MIN
    assert chisq_p(pref, e2) > P_MIN


def test_accepting_every_draft_is_detected():
    """The check has teeth: emitting the draft tokens unverified follows q, not p."""
    p = CondModel(V, depth=3, seed=1, alpha=0.7)
    q = CondModel(V, depth=3, seed=2, alpha=0.7)
    x, _, _ = draw_chains(p, q, N, 2, 5)
    assert chisq_p(x[:, 0] * V + x[:, 1], expected(p, 0)[1]) < 1e-6


def test_padded_batch_and_seed():
    p = CondModel(V, depth=6, seed=3)
    q = CondModel(V, depth=6, seed=4)
    x, draft, target = draw_chains(p, q, 5, 4, 0)
    lengths = [4, 0, 2, 3, 1]
    rs = verify_chain_batch(x, draft, target, lengths, seed=21)
    for b, (r, n) in enumerate(zip(rs, lengths)):
        path, out = ref_verify_chain(x[b, :n].tolist(), draft[b, :n].tolist(), target[b, : n + 1].tolist(), 21, b)
        assert r.path.tolist() == path and r.tokens.tolist() == out
        assert r.accepted <= n
    assert verify_chain(x[0], draft[0], target[0], seed=21).tokens.tolist() == rs[0].tokens.tolist()
    import torch

    from tokenloom.verify.device import verify_chain_batch_torch

    rt = verify_chain_batch_torch(x, torch.from_numpy(draft), torch.from_numpy(target), lengths, 21)
    assert [r.tokens.tolist() for r in rt] == [r.tokens.tolist() for r in rs]


@st.composite
def chain_inputs(draw, vocab=4):
    n = draw(st.integers(0, 6))
    row = st.lists(st.floats(0.0, 1.0), min_size=vocab, max_size=vocab).filter(lambda r: sum(r) > 0.05)
    norm = lambda rows: np.array(rows, dtype=np.float64).reshape(-1, vocab) / np.array(rows).reshape(-1, vocab).sum(1, keepdims=True)
    q = norm([draw(row) for _ in range(n)]) if n else np.zeros((0, vocab))
    p = norm([draw(row) for _ in range(n + 1)])
    x = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    return x, q, p, draw(st.integers(0, 2**64 - 1))


@settings(max_examples=200, deadline=None)
@given(chain_inputs())
def test_parity_with_reference_and_torch_path(case):
    import torch

    from tokenloom.verify.device import verify_chain_torch

    x, q, p, seed = case
    r = verify_chain(x, q, p, seed=seed)
    path, out = ref_verify_chain(x, q.tolist(), p.tolist(), seed)
    assert r.path.tolist() == path and r.tokens.tolist() == out
    rt = verify_chain_torch(x, torch.from_numpy(q), torch.from_numpy(p), seed, 0)
    assert rt.tokens.tolist() == out


Q = np.full((2, V), 1.0 / V)
P = np.full((3, V), 1.0 / V)
P_REJ = P.copy()  # step 0 always rejects draft token 0, so both step-0 rows are read in full
P_REJ[0] = np.append(0.0, np.full(V - 1, 1.0 / (V - 1)))


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (([0, V], Q, P), IndexError, rf"draft_tokens: {V} is out of range"),
        (([0, -2], Q, P), IndexError, "out of range"),
        (([0], Q, P), ValueError, "draft_probs: expected"),
        (([0, 1], Q, P[:2]), ValueError, "target_probs: expected 3 rows"),
        (([0, 1], Q[:, :3], P), ValueError, "draft_probs: expected"),
        (([0, 1], Q * 0.5, P_REJ), ValueError, r"draft_probs\[0\] sums to 0.5"),
        (([0, 1], Q, P_REJ * 3), ValueError, r"target_probs\[0\] sums to 3"),
        (([0, 1], Q, np.where(np.eye(3, V, 2) > 0, -0.1, P)), ValueError, r"target_probs\[2, 4\] = -0.1"),
        (([0, 1], Q, np.where(np.eye(3, V) > 0, np.nan, P)), ValueError, "finite"),
        (([0, 1], Q, -P), ValueError, r"target_probs\[0, 0\]"),
        (([0, 1], Q, P.astype(np.int32)), ValueError, "float"),
        (([0, 1], Q[None], P), ValueError, "2-D"),
        (([[0, 1]], Q, P), ValueError, "1-D"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        verify_chain(*args, seed=0)


def test_batch_bad_input():
    x = np.zeros((2, 2), dtype=np.int64)
    with pytest.raises(IndexError, match="lengths"):
        verify_chain_batch(x, np.broadcast_to(Q, (2, 2, V)), np.broadcast_to(P, (2, 3, V)), [3, 0])
    with pytest.raises(ValueError, match="draft_probs / target_probs"):
        verify_chain_batch(x, np.broadcast_to(Q, (2, 2, V)), np.broadcast_to(P[:2], (2, 2, V)))
