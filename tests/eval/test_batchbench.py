"""``tokenloom bench --batch`` (:mod:`tokenloom.eval.batchbench`) on a tiny model: every row of
every method gives HF's batched greedy tokens, and the table has one line per (B, method)."""

from __future__ import annotations

import pytest
import torch

from tokenloom.eval.batchbench import check_batches, format_batch_table, left_pad, run_batch_bench

from tests.reference.spec import prompt_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_left_pad():
    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad=2)
    assert ids.tolist() == [[5, 6, 7], [2, 2, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_batch_bench_runs(tiny_llama):
    prompts = [prompt_ids(s, n=4 + s)[0] for s in range(3)]
    seen = []
    results = run_batch_bench(tiny_llama, prompts, [1, 2], ["plain", "suffix"], 6, [2], progress=seen.append)
    assert [(r.batch, r.method) for r in results] == [(b, m) for b in (1, 2) for m in ("hf", "plain", "suffix")]
    assert all(r.same_as_hf and r.tokens > 0 for r in results)
    assert all(r.single_seconds > 0 for r in results if r.method != "hf")
    assert len(seen) == 3 * 5 + 1 * 5  # B=1: 3 groups, B=2: 1 group; hf + 2 methods batched + 2 single
    table = format_batch_table(results)
    assert len(table.splitlines()) == 1 + len(results) and "NO" not in table


def test_check_batches():
    with pytest.raises(ValueError, match="integers >= 1"):
        check_batches([0], ["plain"])
    with pytest.raises(ValueError, match="one request at a time"):
        check_batches([2], ["cautious"])
