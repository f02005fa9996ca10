"""Byte-level benchmarks: the covering kernel, the look-ahead candidate kernel and the extension
plan (``CoverTree.extension_plan``) vs their pure-Python references, and ByteLM on the embedded model (greedy bytes/s, next_byte_probs) with
and without look-ahead rows. genlm-bytes is compared in a separate venv
(see docs/bytes.md) since it is not a dependency of tokenloom."""

from __future__ import annotations

import pytest

from tests.reference.bytes import allowed_canonical, expanded_tree, plan_paths, ref_covers, ref_extension_plan, ref_top_straddling

PREFIXES = [b"def fibonac", b"https:/", b"    return"]


@pytest.fixture(scope="module")
def vocab():
    from tokenloom import ByteVocab
    from tokenloom.integrations.hf.models import load_default_tokenizer

    return ByteVocab.from_tokenizer(load_default_tokenizer())


@pytest.mark.parametrize("canonical", [False, True], ids=["all", "canonical"])
@pytest.mark.parametrize("impl", ["rust", "python"])
def test_cover_kernel(benchmark, vocab, impl, canonical):
    benchmark.group = f"enumerate covers ({'canonical' if canonical else 'all'}) of {len(PREFIXES)} prefixes"
    ix = vocab.index
    if impl == "rust":
        benchmark(lambda: [ix.enumerate_covers(p, canonical=canonical, limit=10**7) for p in PREFIXES])
    else:
        allowed = (lambda path, t: allowed_canonical(vocab, path, t)) if canonical else None
        benchmark.pedantic(lambda: [ref_covers(vocab.token_bytes, p, allowed) for p in PREFIXES], rounds=3, iterations=1)


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_lookahead_kernel(benchmark, vocab, impl):
    """Top-8 straddling extensions of the live nodes after b"def fi" (random distributions)."""
    import numpy as np

    benchmark.group = "look-ahead candidates (top 8) after b'def fi'"
    tree, nodes = expanded_tree(vocab, b"def fi", True)
    rng = np.random.default_rng(0)
    qs = [(q / q.sum()).astype(np.float32) for q in (rng.random(vocab.width) for _ in nodes)]
    scales = [1.0] * len(nodes)
    if impl == "rust":
        benchmark(lambda: tree.top_straddling(nodes, qs, scales, 8))
    else:
        benchmark.pedantic(lambda: ref_top_straddling(vocab, tree, nodes, qs, scales, 8), rounds=1, iterations=1)


#: Byte prefixes with many exact paths (all covers): 8,603 and 1,515 plan rows with SmolLM2's vocabulary.
PLAN_PREFIXES = [b"def fibonacci(n):", b"    return x"]


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_extension_plan(benchmark, vocab, impl):
    """The exact paths below the root of each prefix (all covers): the Rust plan vs the
    reference (the exact prefixes of every cover); the same paths either way."""
    from tokenloom._core import CoverTree

    benchmark.group = f"extension plan (all covers) of {len(PLAN_PREFIXES)} prefixes"
    trees = []
    for p in PLAN_PREFIXES:
        trees.append(CoverTree(vocab.index, False))
        for b in p:
            trees[-1].push(b)

    def rust():
        return [t.extension_plan([0], 10**7) for t in trees]

    def python():
        return [ref_extension_plan(vocab.token_bytes, p) for p in PLAN_PREFIXES]

    if impl == "rust":
        plans, refs = benchmark(rust), python()
    else:
        plans, refs = rust(), benchmark.pedantic(python, rounds=2, iterations=1)
    for (matters, rows), want in zip(plans, refs):
        assert matters == [bool(want)] and sorted(plan_paths(rows)) == [p for p in want if p]


@pytest.fixture(scope="module")
def smollm():
    from tokenloom.integrations.hf.models import load_default

    return load_default()


@pytest.mark.model
@pytest.mark.parametrize("lookahead", [0, 8], ids=["no-lookahead", "lookahead8"])
def test_bytelm_greedy(benchmark, smollm, lookahead):
    from tokenloom import ByteLM

    model, tok = smollm
    benchmark.group = "ByteLM greedy, 64 bytes after 'def fibonacci(n):'"

    def run():
        lm = ByteLM(model, tok, canonical=True, lookahead=lookahead)
        out = lm.generate(b"def fibonacci(n):", 64)
        benchmark.extra_info.update(bytes=len(out), forwards=lm.forwards)

    benchmark.pedantic(run, rounds=1, iterations=1)


@pytest.mark.model
@pytest.mark.parametrize("lookahead", [0, 8], ids=["no-lookahead", "lookahead8"])
def test_bytelm_next_byte_probs(benchmark, smollm, lookahead):
    from tokenloom import ByteLM

    model, tok = smollm
    benchmark.group = "ByteLM next_byte_probs after every byte of 'def fibonacci(n):'"
    data = b"def fibonacci(n):"

    def run():
        lm = ByteLM(model, tok, canonical=True, lookahead=lookahead)
        for i in range(len(data) + 1):
            lm.next_byte_probs(data[:i])
        benchmark.extra_info.update(bytes=len(data), forwards=lm.forwards)

    benchmark.pedantic(run, rounds=1, iterations=1)
