"""The top-k a recycling / merged drafter takes after every step (the target's 8 best ids at
each of T tree positions, vocabulary 49,152): the Rust one-pass kernel (``top_k_ids`` on CPU)
vs ``torch.topk`` (the anchor it replaced) vs NumPy ``argpartition`` (a reference), on the
embedded model's real logits of tokenloom's own source. Every row checks it gives the same
ids as the others."""

from __future__ import annotations

import numpy as np
import pytest

from tokenloom.sampling.topk import top_k_ids

K = 8


@pytest.fixture(scope="module")
def logits(source_tokens):
    """float32 [33, 49152]: the embedded model's logits at 33 positions of a source file."""
    torch = pytest.importorskip("torch")
    try:
        from tokenloom.integrations.hf.models import load_default

        model, _ = load_default()
    except FileNotFoundError as e:  # pragma: no cover - the embedded model is not installed
        pytest.skip(str(e))
    ids = torch.as_tensor(source_tokens[0][:33]).unsqueeze(0)
    with torch.inference_mode():
        return model(input_ids=ids).logits[0].float().contiguous()


def numpy_top_k(x: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-x, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(x, part, axis=-1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, axis=-1)


@pytest.mark.model
@pytest.mark.parametrize("rows", [1, 17, 33])
@pytest.mark.parametrize("impl", ["rust", "torch", "numpy"])
def test_top_k(benchmark, logits, rows, impl):
    x = logits[:rows].contiguous()
    benchmark.group = f"top-{K} of {rows} logit rows (vocabulary {x.shape[1]})"
    fns = {
        "rust": lambda: top_k_ids(x, K),
        "torch": lambda: x.topk(K, dim=-1).indices.numpy(),
        "numpy": lambda: numpy_top_k(x.numpy(), K),
    }
    got = benchmark(fns[impl])
    for other in fns.values():
        np.testing.assert_array_equal(got, other())


@pytest.mark.model
@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("impl", ["rust", "torch"])
def test_argmax(benchmark, logits, rows, dtype, impl):
    """The greedy argmax of T logit rows: ``argmax_ids`` (the Rust kernel, k = 1; bfloat16 rows
    as their bits) vs ``torch.argmax`` (the anchor it replaced), with torch on one thread as
    during a tiles step; both give the same ids."""
    import torch

    from tokenloom.sampling.topk import argmax_ids

    x = logits[:rows].to(getattr(torch, dtype)).contiguous()
    benchmark.group = f"argmax of {rows} {dtype} logit rows (vocabulary {x.shape[1]})"
    fns = {"rust": lambda: argmax_ids(x), "torch": lambda: x.argmax(-1).numpy()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = benchmark(fns[impl])
    finally:
        torch.set_num_threads(threads)
    for other in fns.values():
        np.testing.assert_array_equal(got, other())
