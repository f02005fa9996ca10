"""verify_greedy / verify_greedy_batch: parity with a pure-Python reference, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import verify_greedy, verify_greedy_batch
from tests.reference.verify import ref_verify_greedy


@st.composite
def trees(draw, max_nodes=40, vocab=4):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    argmax = draw(st.lists(st.integers(0, vocab - 1), min_size=n, max_size=n))
    return parents, tokens, argmax


@settings(max_examples=300, deadline=None)
@given(trees())
def test_parity_with_reference(tree):
    parents, tokens, argmax = tree
    r = verify_greedy(parents, tokens, argmax)
    path, out = ref_verify_greedy(parents, tokens, argmax)
    assert r.path.tolist() == path and r.tokens.tolist() == out
    assert r.accepted == len(path) - 1


@settings(max_examples=50, deadline=None)
@given(st.lists(trees(max_nodes=12), min_size=1, max_size=5))
def test_batch_parity(batch):
    t_max = max(len(p) for p, _, _ in batch)
    arr = np.zeros((3, len(batch), t_max), dtype=np.int64)
    for b, tree in enumerate(batch):
        for k in range(3):
            arr[k, b, : len(tree[k])] = tree[k]
    lengths = [len(p) for p, _, _ in batch]
    rs = verify_greedy_batch(arr[0], arr[1], arr[2], lengths)
    for r, tree in zip(rs, batch):
        path, out = ref_verify_greedy(*tree)
        assert r.path.tolist() == path and r.tokens.tolist() == out


def test_accepts_torch_tensors():
    import torch

    r = verify_greedy(torch.tensor([-1, 0, 1]), torch.tensor([0, 3, 4]), torch.tensor([3, 4, 9]))
    assert r.tokens.tolist() == [3, 4, 9]


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (([], [], []), ValueError, "empty tree"),
        (([0, 0], [1, 1], [1, 1]), ValueError, r"parents\[0\] must be -1"),
        (([-1, 2, 0], [1, 1, 1], [1, 1, 1]), ValueError, "topologically"),
        (([-1, 0], [1], [1, 1]), ValueError, "tokens: expected length 2"),
        (([-1, 0], [1, 1], [1]), ValueError, "target_argmax: expected length 2"),
        (([-1, 0], [1, 1], [-5, 1]), IndexError, "out of range"),
        (([-1, 0], [1.5, 1], [1, 1]), ValueError, "integer ids"),
        (([[-1, 0]], [1, 1], [1, 1]), ValueError, "1-D"),
    ],
)
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        verify_greedy(*args)


def test_batch_bad_lengths():
    z = np.zeros((2, 3), dtype=np.int64)
    z[:, 0] = -1
    with pytest.raises(IndexError, match="lengths"):
        verify_greedy_batch(z, z, z, [4, 1])
    with pytest.raises(ValueError, match="empty tree"):
        verify_greedy_batch(z, z, z, [0, 1])
