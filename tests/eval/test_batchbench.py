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


def test_batch_bench_runs_keep_their_own_drafter_states(tiny_llama, monkeypatch):
    """Per method and batch size, the warm-up, the batched runs and the one-at-a-time runs each
    draft from their own process-wide recycler: none sees rows another wrote from the same
    prompts."""
    from tokenloom.eval import batchbench
    from tokenloom.spec.recycling.recycler import default_recycler

    seen = []

    def fake_ours(model, ids, mask, n, eos, method, kw):
        seen.append((method, "warm-up" if n == 8 else "batch", int(ids.shape[0]), id(default_recycler(49152, model=model, persist=False))))
        return [[5] * n for _ in range(int(ids.shape[0]))], n

    def fake_singles(model, rows, n, eos, method, kw):
        seen.append((method, "single", len(rows), id(default_recycler(49152, model=model, persist=False))))

    monkeypatch.setattr(batchbench, "_ours", fake_ours)
    monkeypatch.setattr(batchbench, "_singles", fake_singles)
    outside = id(default_recycler(49152, model=tiny_llama, persist=False))
    prompts = [prompt_ids(s, n=4 + s)[0] for s in range(4)]
    run_batch_bench(tiny_llama, prompts, [1, 2], ["recycling", "merged"], 3, [2])
    states = {}
    for method, kind, rows, rec in seen:
        states.setdefault((method, kind, rows), set()).add(rec)
    assert all(len(v) == 1 for v in states.values()), "one state per (method, kind, batch size), kept across groups"
    ids = [next(iter(v)) for v in states.values()]
    assert len(set(ids)) == len(ids) == 2 * 3 * 2 and outside not in ids
