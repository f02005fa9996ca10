"""Batches (``tokenloom.generate`` with ``input_ids`` [B, n] and a left-padded
``attention_mask``): every method gives, row by row, exactly HF's batched greedy tokens on the
same padded batch, rows that end early included; seeded sampling is exact per row; the batched
tree forward and the per-row cache compaction agree with their batch-1 forms; bad input is
refused before any model work."""

from __future__ import annotations

import pytest
import torch

import tokenloom
from tokenloom.decoding.batch import row_seeds
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import cache_kv, compact_rows, select_rows
from tokenloom.runtime.treeattn import batch_tree_forward, tree_forward

from tokenloom.integrations.hf.models import make_tiny_llama
from tests.reference.spec import joint_chi2

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V = 256
METHODS = [("plain", {}), ("recycling", {}), ("dyspec", {}), ("lookup", {}), ("suffix", {}), ("merged", {})]


@pytest.fixture(scope="module")
def llama():
    """A tiny random Llama with an untied, random output layer (a 256-token vocabulary): its
    greedy outputs vary instead of repeating the last token."""
    model = make_tiny_llama(vocab_size=V, seed=1)
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(torch.randn(V, 32, generator=torch.Generator().manual_seed(1)) * 3)
    model.config.tie_word_embeddings = False
    return model


def left_padded(lengths, seed=5, pad=0):
    """(input_ids, attention_mask) [B, max(lengths)] of random rows, left-padded."""
    n = max(lengths)
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), n), pad, dtype=torch.long)
    mask = torch.zeros((len(lengths), n), dtype=torch.long)
    for b, m in enumerate(lengths):
        ids[b, n - m :] = torch.randint(3, V, (m,), generator=g)
        mask[b, n - m :] = 1
    return ids, mask


def hf_rows(model, ids, mask, n_new, eos):
    """HF's batched greedy on the padded batch: each row's new tokens up to its first stop
    token (included)."""
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new,
                             eos_token_id=eos, pad_token_id=0)
    rows = []
    for row in out[:, ids.shape[1] :].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if eos is not None and t == eos), len(row))
        rows.append(row[:cut])
    return rows


def our_rows(out, n):
    """Each row's new tokens, read through the output's attention mask."""
    return [seq[n:][: int(m[n:].sum())] for seq, m in zip(out.sequences.tolist(), out.attention_mask)]


@pytest.mark.parametrize("method, kwargs", METHODS)
@pytest.mark.parametrize("lengths", [[5], [7, 3], [9, 4, 6, 2], [3, 11, 6, 1, 8, 5, 10, 2]])
def test_batch_greedy_is_hf_batched_greedy(llama, method, kwargs, lengths):
    """Row by row HF's batched greedy tokens; a stop token that row 0 emits early ends some rows
    before the others (they leave the batch), and the padding after a row is the pad id."""
    ids, mask = left_padded(lengths)
    n = ids.shape[1]
    eos = hf_rows(llama, ids, mask, 24, None)[0][5]  # row 0 stops at its 6th token
    ref = hf_rows(llama, ids, mask, 24, eos)
    out = tokenloom.generate(llama, ids, attention_mask=mask, method=method, max_new_tokens=24,
                             eos_token_id=eos, pad_token_id=1, **kwargs)
    assert our_rows(out, n) == ref
    assert out.sequences[:, :n].tolist() == ids.tolist() and out.attention_mask[:, :n].tolist() == mask.tolist()
    width = max(len(r) for r in ref)
    assert out.sequences.shape == (len(lengths), n + width)
    for b, r in enumerate(ref):
        assert out.sequences[b, n + len(r) :].tolist() == [1] * (width - len(r))
    if len(lengths) > 1:
        assert [r.new_tokens for r in out.stats.rows] == [len(r) for r in ref]
        assert out.stats.new_tokens == sum(len(r) for r in ref)
        assert out.stats.steps == max(r.steps for r in out.stats.rows)
        if method != "plain":
            assert all(r.spec.drafter for r in out.stats.rows)


def test_batch_of_one_unpadded_is_the_single_path(llama):
    """B == 1 without padding gives what it always gave; with padding, the same tokens after
    the padding kept in the output."""
    ids, mask = left_padded([6, 9])
    row = ids[:1, 3:]
    single = tokenloom.generate(llama, row, method="recycling", max_new_tokens=10, eos_token_id=[])
    assert single.attention_mask is None and single.stats.rows == []
    padded = tokenloom.generate(llama, ids[:1], attention_mask=mask[:1], method="recycling", max_new_tokens=10, eos_token_id=[])
    assert padded.sequences[0, 3:].tolist() == single.sequences[0].tolist()
    assert padded.attention_mask[0].tolist() == [0] * 3 + [1] * 16


def test_batch_tree_forward_matches_tree_forward(llama):
    """Each row of one batched tree step has the logits of its own batch-1 tree step (trees of
    different sizes, rows of different lengths), and compact_rows keeps what compact_cache
    keeps, row by row."""
    from transformers import DynamicCache

    from tokenloom.runtime.kvcache import compact_cache

    ids, mask = left_padded([7, 4, 5])
    trees = [([11, 12, 13, 14], [-1, 0, 0, 1]), ([21], [-1]), ([31, 32, 33], [-1, 0, 1])]
    paths = [[0, 1, 3], [0], [0, 1]]
    n = ids.shape[1]
    with torch.inference_mode():
        cache = DynamicCache()
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        llama(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_arg(llama, cache))
        starts, ends = [n - int(m) for m in mask.sum(1)], [n] * 3
        got = batch_tree_forward(llama, cache, [t for t, _ in trees], [p for _, p in trees], [_depths(p) for _, p in trees],
                                 starts=starts, ends=ends)
        new_ends = compact_rows(cache, n, ends, paths)
        assert new_ends == [n + len(p) for p in paths]
        for b, ((toks, ps), path) in enumerate(zip(trees, paths)):
            one = DynamicCache()
            llama(input_ids=ids[b : b + 1, starts[b] :], use_cache=True, **cache_arg(llama, one))
            want = tree_forward(llama, one, toks, ps)
            torch.testing.assert_close(got[b, : len(toks)], want, rtol=1e-4, atol=1e-4)
            compact_cache(one, n - starts[b], path)
            for (k, v), (k1, v1) in zip(cache_kv(cache), cache_kv(one)):
                torch.testing.assert_close(k[b : b + 1, :, starts[b] : new_ends[b]], k1, rtol=1e-4, atol=1e-4)
                torch.testing.assert_close(v[b : b + 1, :, starts[b] : new_ends[b]], v1, rtol=1e-4, atol=1e-4)
        k0 = cache_kv(cache)[0][0][2, :, 1:].clone()
        select_rows(cache, [2], 1)  # drop rows 0 and 1 and one slot of left padding
        assert torch.equal(cache_kv(cache)[0][0][0], k0)


def _depths(parents):
    d = [0] * len(parents)
    for i in range(1, len(parents)):
        d[i] = d[parents[i]] + 1
    return d


def test_compact_rows_refuses_bad_paths(llama):
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode():
        llama(input_ids=torch.tensor([[5, 6, 7], [8, 9, 10]]), use_cache=True, **cache_arg(llama, cache))
    for ends, paths in [([1, 1], [[0], []]), ([1, 1], [[0, 0], [0]]), ([1, 1], [[0, 3], [0]]), ([1, 2], [[0]])]:
        with pytest.raises(ValueError, match="compact_rows"):
            compact_rows(cache, 1, ends, paths)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda ids, m: (ids, m[:, 1:]), "shape of input_ids"),
        (lambda ids, m: (ids, torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])), "right padding"),
        (lambda ids, m: (ids, torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1]])), "no token"),
        (lambda ids, m: (ids, m * 2), "only 0"),
        (lambda ids, m: (ids, m.float()), "integer or bool"),
        (lambda ids, m: (ids[:0], m[:0]), "B = 0"),
    ],
)
def test_batch_bad_input_before_model_work(llama, make, match):
    ids, mask = left_padded([4, 3])
    ids, mask = make(ids, mask)
    hook = llama.register_forward_pre_hook(lambda *a: pytest.fail("the model ran"))
    try:
        with pytest.raises(ValueError, match=match):
            tokenloom.generate(llama, ids, attention_mask=mask, max_new_tokens=4)
    finally:
        hook.remove()


def test_batch_refusals(llama, monkeypatch):
    """A row longer than the model's context, a streamer or a method without a batch form."""
    ids, mask = left_padded([4, 3])
    monkeypatch.setattr(llama.config, "max_position_embeddings", 3)
    with pytest.raises(ValueError, match="longer than the model's context"):
        tokenloom.generate(llama, ids, attention_mask=mask)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="streamer"):
        tokenloom.generate(llama, ids, attention_mask=mask, streamer=object())
    with pytest.raises(ValueError, match="one request at a time"):
        tokenloom.generate(llama, ids, attention_mask=mask, method="cautious")
    empty = tokenloom.generate(llama, ids, attention_mask=mask, max_new_tokens=0, method="recycling")
    assert empty.sequences.tolist() == ids.tolist() and empty.stats.new_tokens == 0


def test_row_seeds():
    assert row_seeds(None, 3) == [None] * 3
    seeds = row_seeds(7, 4)
    assert seeds == row_seeds(7, 4) and len(set(seeds)) == 4 and row_seeds(7, 2) == seeds[:2]


@pytest.mark.parametrize("method, kwargs", [
    ("plain", {}),
    ("recycling", {"tree": "2.2.2", "batch_budget": 4}),
    ("suffix", {"budget": 6, "batch_budget": None}),
    ("dyspec", {"budget": 4, "max_depth": 2, "draft_layers": 1, "batch_budget": 4}),
])
def test_batch_sampling_exact_per_row(llama, method, kwargs):
    """Seeded runs of a batch of 3 rows (different lengths, temperature 2, top-k 3): each
    row's first two tokens follow the exact joint law of its own unpadded prompt (plain: the
    root-only trees; recycling, suffix: deterministic drafts; dyspec: sampled drafts without
    replacement). Recycling and dyspec run under a batch budget of 4 draft nodes per step, which
    cuts the rows' trees (dyspec's to its root's first draws: the prefix stays lossless)."""
    base = [7, 9, 11, 13]
    ids = torch.tensor([[0, 0] + base[:2] * 2, base + base[:2], [0, 0, 0] + base[1:]])
    mask = (torch.arange(6) >= torch.tensor([[2], [0], [3]])).long()
    runs = {}
    cut = []

    def batch(i):
        if i not in runs:
            out = tokenloom.generate(llama, ids, attention_mask=mask, method=method, max_new_tokens=2,
                                     temperature=2.0, top_k=3, seed=i, eos_token_id=[], **kwargs)
            runs[i] = (out.sequences[:, 6:].tolist(), [bool(r.spec and r.spec.accepted) for r in out.stats.rows])
            extra = out.stats.rows[0].extra
            cut.append(extra.get("draft_nodes_sent", 0) < extra.get("draft_nodes_proposed", 0))
        return runs[i]

    accepted = 0
    for b in range(3):
        row = ids[b : b + 1, int((mask[b] == 0).sum()) :]
        pvalue, acc = joint_chi2(llama, row, 2.0, 3, 2, 1200, lambda i: (batch(i)[0][b], batch(i)[1][b]))
        assert pvalue > 1e-3, (method, b)
        accepted += acc
    assert method == "plain" or accepted > 0  # drafts were accepted: verification is exercised
    assert all(cut) == ("batch_budget" in kwargs and kwargs["batch_budget"] is not None)  # the budget cut every run's trees


def test_batch_on_embedded_model(smollm):
    """Chat prompts of different lengths, left-padded, on the embedded model: row by row HF's
    batched greedy tokens (24 new tokens, stop token 2) for a few methods."""
    from tokenloom.integrations.hf.chat import chat_input_ids

    model, tok = smollm
    prompts = ["What is the capital of France?", "Write a haiku about the sea in winter, please.",
               "List three prime numbers.", "Explain recursion to a child in one short paragraph."]
    rows = [chat_input_ids(tok, p)[0] for p in prompts]
    n = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), n), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, n - len(r) :], mask[b, n - len(r) :] = r, 1
    ref = hf_rows(model, ids, mask, 24, 2)
    for method in ("plain", "recycling", "suffix"):
        out = tokenloom.generate(model, ids, attention_mask=mask, method=method, max_new_tokens=24, eos_token_id=2)
        assert our_rows(out, n) == ref, method


def test_batch_cache_stays_flat(llama, monkeypatch):
    """Over many steps the cache never holds more slots than its longest row (tree padding and
    stale entries do not accumulate), and when rows leave, the left padding no row needs goes."""
    from tokenloom.runtime import kvcache

    seen = []
    compact, select = kvcache.compact_rows, kvcache.select_rows

    def watch_compact(cache, past_len, ends, paths):
        new = compact(cache, past_len, ends, paths)
        seen.append((kvcache.cache_length(cache), max(new)))
        return new

    def watch_select(cache, rows, start=0):
        select(cache, rows, start)
        seen.append(("select", len(rows), start))

    monkeypatch.setattr(kvcache, "compact_rows", watch_compact)
    monkeypatch.setattr(kvcache, "select_rows", watch_select)
    ids, mask = left_padded([12, 3, 7])
    eos = hf_rows(llama, ids, mask, 40, None)[1][9]  # row 1 (the shortest prompt) stops at its 10th token
    out = tokenloom.generate(llama, ids, attention_mask=mask, method="suffix", max_new_tokens=120, eos_token_id=eos)
    steps = [s for s in seen if s[0] != "select"]
    assert len(steps) > 30 and all(length == longest for length, longest in steps)
    assert steps[-1][0] <= 12 + 120 + 16  # the last step may accept past the token budget
    drops = [s for s in seen if s[0] == "select"]
    assert drops and drops[0][1] < 3
    assert our_rows(out, ids.shape[1]) == hf_rows(llama, ids, mask, 120, eos)


def test_batch_loop_example(llama):
    """examples/batch_loop.py (the step API over a batch): HF's batched greedy tokens."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "examples" / "batch_loop.py"
    spec = importlib.util.spec_from_file_location("batch_loop_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ids, mask = left_padded([8, 3, 5])
    got = mod.batch_loop(llama, ids, mask, max_new_tokens=20, recycler=tokenloom.TokenRecycler(V))
    assert got == hf_rows(llama, ids, mask, 20, None)


def test_batch_step_refuses_bad_input(llama):
    from tokenloom.spec.recycling.drafter import RecyclingDrafter
    from tokenloom.spec.step import BatchTreeStep

    rec = tokenloom.TokenRecycler(V)
    ds = [RecyclingDrafter(rec, tree="2.2.2-4", seed_prefill=False) for _ in range(2)]
    with pytest.raises(ValueError, match="one drafter"):
        BatchTreeStep.propose(ds, [5], [0, 0], [3, 3], 3)
    with pytest.raises(ValueError, match="row 1"):
        BatchTreeStep.propose(ds, [5, 6], [0, 2], [3, 4], 3)
    step = BatchTreeStep.propose(ds, [5, 6], [0, 1], [3, 3], 3)
    assert step.attention_mask.shape == (2, 1, step.input_ids.shape[1], 3 + step.input_ids.shape[1])
    with pytest.raises(ValueError, match="expected shape"):
        step.verify(torch.zeros(2, 1, V))
    with pytest.raises(ValueError, match="seeds"):
        step.verify(torch.zeros(2, step.input_ids.shape[1], V), temperature=1.0, seeds=[1])
    assert len(step.verify(torch.zeros(2, step.input_ids.shape[1], V))) == 2
    with pytest.raises(RuntimeError, match="already"):
        step.verify(torch.zeros(2, step.input_ids.shape[1], V))


@pytest.mark.parametrize("method, kwargs", [("recycling", {"tree": "2.2.2"}), ("merged", {"budget": 8})])
def test_batch_budget_zero_is_plain_batched(llama, method, kwargs):
    """batch_budget=0: every row sends its root alone, so the loop is plain batched decoding:
    HF's batched greedy tokens in as many target forwards as plain (fixed trees and no kernel
    choice: no timing forwards)."""
    ids, mask = left_padded([9, 4, 6, 2])
    calls = {}
    outs = []
    for m in ("plain", method):
        hook = llama.register_forward_pre_hook(lambda *a, m=m: calls.__setitem__(m, calls.get(m, 0) + 1))
        try:
            outs.append(tokenloom.generate(llama, ids, attention_mask=mask, method=m, max_new_tokens=16, batch_budget=0,
                                           pack=False, **({} if m == "plain" else kwargs)))
        finally:
            hook.remove()
    ref = hf_rows(llama, ids, mask, 16, None)
    assert [our_rows(o, ids.shape[1]) for o in outs] == [ref, ref]
    assert calls[method] == calls["plain"] == 16  # the prefill, then one forward per token
    assert outs[1].stats.steps == outs[0].stats.steps == 16
    assert outs[1].stats.rows[0].extra["draft_nodes_sent"] == 0 < outs[1].stats.rows[0].extra["draft_nodes_proposed"]


@pytest.mark.parametrize("method, kwargs", METHODS[1:])
@pytest.mark.parametrize("batch_budget", [3, None])
def test_batch_budget_greedy_is_hf_batched_greedy(llama, method, kwargs, batch_budget):
    """Under a fixed budget (and with none) every lossless method still gives, row by row,
    HF's batched greedy tokens ("auto", the default, runs in
    test_batch_greedy_is_hf_batched_greedy)."""
    ids, mask = left_padded([9, 4, 6, 2], seed=6)
    out = tokenloom.generate(llama, ids, attention_mask=mask, method=method, max_new_tokens=20,
                             batch_budget=batch_budget, **kwargs)
    assert our_rows(out, ids.shape[1]) == hf_rows(llama, ids, mask, 20, None)
    if batch_budget is not None:
        extra = out.stats.rows[0].extra
        assert extra["batch_budget"] == 3 and extra["draft_nodes_sent"] <= 3 * extra["budget_steps"]


def test_batch_budget_refused_before_model_work(llama):
    ids, mask = left_padded([4, 3])
    hook = llama.register_forward_pre_hook(lambda *a: pytest.fail("the model ran"))
    try:
        for bad in ("fast", -2, 2.5):
            with pytest.raises(ValueError, match="batch_budget"):
                tokenloom.generate(llama, ids, attention_mask=mask, method="recycling", batch_budget=bad)
    finally:
        hook.remove()


def test_batch_budget_memory_flat_over_200_steps(llama, monkeypatch):
    """About 200 budgeted steps at B = 3 (one forward watched per step): the forward is never
    wider than the budget allows, and after every step the cache holds exactly its longest
    row (tree padding and stale entries never accumulate)."""
    from tokenloom.runtime import kvcache, treeattn

    steps = []
    forward, compact = treeattn.batch_tree_forward, kvcache.compact_rows

    def watch_forward(model, cache, tokens, *args, **kw):
        steps.append({"width": max(len(t) for t in tokens), "rows": len(tokens)})
        return forward(model, cache, tokens, *args, **kw)

    def watch_compact(cache, past_len, ends, paths):
        new = compact(cache, past_len, ends, paths)
        steps[-1].update(length=kvcache.cache_length(cache), longest=max(new))
        return new

    monkeypatch.setattr(treeattn, "batch_tree_forward", watch_forward)
    monkeypatch.setattr(kvcache, "compact_rows", watch_compact)
    ids, mask = left_padded([12, 3, 7])
    out = tokenloom.generate(llama, ids, attention_mask=mask, method="recycling", max_new_tokens=220,
                             eos_token_id=[], batch_budget=2)
    assert len(steps) >= 150
    assert all(s["width"] <= 3 and s["length"] == s["longest"] for s in steps)
    assert max(s["length"] for s in steps) <= 12 + 220 + 3
    assert our_rows(out, ids.shape[1]) == hf_rows(llama, ids, mask, 220, None)
