"""tokenloom.scores: per-token statistics against a NumPy reference from full logits, the
sliding window against one forward per window, Min-K% / Min-K%++ / DC-PDD against short NumPy
references of the papers' formulas, the Rust token-frequency table against numpy counting."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import _core
from tokenloom.scores import (
    TokenFrequency,
    count_tokens,
    dc_pdd,
    detection_scores,
    min_k_plus_plus,
    min_k_prob,
    row_stats,
    token_stats,
    zscores,
)
from tokenloom.scores.tokens import check_window, windows

from tests.reference.scores import ref_dc_pdd, ref_min_k, ref_min_k_pp, ref_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- kernels without a model -----------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 9), st.integers(0, 2**31 - 1))
def test_row_stats_match_numpy(n, v, seed):
    import torch

    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, (n, v)).astype(np.float32)
    logits[rng.random((n, v)) < 0.2] = -np.inf
    tgt = np.array([rng.choice(np.flatnonzero(np.isfinite(r))) if np.isfinite(r).any() else 0 for r in logits])
    logits[np.arange(n), tgt] = np.where(np.isfinite(logits[np.arange(n), tgt]), logits[np.arange(n), tgt], 0.5)
    got = [x.numpy() for x in row_stats(torch.from_numpy(logits), torch.from_numpy(tgt))]
    want = ref_rows(logits, tgt)
    for g, w in zip(got[:3], want[:3]):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got[3], want[3])


@given(st.integers(2, 60), st.integers(2, 12), st.data())
def test_windows_cover_every_target_once_with_context(n, w, data):
    s = data.draw(st.integers(1, w - 1))
    seen = []
    for b, e, f in windows(n, w, s):
        assert e - b <= w and b < f <= e
        seen.extend(range(f, e))
        if b > 0:
            assert f - b >= w - s  # every scored target has >= window - stride context
    assert seen == list(range(1, n))


def test_window_arguments_are_checked():
    assert check_window(8, None) == (8, 4)
    with pytest.raises(ValueError, match="stride"):
        check_window(8, 8)
    with pytest.raises(ValueError, match="window"):
        check_window(1, None)
    with pytest.raises(ValueError, match="stride"):
        check_window(8, 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 0), min_size=1, max_size=40), st.sampled_from([0.05, 0.2, 0.5, 1.0]))
def test_min_k_matches_reference(lp, k):
    assert min_k_prob(lp, k) == pytest.approx(ref_min_k(np.array(lp), k), abs=1e-12)


def test_min_k_plus_plus_matches_reference():
    rng = np.random.default_rng(3)
    rows = rng.normal(0, 2, (17, 11))
    tgt = rng.integers(0, 11, 17)
    lp, h, sd, _ = ref_rows(rows, tgt)
    for k in (0.1, 0.2, 0.6, 1.0):
        assert min_k_plus_plus(lp, h, sd, k) == pytest.approx(ref_min_k_pp(lp, rows, k), rel=1e-9)
    assert zscores([-1.0], [1.0], [0.0])[0] == 0.0  # floored sigma, target = the mean


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 7), min_size=1, max_size=30), st.integers(0, 2**31 - 1), st.sampled_from([0.01, 0.2, 5.0]))
def test_dc_pdd_rust_matches_reference(targets, seed, a):
    rng = np.random.default_rng(seed)
    lp = np.log(rng.uniform(1e-6, 1, len(targets)))
    counts = rng.integers(0, 50, 8)
    table = count_tokens(8, ids=[np.repeat(np.arange(8), counts)])
    np.testing.assert_array_equal(table.counts(), counts)
    assert dc_pdd(targets, lp, table, a) == pytest.approx(ref_dc_pdd(targets, lp, counts, a), rel=1e-12)
    firsts = _core.first_occurrences(np.array(targets, dtype=np.int64))
    assert list(firsts) == [i for i, t in enumerate(targets) if t not in targets[:i]]


def test_detection_scores_bad_input():
    with pytest.raises(ValueError, match="k"):
        min_k_prob([-1.0], 0)
    with pytest.raises(ValueError, match="at least one"):
        min_k_prob([], 0.2)
    with pytest.raises(ValueError, match="finite"):
        min_k_prob([-np.inf], 0.2)
    with pytest.raises(ValueError, match="shape"):
        zscores([-1.0, -2.0], [1.0], [1.0])
    with pytest.raises(IndexError):
        dc_pdd([9], [-1.0], TokenFrequency(4))
    with pytest.raises(ValueError, match="clip"):
        dc_pdd([1], [-1.0], TokenFrequency(4), a=0)
    with pytest.raises(ValueError):
        dc_pdd([1, 2], [-1.0], TokenFrequency(4))


# ---- the frequency table ---------------------------------------------------------------------
def test_frequency_table_counts_saves_and_validates(tmp_path, tokenizer):
    docs = ["the cat sat on the mat", "a dog", "the end of the text"]
    t = count_tokens(len(tokenizer), texts=docs, tokenizer=tokenizer, max_per_doc=4)
    ids = [np.asarray(tokenizer(d)["input_ids"])[:4] for d in docs]
    want = np.bincount(np.concatenate(ids), minlength=len(tokenizer))
    np.testing.assert_array_equal(t.counts(), want)
    assert (t.total, t.docs) == (int(want.sum()), 3)
    f = t.smoothed()
    assert f.sum() == pytest.approx(1.0) and f.min() > 0
    path = tmp_path / "ref.tlfreq"
    t.save(path)
    u = TokenFrequency.load(path, vocab_size=len(tokenizer))
    np.testing.assert_array_equal(u.counts(), t.counts())
    with pytest.raises(ValueError, match="vocab mismatch"):
        TokenFrequency.load(path, vocab_size=7)
    raw = bytearray(path.read_bytes())
    raw[48] ^= 1  # a count no longer matching the stored total
    (tmp_path / "bad.tlfreq").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt"):
        TokenFrequency.load(tmp_path / "bad.tlfreq")
    (tmp_path / "short.tlfreq").write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match="truncated"):
        TokenFrequency.load(tmp_path / "short.tlfreq")
    (tmp_path / "other").write_bytes(b"hello world, not a table at all, really not at all")
    with pytest.raises(ValueError, match="magic"):
        TokenFrequency.load(tmp_path / "other")
    with pytest.raises(IndexError):
        t.add(np.array([len(tokenizer)]))
    with pytest.raises(ValueError, match="tokenizer"):
        count_tokens(10, texts=["x"])
    lines = tmp_path / "corpus.txt"
    lines.write_text("the cat\n\nsat on\n")
    by_line = count_tokens(len(tokenizer), files=[lines], tokenizer=tokenizer, per_line=True)
    assert by_line.docs == 2


# ---- on models -------------------------------------------------------------------------------
def _full_reference(model, ids):
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return ref_rows(logits[:-1], np.asarray(ids[1:])), logits


def test_token_stats_batched_equal_one_forward_per_text(tiny_llama):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 49152, n).tolist() for n in (2, 9, 23, 5)]
    got = token_stats(tiny_llama, seqs, window=64, batch_size=3)
    for s, ids in zip(got, seqs):
        (lp, h, sd, rk), _ = _full_reference(tiny_llama, ids)
        np.testing.assert_allclose(s.logprobs, lp, atol=2e-4)
        np.testing.assert_allclose(s.entropy, h, atol=2e-4)
        np.testing.assert_allclose(s.logp_std, sd, atol=2e-4)
        assert (s.ranks == rk).mean() > 0.95  # float ties from padding-free vs padded sums
        assert s.ids.tolist() == ids and len(s) == len(ids) - 1


def test_token_stats_of_a_bfloat16_model(tiny_llama):
    """A bfloat16 model's statistics come from its logits upcast to float32: one unpadded
    sequence equals the NumPy reference on those logits (float32 rounding apart)."""
    import copy

    import torch

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    ids = np.random.default_rng(2).integers(0, 49152, 12).tolist()
    got = token_stats(model, [ids], window=64)[0]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float().numpy()
    lp, h, sd, rk = ref_rows(logits[:-1], np.asarray(ids[1:]))
    np.testing.assert_allclose(got.logprobs, lp, atol=2e-3)
    np.testing.assert_allclose(got.entropy, h, atol=2e-3)
    assert np.isfinite(got.logprobs).all() and (got.ranks == rk).mean() > 0.9


def test_sliding_window_equals_one_forward_per_window(tiny_llama):
    import torch

    rng = np.random.default_rng(1)
    ids = rng.integers(0, 49152, 30)
    got = token_stats(tiny_llama, [ids, ids[:7]], window=8, stride=3, batch_size=2)[0]
    want = np.empty(29)
    for b, e, f in windows(30, 8, 3):
        with torch.no_grad():
            lg = tiny_llama(torch.from_numpy(ids[b:e]).view(1, -1)).logits[0].numpy()
        lp, _, _, _ = ref_rows(lg[f - 1 - b : e - 1 - b], ids[f:e])
        want[f - 1 : e - 1] = lp
    np.testing.assert_allclose(got.logprobs, want, atol=2e-4)


def test_token_stats_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="at least 2"):
        token_stats(tiny_llama, [[5]])
    with pytest.raises(IndexError, match="vocabulary"):
        token_stats(tiny_llama, [[5, 49152]])
    with pytest.raises(TypeError, match="tokenize"):
        token_stats(tiny_llama, ["some text"])
    with pytest.raises(ValueError, match="batch_size"):
        token_stats(tiny_llama, [[5, 6]], batch_size=0)
    with pytest.raises(ValueError, match="none"):
        token_stats(tiny_llama, [])


@pytest.mark.model
def test_scores_on_the_embedded_model(smollm):
    model, tok = smollm
    texts = ["The quick brown fox jumps over the lazy dog.", "Zorblat quindle fex marrow twelve."]
    ids = [np.asarray(tok(t)["input_ids"]) for t in texts]
    stats = token_stats(model, ids, window=16, stride=8)
    for s, x in zip(stats, ids):
        (lp, _, _, _), logits = _full_reference(model, x.tolist())
        np.testing.assert_allclose(s.logprobs, lp, atol=1e-3)
    freq = count_tokens(len(tok), texts=["the a of and to in is"], tokenizer=tok)
    rows = detection_scores(stats, freq)
    # a familiar sentence scores higher than gibberish on every score
    for name in ("mean_logprob", "min_k", "min_k_pp"):
        assert rows[0][name] > rows[1][name]
    assert set(rows[0]) == {"mean_logprob", "min_k", "min_k_pp", "dc_pdd"}


# ---- the CLI ---------------------------------------------------------------------------------
def test_score_cli_checks_flags_before_the_model(tmp_path, capsys):
    from tokenloom.cli.main import main

    texts = tmp_path / "t.jsonl"
    texts.write_text('{"text": "a b c", "label": 1}\n{"text": "d e f"}\n')
    assert main(["score", "texts", str(texts)]) == 2
    assert "label" in capsys.readouterr().err
    good = tmp_path / "g.txt"
    good.write_text("one text\nanother text\n")
    for argv, msg in [
        (["score", "texts", str(good), "--k", "0"], "--k"),
        (["score", "texts", str(good), "--window", "8", "--stride", "8"], "stride"),
        (["score", "texts", str(good), "--a", "-1"], "--a"),
        (["score", "texts", str(good), "--freq", str(good)], "magic"),
        (["score", "texts", str(tmp_path / "missing.txt")], "no such file"),
        (["score", "count", str(good)], "--out"),
    ]:
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err


@pytest.mark.model
def test_score_cli_end_to_end(tmp_path, capsys):
    import json

    from tokenloom.cli.main import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe dog ran\n")
    freq = tmp_path / "ref.tlfreq"
    assert main(["score", "count", str(corpus), "--out", str(freq), "--per-line"]) == 0
    texts = tmp_path / "t.jsonl"
    texts.write_text(
        "\n".join(json.dumps({"text": t, "label": lab}) for t, lab in [("The cat sat on the mat.", 1), ("Qx vlorp zib.", 0)])
    )
    out = tmp_path / "out.json"
    assert main(["score", "texts", str(texts), "--freq", str(freq), "--json", str(out), "--window", "8"]) == 0
    res = json.loads(out.read_text())
    assert set(res["auroc"]) == {"mean_logprob", "min_k", "min_k_pp", "dc_pdd"} and len(res["scores"]) == 2
    assert "AUROC" in capsys.readouterr().out


def test_auroc_matches_pairwise_count():
    from tokenloom.scores import auroc

    assert auroc([3, 2, 1, 0], [1, 1, 0, 0]) == 1.0
    assert auroc([0, 1], [1, 0]) == 0.0
    assert auroc([1, 1, 1], [1, 0, 0]) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auroc([1, 2], [1, 1])
