"""DySpec tree building: the Rust builder vs the pure-Python heapq reference vs ONE draft
forward (the anchor: the issue's target is builder time per tree < 2% of one draft forward).

The draft rows of one real tree are recorded first (tiny random Llama as an HFDraft; the
embedded SmolLM2 as an EarlyExitDraft), then replayed: "rust" is the whole builder work of a
step (reset, every expand with the draft's torch top-k tensors as they come, tree), "python"
the reference on the same rows, "draft-forward" one forward of the widest frontier.
"""

from __future__ import annotations

import pytest
import torch

from tokenloom import DynamicTreeBuilder, EarlyExitDraft, HFDraft
from tokenloom.runtime.treeattn import prefix_tree_mask
from tests.conftest import make_tiny_llama, smollm  # noqa: F401  (smollm: session fixture)
from tests.reference.dyspec import RefBuilder

BUDGET, DEPTH, K = 32, 6, 8


def record(draft, seq):
    """Grow one tree with the real draft; returns the rounds (frontier, ids, probs)."""
    b = DynamicTreeBuilder(BUDGET, DEPTH, k=K)
    draft.start(seq)
    b.reset(seq[-1])
    rounds = []
    with torch.inference_mode():
        while not b.done:
            f = b.frontier()
            ids, probs = draft.expand(f)
            rounds.append((f, ids, probs))
            b.expand(f.ids, ids, probs)
    return rounds, b.tree()


def replay_rust(b, root, rounds):
    b.reset(root)
    for f, ids, probs in rounds:
        b.expand(f.ids, ids, probs)
    return b.tree()


def replay_ref(r, root, rounds):
    r.reset(root)
    for f, ids, probs in rounds:
        r.expand(f, ids, probs)
    return r.tree()


def one_forward(draft, seq, width):
    """A closure running one draft forward of `width` tree tokens after the prefix."""
    draft.start(seq)
    past = draft.cache_len
    dev = draft.device
    inp = torch.tensor([[seq[-1]] * width], device=dev)
    pos = torch.full((1, width), len(seq), device=dev)
    mask = prefix_tree_mask(past, past, [[] for _ in range(width)], draft.dtype, dev)

    def run():
        with torch.inference_mode():
            draft._forward(inp, pos, mask)
        draft._cache.crop(past)

    return run


def bench(benchmark, impl, draft, seq, group):
    rounds, tree = record(draft, seq)
    widths = [f.size for f, _, _ in rounds]
    benchmark.group = group
    benchmark.extra_info.update(forwards=len(rounds), frontier_sizes=widths, tree_nodes=tree.size)
    if impl == "rust":
        b = DynamicTreeBuilder(BUDGET, DEPTH, k=K)
        got = benchmark(replay_rust, b, seq[-1], rounds)
        assert got.tokens.tolist() == tree.tokens.tolist()
    elif impl == "python":
        lrounds = [(f.ids.tolist(), i.tolist(), p.double().tolist()) for f, i, p in rounds]
        r = RefBuilder(BUDGET, DEPTH, k=K)
        got = benchmark(replay_ref, r, seq[-1], lrounds)
        assert got["tokens"] == tree.tokens.tolist()
    else:
        benchmark(one_forward(draft, seq, max(widths)))


IMPLS = ["rust", "python", "draft-forward"]


@pytest.mark.parametrize("impl", IMPLS)
def test_builder_tiny_llama(benchmark, impl):
    model = make_tiny_llama()
    seq = list(range(1000, 1064))
    bench(benchmark, impl, HFDraft(model, k=K), seq, f"dyspec B={BUDGET} D={DEPTH} k={K}, tiny Llama draft")


@pytest.mark.model
@pytest.mark.parametrize("impl", IMPLS)
def test_builder_embedded_early_exit(benchmark, impl, smollm):
    model, tok = smollm
    text = "Speculative decoding drafts several tokens and verifies them with one forward of the target model."
    seq = tok(text)["input_ids"]
    bench(benchmark, impl, EarlyExitDraft(model, 8, k=K), seq, f"dyspec B={BUDGET} D={DEPTH} k={K}, SmolLM2 early exit 8/30")
