"""verify_tree / verify_tree_batch: statistical exactness (first token and two-token prefix
against plain sampling from the target), a biased rule that the same check rejects, parity with
a pure-Python reference, the device (torch) path on CPU tensors, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenloom
from tokenloom import verify_tree, verify_tree_batch

from tests.reference.verify import (
    P_MIN,
    CondModel,
    chisq_p,
    children,
    depths,
    draw_children,
    expected,
    node_rows,
    prefixes,
    random_tree,
    ref_verify_tree,
    sample_rows,
)

V = 6
N = 20_000


def _fixed_tree_batch(parents, tokens, model, n):
    """n copies of one tree (deterministic drafts): broadcast arrays, no copy of [T, V]."""
    rows = node_rows(model, parents, tokens[None])[0]
    t = len(parents)
    return (
        np.broadcast_to(parents, (n, t)),
        np.broadcast_to(tokens, (n, t)),
        np.broadcast_to(rows, (n, t, V)),
    )


@pytest.mark.parametrize("tree_seed", [0, 1, 2])
def test_deterministic_drafts_are_exact(tree_seed):
    parents, tokens = random_tree(14, V, seed=tree_seed)
    p = CondModel(V, depth=8, seed=100 + tree_seed, alpha=0.5)
    # Make acceptance likely: put target mass on the tree's tokens along the chain 0->1->2->3->4.
    par, tok, rows = _fixed_tree_batch(parents, tokens, p, N)
    rs = verify_tree_batch(par, tok, rows, seed=tree_seed)
    assert np.mean([r.accepted for r in rs]) > 0.1  # the walk does go below the root
    first, pref = prefixes(rs, p, seed=7)
    e1, e2 = expected(p, int(tokens[0]))
    assert chisq_p(first, e1) > P_MIN
    assert chisq_p(pref, e2) > P_MIN


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("tree_seed", [0, 1])
def test_sampled_drafts_are_exact(replacement, tree_seed):
    parents, _ = random_tree(12, V, seed=tree_seed)
    p = CondModel(V, depth=8, seed=200 + tree_seed)
    q = CondModel(V, depth=8, seed=300 + tree_seed)
    assert max(len(k) for k in children(parents)) <= V
    tok = draw_children(parents, 0, q, N, seed=tree_seed, replacement=replacement)
    target = node_rows(p, parents, tok)
    draft = node_rows(q, parents, tok)
    rs = verify_tree_batch(np.broadcast_to(parents, tok.shape), tok, target, draft, seed=11, replacement=replacement)
    assert np.mean([r.accepted for r in rs]) > 0.3
    first, pref = prefixes(rs, p, seed=8)
    e1, e2 = expected(p, 0)
    assert chisq_p(first, e1) > P_MIN
    assert chisq_p(pref, e2) > P_MIN


def test_with_replacement_rule_on_gumbel_children_is_detected():
    """Children drawn WITHOUT replacement but verified with the with-replacement rule: biased
    (the sequential rule assumes independent draws), and the check sees it."""
    parents = np.array([-1, 0, 0, 0, 0], dtype=np.int64)
    p = CondModel(V, depth=3, seed=5, alpha=0.3)
    q = CondModel(V, depth=3, seed=6, alpha=0.3)
    tok = draw_children(parents, 0, q, N, seed=3, replacement=False)
    rs = verify_tree_batch(
        np.broadcast_to(parents, tok.shape), tok, node_rows(p, parents, tok), node_rows(q, parents, tok), seed=1
    )
    first, _ = prefixes(rs, p, seed=9)
    assert chisq_p(first, expected(p, 0)[0]) < 1e-6


def biased_longest_match(parents, tokens, rows, n, seed):
    """The biased rule: an independent draw per root-to-leaf path, keep the longest match
    (ties: the first path). Returns first tokens and the second token (-1 if none)."""
    rng = np.random.default_rng(seed)
    kids = children(parents)
    leaves = [i for i in range(len(parents)) if not kids[i]]
    paths = []
    for leaf in leaves:
        path = [leaf]
        while path[-1] != 0:
            path.append(int(parents[path[-1]]))
        paths.append(path[::-1])
    best_len = np.full(n, -1)
    first = np.zeros(n, dtype=np.int64)
    second = np.full(n, -1)
    for path in paths:
        ys = [sample_rows(np.broadcast_to(rows[node], (n, V)), rng) for node in path]
        match = np.zeros(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        for k in range(1, len(path)):
            alive &= ys[k - 1] == tokens[path[k]]
            match += alive
        # First emitted token: the path's first draft token if matched, else the root draw;
        # second: the next draft token, or the draw at depth 1, or none (-1, extended later).
        e0 = np.where(match >= 1, tokens[path[1]] if len(path) > 1 else 0, ys[0])
        e1 = np.where(
            match >= 2,
            tokens[path[2]] if len(path) > 2 else 0,
            np.where(match == 1, ys[1] if len(path) > 1 else 0, -1),
        )
        better = match > best_len
        best_len = np.where(better, match, best_len)
        first = np.where(better, e0, first)
        second = np.where(better, e1, second)
    return first, second


def test_biased_rule_fails_the_same_check():
    parents, tokens = random_tree(14, V, seed=0)
    p = CondModel(V, depth=8, seed=100, alpha=0.5)
    rows = node_rows(p, parents, tokens[None])[0]
    first, second = biased_longest_match(parents, tokens, rows, N, seed=4)
    short = second < 0
    second[short] = sample_rows(p.row(np.ones(short.sum(), dtype=np.int64), first[short]), np.random.default_rng(5))
    e1, e2 = expected(p, int(tokens[0]))
    assert chisq_p(first * V + second, e2) < 1e-6
    assert chisq_p(first, e1) < 1e-6
    # ... while the exact rule passes on the same tree (see test_deterministic_drafts_are_exact).


def test_seed_determines_result_and_batch_row_is_stream():
    parents, tokens = random_tree(10, V, seed=3)
    p = CondModel(V, depth=6, seed=1)
    rows = node_rows(p, parents, tokens[None])[0]
    a = [verify_tree(parents, tokens, rows, seed=s) for s in range(50)]
    b = [verify_tree(parents, tokens, rows, seed=s) for s in range(50)]
    assert all((x.tokens == y.tokens).all() and (x.path == y.path).all() for x, y in zip(a, b))
    assert len({tuple(x.tokens) for x in a}) > 5
    batch = verify_tree_batch(parents[None], tokens[None], rows[None], seed=17)
    assert batch[0].tokens.tolist() == verify_tree(parents, tokens, rows, seed=17).tokens.tolist()
    # f32 and f64 inputs, numpy and torch: the same draws.
    import torch

    r32 = verify_tree(parents, tokens, rows.astype(np.float32), seed=5)
    rt = verify_tree(torch.from_numpy(parents), torch.from_numpy(tokens), torch.from_numpy(rows), seed=5)
    assert r32.tokens.tolist() == rt.tokens.tolist() == verify_tree(parents, tokens, rows, seed=5).tokens.tolist()


@st.composite
def tree_inputs(draw, vocab=4):
    n = draw(st.integers(1, 12))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [0] + [draw(st.integers(0, vocab - 1)) for _ in range(n - 1)]
    row = st.lists(st.floats(0.01, 1.0), min_size=vocab, max_size=vocab)
    target = [draw(row) for _ in range(n)]
    draft = [draw(row) for _ in range(n)] if draw(st.booleans()) else None
    norm = lambda rows: None if rows is None else (np.array(rows) / np.array(rows).sum(1, keepdims=True))
    return parents, tokens, norm(target), norm(draft), draw(st.integers(0, 2**64 - 1)), draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(tree_inputs())
def test_parity_with_reference(case):
    parents, tokens, target, draft, seed, replacement = case
    r = verify_tree(parents, tokens, target, draft, seed=seed, replacement=replacement)
    path, out = ref_verify_tree(parents, tokens, target.tolist(), None if draft is None else draft.tolist(), seed, 0, replacement)
    assert r.path.tolist() == path and r.tokens.tolist() == out


@settings(max_examples=60, deadline=None)
@given(tree_inputs())
def test_torch_device_path_matches_rust(case):
    """The accelerator code path, run on CPU tensors, gives the Rust path's result."""
    import torch

    from tokenloom.verify.device import verify_tree_torch

    parents, tokens, target, draft, seed, replacement = case
    tt = torch.from_numpy(target)
    td = None if draft is None else torch.from_numpy(draft)
    r = verify_tree_torch(parents, tokens, tt, td, seed, 0, replacement)
    ref = verify_tree(parents, tokens, target, draft, seed=seed, replacement=replacement)
    assert r.path.tolist() == ref.path.tolist() and r.tokens.tolist() == ref.tokens.tolist()


def test_batch_parity_with_padding():
    rng = np.random.default_rng(0)
    lengths = [5, 1, 8, 3]
    t_max, b = 8, len(lengths)
    par = np.zeros((b, t_max), dtype=np.int64)
    tok = np.zeros((b, t_max), dtype=np.int64)
    target = rng.dirichlet(np.ones(V), size=(b, t_max))
    draft = rng.dirichlet(np.ones(V), size=(b, t_max))
    for i, n in enumerate(lengths):
        par[i, :n] = [-1] + [int(rng.integers(0, j)) for j in range(1, n)]
        tok[i, :n] = rng.integers(0, V, n)
    for d in (None, draft):
        rs = verify_tree_batch(par, tok, target, d, lengths, seed=9)
        for i, (r, n) in enumerate(zip(rs, lengths)):
            path, out = ref_verify_tree(
                par[i, :n].tolist(), tok[i, :n].tolist(), target[i, :n].tolist(),
                None if d is None else d[i, :n].tolist(), 9, i,
            )
            assert r.path.tolist() == path and r.tokens.tolist() == out
    from tokenloom.verify.device import verify_tree_batch_torch
    import torch

    rs = verify_tree_batch(par, tok, target, draft, lengths, seed=4)
    rt = verify_tree_batch_torch(par, tok, torch.from_numpy(target), torch.from_numpy(draft), lengths, 4, True)
    assert [r.tokens.tolist() for r in rs] == [r.tokens.tolist() for r in rt]


U = np.full((3, V), 1.0 / V)


@pytest.mark.parametrize(
    "args, kwargs, exc, match",
    [
        (([], [], np.zeros((0, V))), {}, ValueError, "empty tree"),
        (([-1, 2, 0], [0, 1, 1], U), {}, ValueError, "topologically"),
        (([0, 0, 0], [0, 1, 1], U), {}, ValueError, r"parents\[0\] must be -1"),
        (([-1, 0, 0], [0, 1], U), {}, ValueError, "tokens: expected length 3"),
        (([-1, 0, 0], [0, 1, V], U), {}, IndexError, rf"tokens: {V} is out of range \[0, {V}\)"),
        (([-1, 0, 0], [0, 1, -1], U), {}, IndexError, "out of range"),
        (([-1, 0], [0, 1], U), {}, ValueError, "target_probs: expected 2 rows"),
        (([-1, 0, 0], [0, 1, 1], U[:, :3]), {"draft_probs": U}, ValueError, "draft_probs: expected"),
        (([-1, 0, 0], [0, 1, 1], U * 2), {}, ValueError, r"target_probs\[0\] sums to 2"),
        (([-1, 0, 0], [0, 1, 1], np.where(np.eye(3, V) > 0, np.nan, U)), {}, ValueError, "finite and >= 0"),
        (([-1, 0, 0], [0, 1, 1], U - np.eye(3, V) * 0.5 + np.eye(3, V, 1) * 0.5), {}, ValueError, "finite and >= 0"),
        (([-1, 0, 0], [0, 1, 1], U), {"draft_probs": -U}, ValueError, r"draft_probs\[0, 1\] = -"),
        (([-1, 0, 0], [0, 1, 1], U.astype(np.int64)), {}, ValueError, "float"),
        (([-1, 0, 0], [0, 1, 1], U[None]), {}, ValueError, "2-D"),
        (([-1, 0, 0], [0.5, 1, 1], U), {}, ValueError, "integer ids"),
        (([-1, 0, 0], [0, 1, 1], U), {"seed": 1.5}, TypeError, "seed"),
    ],
)
def test_bad_input(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        verify_tree(*args, **kwargs)


def test_bad_input_torch_path():
    import torch

    from tokenloom.verify.device import verify_tree_torch

    t = torch.from_numpy(U)
    with pytest.raises(ValueError, match="sums to"):
        verify_tree_torch([-1, 0, 0], [0, 1, 1], t * 2, None, 0, 0, True)
    with pytest.raises(IndexError, match="out of range"):
        verify_tree_torch([-1, 0, 0], [0, 1, V], t, None, 0, 0, True)
    with pytest.raises(ValueError, match="topologically"):
        verify_tree_torch([-1, 2, 0], [0, 1, 1], t, None, 0, 0, True)


def test_batch_bad_input():
    par = np.array([[-1, 0, 0]] * 2)
    tok = np.array([[0, 1, 1]] * 2)
    target = np.broadcast_to(U, (2, 3, V))
    with pytest.raises(IndexError, match="lengths"):
        verify_tree_batch(par, tok, target, lengths=[4, 1])
    with pytest.raises(ValueError, match="empty tree"):
        verify_tree_batch(par, tok, target, lengths=[0, 1])
    with pytest.raises(ValueError, match="target_probs"):
        verify_tree_batch(par, tok, target[:, :2], lengths=[2, 2])
    with pytest.raises(ValueError, match="3-D"):
        verify_tree_batch(par, tok, U, lengths=[2, 2])


def test_exports():
    for name in ("verify_tree", "verify_tree_batch", "verify_chain", "verify_chain_batch", "Sampler", "probs_from_logits"):
        assert name in tokenloom.__all__ and hasattr(tokenloom, name)
    assert depths([-1, 0, 1]).tolist() == [0, 1, 2]
