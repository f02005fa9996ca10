"""DC-PDD's Rust kernels (``tokenloom.scores``) vs the references of their parity tests
(``tests/scores/test_tokens.py``): counting a 50,000-token reference corpus into ``TokenCounts``
(NumPy ``bincount``) and the DC-PDD score of a 2,048-token text (``dcpdd_score`` through
``dc_pdd``, against ``tests/scores_reference.ref_dc_pdd``), on tokenloom's own source tokenized
with the embedded tokenizer (random log-probabilities: no model). Every row checks its output
against the other side's."""

from __future__ import annotations

import numpy as np
import pytest

from tests.reference.scores import ref_dc_pdd
from tokenloom.scores import count_tokens, dc_pdd

VOCAB, CORPUS, TEXT, CLIP = 49152, 50_000, 2048, 0.01


@pytest.fixture(scope="module")
def corpus(source_tokens):
    """The first files' tokens, cut at CORPUS tokens in all, and a TEXT-token text from another file."""
    docs, n = [], 0
    for d in source_tokens:
        if n >= CORPUS:
            break
        docs.append(d[: CORPUS - n])
        n += len(docs[-1])
    text = np.concatenate(source_tokens[len(docs):])[:TEXT]
    return docs, text


@pytest.mark.parametrize("impl", ["rust", "numpy"])
def test_count_corpus(benchmark, corpus, impl):
    docs, _ = corpus
    benchmark.group = f"token counts of a {CORPUS}-token corpus ({len(docs)} documents)"

    def rust():
        return count_tokens(VOCAB, ids=docs).counts()

    def numpy():
        return np.bincount(np.concatenate(docs), minlength=VOCAB)

    if impl == "rust":
        got, want = benchmark(rust), numpy()
    else:
        got, want = rust(), benchmark(numpy)
    assert want.sum() == CORPUS
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("impl", ["rust", "python"])
def test_dc_pdd_score(benchmark, corpus, impl):
    docs, text = corpus
    benchmark.group = f"DC-PDD score of a {TEXT}-token text (vocabulary {VOCAB})"
    table = count_tokens(VOCAB, ids=docs)
    counts = table.counts()
    lp = np.log(np.random.default_rng(0).uniform(1e-6, 1, len(text)))
    targets = text.tolist()
    if impl == "rust":
        got = benchmark(dc_pdd, text, lp, table, CLIP)
        want = ref_dc_pdd(targets, lp, counts, CLIP)
    else:
        got = dc_pdd(text, lp, table, CLIP)
        want = benchmark(ref_dc_pdd, targets, lp, counts, CLIP)
    assert got == pytest.approx(want, rel=1e-12)
