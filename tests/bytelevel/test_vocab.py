"""ByteVocab + Rust byte index: token bytes (byte-level BPE, SentencePiece), specials, padding,
BOS, pairwise canonicality vs the real tokenizer, cover enumeration parity with Python."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import ByteVocab
from tokenloom.bytelevel.vocab import bytes_to_unicode

from tests.reference.bytes import allowed_canonical, ref_covers
from tests.reference.bytes import make_sp_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return ByteVocab.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def sp_tok():
    return make_sp_tokenizer()


# --- pitfall 5: the GPT-2 byte map ------------------------------------------------------------
def test_gpt2_byte_map_round_trips_all_256():
    m = bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    inv = {c: b for b, c in m.items()}
    assert bytes(inv[m[b]] for b in range(256)) == bytes(range(256))


def test_smollm_token_bytes(vocab, tokenizer):
    assert len(vocab) == 49152 and vocab.width == 49152 and vocab.kind == "byte_level"
    assert vocab.special.sum() == 17 and vocab.special_ids == list(range(17))
    assert all(vocab.token_bytes[i] == b"" for i in range(17))
    assert vocab.index.max_token_len == 81
    assert sum(len(b) == 1 for b in vocab.token_bytes) == 235
    # 100,298 nodes for the byte tokens (the 17 special strings would add ~140 more).
    assert vocab.index.n_nodes == 100298
    rng = random.Random(0)
    x = tokenizer("x", add_special_tokens=False).input_ids
    for i in rng.sample(range(17, 49152), 2000):
        b = vocab.token_bytes[i]
        try:
            text = b.decode("utf-8")
        except UnicodeDecodeError:
            continue
        # (a leading "x" keeps the decoder from stripping a leading space)
        assert tokenizer.decode(x + [i], clean_up_tokenization_spaces=False) == "x" + text
    text = "héllo 日本 🎉 \t\n  x"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert vocab.decode(ids) == text.encode()


# --- pitfall 1: specials; pitfall 2: BOS ------------------------------------------------------
def test_specials_are_not_byte_content(vocab):
    covers = vocab.index.enumerate_covers(b"<|im_end|>", canonical=False, limit=10**6)
    assert covers and all(t >= 17 for c in covers for t in c)
    assert all(t >= 17 for t in vocab.index.tokens_with_prefix(b"<").tolist())
    m = vocab.index.next_mask(-1, True)
    assert m[:17].all()  # every special is an end-of-text candidate


def test_bos(vocab, sp_tok):
    assert vocab.prefix_ids == []  # the embedded GGUF says add_bos_token = False, on every transformers line
    sp = ByteVocab.from_tokenizer(sp_tok)
    assert sp.prefix_ids == [1]
    sp_tok.backend_tokenizer.post_processor = None
    try:
        assert ByteVocab.from_tokenizer(sp_tok).prefix_ids == []
    finally:
        from tokenizers import processors

        sp_tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])


# --- pitfalls 3, 4: SentencePiece -------------------------------------------------------------
def test_sentencepiece_bytes(sp_tok):
    v = ByteVocab.from_tokenizer(sp_tok)
    assert v.kind == "sentencepiece" and v.canonical_ok
    assert v.special[:3].all() and not v.special[3:].any()
    assert [v.token_bytes[3 + i] for i in range(256)] == [bytes([i]) for i in range(256)]
    pieces = sp_tok.convert_ids_to_tokens(list(range(len(sp_tok))))
    meta = [i for i, p in enumerate(pieces) if p.startswith("\u2581") and len(p) > 1]
    assert meta and all(v.token_bytes[i].startswith(b" ") for i in meta)
    # one byte string, several ids: "<0x20>" and "▁"
    same = [i for i, b in enumerate(v.token_bytes) if b == b" "]
    assert len(same) >= 2
    # Every byte has a token (byte fallback), so any byte string has a cover.
    assert v.index.enumerate_covers(bytes([0xE6, 0x97]), canonical=False, limit=100)
    # canonical encodings are pairwise valid
    for text in ["the cat sat", "héllo wörld", "théme 日本", "a  b"]:
        ids = sp_tok(text, add_special_tokens=False).input_ids
        assert v.decode(ids) == (" " + text).encode()
        assert v.index.sequence_ok(ids, True), text


# --- pitfall 8: logits width ------------------------------------------------------------------
def test_padding_rows(tokenizer):
    v = ByteVocab.from_tokenizer(tokenizer, vocab_size=49152 + 64)
    assert v.width == 49216
    for canonical in (False, True):
        m = v.index.next_mask(-1, canonical)
        assert m.shape == (49216,) and not m[49152:].any()
    with pytest.raises(ValueError, match="do not match"):
        ByteVocab.from_tokenizer(tokenizer, vocab_size=1000)


def test_bad_input():
    with pytest.raises(ValueError, match="empty vocabulary"):
        ByteVocab([], [])
    with pytest.raises(ValueError, match="empty vocabulary"):
        ByteVocab([b"", b""], [True, False])
    with pytest.raises(TypeError):
        ByteVocab(["a", "b"], [False, False])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="special"):
        ByteVocab([b"a", b"b"], [False])
    with pytest.raises(TypeError, match="fast tokenizer"):
        ByteVocab.from_tokenizer(object())
    v = ByteVocab([b"a", b"b"], [False, False])
    with pytest.raises(ValueError, match="canonical"):
        v.index.next_mask(-1, True)
    with pytest.raises(IndexError):
        v.index.next_mask(5, False)


# --- pitfall 6: pre-tokenizer context; pairwise canonicality ---------------------------------
POOL = list("abcdefghijklmnopqrstuvwxyzABZ0123456789") + [" "] * 8 + ["\n"] * 4 + [
    "\t", "'", "'s", "'ll", ".", ",", "(", ")", "!", "é", "日", "🎉", "—", "_", "-", "=", "  ", "    ", "\r\n", "’",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(POOL), min_size=1, max_size=16))
def test_canonical_encoding_is_pairwise_valid(tokenizer, vocab, parts):
    text = "".join(parts)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert vocab.index.sequence_ok(ids, True), [tokenizer.convert_ids_to_tokens(i) for i in ids]


@pytest.mark.parametrize("text", ["\n\n\nnewline", "x’'ll", "a  b", "    return x", "it's 123", "ééé"])
def test_pretokenizer_context_cases(tokenizer, vocab, text):
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert vocab.index.sequence_ok(ids, True)
    # and the canonical encoding is among the canonical covers
    covers = vocab.index.enumerate_covers(text.encode(), canonical=True, limit=10**6)
    assert tuple(ids) in {tuple(c) for c in covers}


def test_pair_validity_matches_tokenizer(tokenizer, vocab):
    rng = random.Random(1)
    checked = 0
    for _ in range(1500):
        a, b = rng.randrange(17, 49152), rng.randrange(17, 49152)
        try:
            text = (vocab.token_bytes[a] + vocab.token_bytes[b]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        end = tokenizer(text, add_special_tokens=False).input_ids == [a, b]
        more = tokenizer(text + "a", add_special_tokens=False).input_ids[:2] == [a, b]
        assert vocab.index.valid_pair(a, b) == (end or more), (tokenizer.convert_ids_to_tokens([a, b]))
        checked += 1
    assert checked > 1000


def test_gpt2_pretokenizer_matches_hf(tokenizer):
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    rng = random.Random(2)
    for _ in range(300):
        text = "".join(rng.choice(POOL) for _ in range(rng.randint(1, 12)))
        want = []
        for _piece, (s, _e) in pre.pre_tokenize_str(text):
            want.append(len(text[:s].encode()))
        from tokenloom._core import ByteIndex

        assert ByteIndex.gpt2_piece_starts(text.encode()) == want, text


# --- cover enumeration: Rust vs Python --------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list("defib onacs:/ht\n") + ["é"]), min_size=1, max_size=4), st.booleans())
def test_enumerate_covers_parity(vocab, parts, canonical):
    data = "".join(parts).encode()
    ix = vocab.index
    got = sorted(tuple(c) for c in ix.enumerate_covers(data, canonical=canonical, limit=10**7))
    allowed = (lambda path, t: allowed_canonical(vocab, path, t)) if canonical else None
    want = sorted(ref_covers(vocab.token_bytes, data, allowed))
    assert got == want
    for c in got:  # a cover reproduces its bytes
        d = vocab.decode(c)
        assert d.startswith(data) and len(vocab.decode(c[:-1])) < len(data)


def test_enumerate_covers_limit(vocab):
    with pytest.raises(ValueError, match="more than 10 covers"):
        vocab.index.enumerate_covers(b"a", canonical=False, limit=10)


# --- canonicality with the pre-tokenizer's look-ahead ------------------------------------------
def test_canonical_encodings_always_allowed(vocab, tokenizer):
    """Soundness: the tokenizer's own encoding of real text (HumanEval code with its
    indentation, Spec-Bench questions, contractions, Unicode spaces) and of 1,500 random short
    strings of whitespace, apostrophes, contraction letters, punctuation and multi-byte
    characters is never rejected by the context-aware check (sequence_ok applies it to every
    adjacent pair with its next token)."""
    from tokenloom.eval.fim import load_humaneval

    data = Path(__file__).resolve().parents[2] / "python" / "tokenloom" / "data" / "spec_bench" / "question.jsonl"
    texts = [p["prompt"] + p["canonical_solution"] for p in load_humaneval()[:60]]
    texts += [json.loads(line)["turns"][0] for line in data.read_text().splitlines()[:120]]
    texts += ["we'll they've I'm  'll  x\u3000y \u00a0z", "a  \n\n  b\t\tc", "x's y'S", "  \n", "\u00e9t\u00e9 \u4e2d\u6587  ok"]
    # (U+3000 is left out of the random strings: a token edge can cut it, and a cut character
    # counts as a letter -- the documented approximation of the pairwise check, e.g.
    # "d(\n \u3000a" is rejected.)
    rng = random.Random(0)
    alphabet = list(" \t\n\r'\"sltdmrev!?.,;:-_()[]{}0123456789aZ\u00a0\u00e9\u4e2d\U0001F600")
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12))) for _ in range(1500)]
    checked = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if vocab.decode(ids) != text.encode():  # normalised away: not this test's business
            continue
        checked += 1
        assert vocab.index.sequence_ok(ids, True), text[:80]
    assert checked >= 1500


def test_context_check_kills_whitespace_chains(vocab, tokenizer):
    """' ', ' ' is a valid pair (before a letter), but not before another space: pairwise
    canonicality alone lets indentation split into many paths, the look-ahead check does not."""
    from tokenloom._core import CoverTree

    ix = vocab.index
    sp = tokenizer.convert_tokens_to_ids("\u0120")
    assert ix.valid_pair(sp, sp)
    assert ix.valid_pair_before(sp, sp, b"x") and not ix.valid_pair_before(sp, sp, b" ")
    assert not ix.sequence_ok([sp, sp, sp], True)
    mask = ix.context_mask(sp, sp)
    assert mask is not None and not mask[sp] and mask[tokenizer.convert_tokens_to_ids("x")]
    assert ix.context_mask(sp, tokenizer.convert_tokens_to_ids("x")) is None  # letters: insensitive
    # Exact paths after a newline and 12 spaces: few with the check (the brute-force oracle
    # enumerates the same set, see test_enumerate_covers_parity).
    tree = CoverTree(ix, True)
    tree.expand(0)
    for b in b"x = 1\n            ":
        for n in tree.push(b):
            tree.expand(n)
    n_exact = sum(1 for n in tree.active() if tree.info(n)[3] == len(tree.prefix))
    assert 1 <= n_exact <= 8, n_exact
