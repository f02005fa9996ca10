"""top_k_ids / _core.top_k_rows: parity with the definition (a pure-Python sort), torch.topk on
distinct values, NaN and tie rules, dtypes and devices, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import _core
from tokenloom.sampling.topk import top_k_ids


def reference(rows, k):
    """Sort each row by (NaN first, larger value first, lower column)."""
    out = []
    for row in rows:
        order = sorted(range(len(row)), key=lambda j: (0, 0.0, j) if math.isnan(row[j]) else (1, -row[j], j))
        out.append(order[:k])
    return np.array(out, dtype=np.int64).reshape(len(rows), k)


values = st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5, float("nan"), float("inf"), -float("inf")]),
                   st.floats(-1e6, 1e6, width=32))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.integers(1, 90).flatmap(
    lambda v: st.tuples(st.lists(st.lists(values, min_size=v, max_size=v), min_size=n, max_size=n), st.integers(1, v)))),
    st.sampled_from([np.float32, np.float64]))
def test_rust_equals_reference(case, dtype):
    rows, k = case
    x = np.array(rows, dtype=dtype)
    assert np.array_equal(_core.top_k_rows(x, k), reference(x.tolist(), k))


def test_vocab_sized_rows_equal_torch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(33, 49152, generator=gen)  # distinct values: no tie to break
    for n in (1, 5, 33):
        for k in (1, 8, 64):
            assert np.array_equal(top_k_ids(x[:n], k), x[:n].topk(k, dim=-1).indices.numpy())
    # logits with a few dominant entries late in the row (blocks skipped, then entered)
    y = torch.full((2, 10000), -5.0)
    y[0, 9999], y[0, 17], y[1, 5000] = 3.0, 2.0, 9.0
    assert top_k_ids(y, 3).tolist() == [[9999, 17, 0], [5000, 0, 1]]


def test_ties_and_nan():
    row = np.array([[1.0, 3.0, 3.0, np.nan, -1.0, np.nan, 3.0]], dtype=np.float32)
    assert top_k_ids(row, 5).tolist() == [[3, 5, 1, 2, 6]]
    assert top_k_ids(torch.from_numpy(row), 7).tolist() == [[3, 5, 1, 2, 6, 0, 4]]


def test_torch_inputs():
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    want = x.topk(6, dim=-1).indices.numpy()
    assert np.array_equal(top_k_ids(x.t().contiguous().t(), 6), want), "a non-contiguous view"
    assert np.array_equal(top_k_ids(x.double(), 6), want)
    assert np.array_equal(top_k_ids(x.requires_grad_(), 6), want)
    b = x.detach().bfloat16()
    got = top_k_ids(b, 6)
    assert got.dtype == np.int64 and np.array_equal(got, b.topk(6, dim=-1).indices.numpy())
    with torch.inference_mode():
        assert np.array_equal(top_k_ids(x.detach() * 1, 6), want)


@pytest.mark.parametrize("logits, k, err", [
    (np.zeros((2, 5), np.float32), 0, ValueError),
    (np.zeros((2, 5), np.float32), 6, ValueError),
    (np.zeros((2, 5), np.float32), 2.0, TypeError),
    (np.zeros((2, 5), np.float32), True, TypeError),
    (np.zeros(5, np.float32), 1, ValueError),
    (np.zeros((2, 5), np.int64), 1, ValueError),
    (torch.zeros(5), 1, ValueError),
    (torch.zeros((2, 5), dtype=torch.bfloat16), 6, ValueError),
    (torch.zeros((2, 5), dtype=torch.bfloat16), 1.5, TypeError),
])
def test_bad_input(logits, k, err):
    with pytest.raises(err):
        top_k_ids(logits, k)


def test_empty_rows():
    assert top_k_ids(np.zeros((0, 7), np.float32), 3).shape == (0, 3)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.integers(1, 90).flatmap(
    lambda v: st.tuples(st.lists(st.lists(values, min_size=v, max_size=v), min_size=n, max_size=n), st.integers(1, v)))))
def test_bfloat16_bits_equal_reference(case):
    """bfloat16 rows given as their bits (bf16=True) rank as their values do."""
    rows, k = case
    t = torch.tensor(rows, dtype=torch.float32).to(torch.bfloat16)
    want = reference(t.float().tolist(), k)
    assert np.array_equal(_core.top_k_rows(t.view(torch.int16).numpy(), k, bf16=True), want)
    assert np.array_equal(_core.top_k_rows(t.view(torch.int16).numpy().view(np.uint16), k, bf16=True), want)
    assert np.array_equal(top_k_ids(t, k), want)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.integers(1, 70).flatmap(
    lambda v: st.lists(st.lists(values, min_size=v, max_size=v), min_size=n, max_size=n))),
    st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16]))
def test_argmax_ids_equals_torch_argmax(rows, dtype):
    """argmax_ids is torch.argmax: the first of tied values, NaN above every number; any leading
    dimensions; float32 / float64 / bfloat16 through the Rust kernel, float16 through torch."""
    from tokenloom.sampling.topk import argmax_ids

    x = torch.tensor(rows, dtype=torch.float32).to(dtype)
    got = argmax_ids(x)
    assert got.dtype == np.int64 and np.array_equal(got, x.argmax(-1).numpy())
    assert np.array_equal(argmax_ids(x[None]), x[None].argmax(-1).numpy())  # [1, n, V]
    assert np.array_equal(argmax_ids(x[0]), x[0].argmax(-1).numpy())  # one row: a 0-d array


def test_argmax_ids_on_vocab_rows_and_empty_inputs():
    from tokenloom.sampling.topk import argmax_ids

    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(17, 49152, generator=gen).to(dtype)
        x[3, 100] = x[3, 200] = 1e4  # a tie: the lower id
        assert np.array_equal(argmax_ids(x), x.argmax(-1).numpy())
        assert np.array_equal(argmax_ids(x[:, ::2]), x[:, ::2].argmax(-1).numpy())  # not contiguous
    assert argmax_ids(torch.zeros(0, 5)).shape == (0,)
    with pytest.raises((IndexError, RuntimeError)):
        argmax_ids(torch.zeros(2, 0))
