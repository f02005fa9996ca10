"""Bad input found by fuzzing the compiled kernels, one test per class of failure: sizes are
checked before anything is allocated, walks are iterative, ids are ints checked by value,
float dtypes are converted by value, and shared objects are safe to use from two threads.
Every case used to abort the interpreter, crash, hang, answer wrongly or raise an unrelated
exception (OverflowError, PanicException, "Already borrowed")."""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest

import tokenloom
from tokenloom import _core

HUGE = [2**31, 2**32 - 1, 2**40, 2**63, 2**64, 2**70, 10**5000]


def _id(v):
    """Test ids that survive 10**5000 (Python refuses str() past 4300 digits)."""
    return f"int{v.bit_length()}bits" if isinstance(v, int) and abs(v) > 2**80 else None


# -- sizes checked before allocating ---------------------------------------------------------
@pytest.mark.parametrize(
    "vocab, k", [(2**31, 8), (3, 2**62), (2**24 + 1, 1), (2**24, 2**10), (2**64, 8), (10**5000, 1)], ids=_id
)
def test_recycler_sizes_are_capped_before_allocating(vocab, k):
    with pytest.raises(ValueError, match="vocab_size|k"):
        _core.TokenRecycler(vocab, k)


@pytest.mark.parametrize("vocab, k", [(-1, 8), (8, -1), (0, 8), (8, 0)])
def test_recycler_sizes_below_one(vocab, k):
    with pytest.raises(ValueError, match="expected an int >= 1"):
        _core.TokenRecycler(vocab, k)


def _header(vocab: int, k: int) -> bytes:
    return b"TLRECYCL" + struct.pack("<IQII", 1, vocab, k, 0)


@pytest.mark.parametrize(
    "vocab, k, body",
    [
        (5, 2**32 - 1, b""),  # vocab * k cells would be allocated before the length check
        (2**63, 8, b""),
        (2**24, 2**16, b""),
        (1000, 8, b"\0" * 40),  # plausible sizes, wrong length
        (5, 2, b"\0" * 39),
    ],
)
def test_recycler_file_with_a_lying_header(tmp_path, vocab, k, body):
    path = tmp_path / "bad.bin"
    path.write_bytes(_header(vocab, k) + body)
    with pytest.raises(ValueError):
        _core.TokenRecycler.load(path)
    with pytest.raises(ValueError):
        tokenloom.TokenRecycler.load(path)


def test_recycler_file_reserved_word_must_be_zero(tmp_path):
    # Found by fuzz/recycler_file: a file with reserved != 0 was accepted.
    path = tmp_path / "reserved.bin"
    path.write_bytes(b"TLRECYCL" + struct.pack("<IQII", 1, 2, 1, 0x2600) + b"\0" * 8)
    with pytest.raises(ValueError, match="reserved"):
        _core.TokenRecycler.load(path, template="2.2.2-1")


def test_recycler_file_roundtrip_still_works(tmp_path):
    rec = _core.TokenRecycler(7, 2, "2.2.2-1")
    rec.update(np.array([3], np.int64), np.array([[5, 6]], np.int64))
    rec.save(tmp_path / "ok.bin")
    back = _core.TokenRecycler.load(tmp_path / "ok.bin", vocab_size=7, k=2, template="2.2.2-1")
    assert back.adjacency().tolist() == rec.adjacency().tolist()


@pytest.mark.parametrize("width", [2**40, 2**24 + 1, 2**64, 10**5000, -1, 0], ids=_id)
def test_byte_index_width_is_capped(width):
    with pytest.raises(ValueError, match="width"):
        _core.ByteIndex([b"a", b"b"], np.zeros(2, bool), width)


# -- iteration instead of recursion, GIL released, output built once -----------------------------
def test_enumerate_covers_of_a_long_string_does_not_recurse():
    ix = _core.ByteIndex([b"a", b"b"], np.zeros(2, bool), 2)
    covers = ix.enumerate_covers(b"a" * 30000, limit=10)
    assert len(covers) == 1 and covers[0] == [0] * 30000
    two = _core.ByteIndex([b"a", b"aa"], np.zeros(2, bool), 2)
    with pytest.raises(ValueError, match="more than 10 covers"):
        two.enumerate_covers(b"a" * 30000, limit=10)


def test_enumerate_covers_skips_dead_ends():
    # Fibonacci-many exact paths over "a" * 3000, none of which can take the final "b".
    ix = _core.ByteIndex([b"a", b"aa", b"c"], np.zeros(3, bool), 3)
    assert ix.enumerate_covers(b"a" * 3000 + b"b", limit=10) == []


def test_enumerate_covers_many_covers():
    ix = _core.ByteIndex([b"a", b"aa"], np.zeros(2, bool), 2)
    covers = ix.enumerate_covers(b"a" * 25, limit=10**6)
    # Exact paths to byte j (compositions of j into 1s and 2s), then "a" or "aa" after 24
    # bytes and "aa" after 23: F(25) * 2 + F(24) = F(27).
    assert len(covers) == 196418
    assert all(b"".join([b"a", b"aa"][t] for t in c).startswith(b"a" * 25) for c in covers)


# -- temperatures whose reciprocal overflows ---------------------------------------------------
@pytest.mark.parametrize("t", [5e-324, 1e-310, 2e-308])
def test_subnormal_temperature_is_the_argmax_limit(t):
    p = tokenloom.probs_from_logits(np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 2.0]]), temperature=t)
    assert np.array_equal(p, [[0.0, 0.0, 1.0], [0.5, 0.0, 0.5]])
    ids = tokenloom.Sampler(temperature=t, seed=3)(np.array([[0.0, 5.0, 1.0], [9.0, 0.0, 1.0]]))
    assert ids.tolist() == [1, 0]


# -- float dtypes handled by value ----------------------------------------------------------------
def test_byteswapped_float64_keeps_its_values():
    logits = np.array([[0.0, 1e300, -1e300]], dtype=">f8")
    for f in (tokenloom.probs_from_logits, _core.probs_from_logits):
        p = f(logits, temperature=1.0)
        assert p.dtype == np.float64 and p.tolist() == [[0.0, 1.0, 0.0]]
    assert tokenloom.Sampler(seed=1)(logits).tolist() == [1]
    # Probabilities below float32's smallest subnormal survive: a draft token with q = p = 1e-300
    # is always accepted (cast to float32 both became 0 and it was always rejected).
    tiny = np.array([[1e-300, 1.0 - 1e-300]], dtype=">f8")
    target = np.array([[1e-300, 1.0 - 1e-300], [0.5, 0.5]], dtype=">f8")
    for seed in range(20):
        r = tokenloom.verify_chain([0], tiny, target, seed=seed)
        assert r.path.tolist() == [0, 1] and r.tokens[0] == 0
        path, _ = _core.verify_chain(np.array([0], np.int64), tiny, target, seed=seed)
        assert path.tolist() == [0, 1]
    native = target.astype(np.float64)
    for seed in range(20):
        a = _core.verify_tree(np.array([-1, 0], np.int64), np.array([0, 1], np.int64), target, seed=seed)
        b = _core.verify_tree(np.array([-1, 0], np.int64), np.array([0, 1], np.int64), native, seed=seed)
        assert [x.tolist() for x in a] == [x.tolist() for x in b]


def test_other_float_dtypes_convert_by_value():
    x = np.array([[0.0, 1.0]], dtype=np.float16)
    assert _core.probs_from_logits(x).dtype == np.float32
    assert _core.probs_from_logits(np.array([[0.0, 1.0]], dtype=">f4")).dtype == np.float32
    f_order = np.asfortranarray(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=">f8"))
    assert np.allclose(_core.probs_from_logits(f_order).sum(1), 1.0)
    with pytest.raises(ValueError, match="float32 or float64"):
        _core.probs_from_logits(np.array([[0, 1]], dtype=np.int64))


# -- ids: ints only, by value ---------------------------------------------------------------
@pytest.mark.parametrize("bad", [1.5, "3", b"3", None, [1], np.float64(2.0)])
def test_float_and_string_ids_are_refused(bad):
    rec = _core.TokenRecycler(10, 8)
    with pytest.raises(TypeError):
        rec.draft(bad)
    if bad is not None:
        with pytest.raises(TypeError):
            _core.DynamicTreeBuilder(4, 3, seed=bad)
    b = _core.DynamicTreeBuilder(4, 3, seed=1)
    with pytest.raises(TypeError):
        b.reset(bad)
    ix = _core.ByteIndex([b"a", b"b"], np.zeros(2, bool), 2)
    with pytest.raises(TypeError):
        ix.next_mask(bad, False)
    with pytest.raises(TypeError):
        ix.sequence_ok([0, bad], False)


def test_numpy_integer_scalars_are_ints():
    rec = _core.TokenRecycler(10, 8)
    assert rec.draft(np.int64(3)).tokens[0] == 3
    assert rec.draft(np.uint8(4)).tokens[0] == 4
    b = _core.DynamicTreeBuilder(4, 3, seed=np.uint64(2**64 - 1))
    assert b.seed == 2**64 - 1


def test_start_of_text_is_not_an_id():
    merges = np.array([[0, 1, 2]], np.int64)
    ix = _core.ByteIndex([b"a", b"b", b"ab"], np.zeros(3, bool), 3, base=[[0], [1], [0, 1]], merges=merges)
    start = ix.next_mask(-1, True)
    for bad in (2**32 - 1, 2**32, 3, -2):
        with pytest.raises(IndexError):
            ix.next_mask(bad, True)
        with pytest.raises(IndexError):
            ix.next_mask_after(-1, bad, True)
    assert ix.next_mask(-1, True).tolist() == start.tolist()
    with pytest.raises(IndexError):
        ix.valid_pair(0, 5)
    with pytest.raises(IndexError):
        ix.valid_pair_before(5, 0, b"a")
    with pytest.raises(IndexError):
        ix.first_ok(3)
    assert ix.valid_pair(0, 1) is False  # "a" "b" merges into "ab"


# -- huge ints: ValueError for sizes and seeds, IndexError for ids, never OverflowError ------------
@pytest.mark.parametrize("big", HUGE, ids=_id)
def test_huge_ints_never_overflow(big):
    rec = _core.TokenRecycler(10, 8)
    ix = _core.ByteIndex([b"a", b"b"], np.zeros(2, bool), 2)
    tree = _core.CoverTree(ix, canonical=False)
    builder = _core.DynamicTreeBuilder(4, 3, seed=0, vocab_size=20)
    p = np.array([[0.5, 0.5]])
    value_errors = [
        lambda: _core.TokenRecycler(big),
        lambda: _core.TokenRecycler(10, big),
        lambda: _core.TokenRecycler.load("/nonexistent", vocab_size=big),
        lambda: _core.DynamicTreeBuilder(big, 3),
        lambda: _core.DynamicTreeBuilder(3, big),
        lambda: _core.DynamicTreeBuilder(3, 3, vocab_size=big),
        lambda: _core.ByteIndex([b"a"], np.zeros(1, bool), big),
        lambda: _core.probs_from_logits(p, top_k=-big),
        lambda: _core.sample_logits(p, seed=-big),
        lambda: _core.uniforms(-big, np.zeros(1, np.uint64), np.zeros(1, np.uint64)),
        lambda: _core.verify_tree(np.array([-1]), np.array([0]), np.array([[1.0]]), seed=-big),
        lambda: _core.verify_chain(np.zeros(0, np.int64), np.zeros((0, 2)), p, seed=-big),
        lambda: _core.template_paths([[-big]]),
        lambda: tree.push(big),
        lambda: ix.enumerate_covers(b"a", limit=-big),
    ]
    if big >= 2**64:
        value_errors += [
            lambda: _core.DynamicTreeBuilder(4, 3, seed=big),
            lambda: _core.sample_logits(p, counter=big),
            lambda: _core.verify_tree(np.array([-1]), np.array([0]), np.array([[1.0]]), seed=big),
        ]
    index_errors = [
        lambda: rec.draft(big),
        lambda: rec.draft(-big),
        lambda: builder.node(big),
        lambda: ix.next_mask(big, False),
        lambda: ix.context_mask(big, 0),
        lambda: ix.sequence_ok([0, big], False),
        lambda: tree.expand(big),
        lambda: tree.info(big),
        lambda: tree.path(big),
        lambda: tree.byte_masses([big], [np.zeros(2, np.float32)], [1.0]),
    ]
    for f in value_errors:
        with pytest.raises(ValueError):
            f()
    for f in index_errors:
        with pytest.raises(IndexError):
            f()
    builder.reset(1)
    with pytest.raises(IndexError):
        builder.reset(big)


def test_huge_float_parameters():
    p = np.array([[0.5, 0.5]])
    with pytest.raises(ValueError, match="temperature"):
        _core.probs_from_logits(p, temperature=10**400)
    with pytest.raises(ValueError, match="top_p"):
        _core.probs_from_logits(p, top_p=10**400)
    with pytest.raises(TypeError):
        _core.probs_from_logits(p, temperature="1")
    with pytest.raises(TypeError):
        _core.probs_from_logits(p, top_k=2.0)


# -- the draft tree's arrays are built once ------------------------------------------------------
def test_draft_tree_arrays_are_built_once():
    t = _core.TokenRecycler(10, 8).draft(3)
    assert t.tokens is t.tokens and t.parents is t.parents and t.depths is t.depths
    assert len(t) == t.tokens.shape[0] == 81 and "DraftTree(nodes=81" in repr(t)


# -- threads -------------------------------------------------------------------------------------
def _hammer(n_threads, target):
    errors = []

    def run(i):
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_two_threads_share_one_recycler():
    """Thread i owns tokens [25 i, 25 i + 25) and at step c sets every row it owns to
    (c + rank) % 25 + 25 i, in one update; the other thread drafts meanwhile. Each draft must
    see one whole update (one c per owner), and the final matrix is the last update of each
    thread, whatever the interleaving: what a sequential run gives."""
    rec = _core.TokenRecycler(50, 4, [[0], [1], [2], [3], [0, 0], [1, 2], [0, 0, 3]])
    steps = 400
    ranks = [0, 0, 1, 2, 3, 0, 2, 3]  # rank of each node (template order), root first
    for i in range(2):  # generation 0 everywhere before the threads start
        rec.update(np.arange(25 * i, 25 * i + 25), np.tile(np.arange(4) + 25 * i, (25, 1)))

    def work(i):
        own = np.arange(25 * i, 25 * i + 25, dtype=np.int64)
        for c in range(steps):
            rows = (c + np.arange(4)) % 25 + 25 * i
            rec.update(own, np.tile(rows, (25, 1)))
            t = rec.draft(int(own[c % 25]))
            toks = t.tokens.tolist()
            gens = {(tok - 25 * i - r) % 25 for tok, r in zip(toks[1:], ranks[1:])}
            assert len(gens) == 1 and all(25 * i <= tok < 25 * i + 25 for tok in toks), toks
            other = 25 * (1 - i)
            u = rec.draft(other + c % 25).tokens.tolist()
            assert len({(tok - other - r) % 25 for tok, r in zip(u[1:], ranks[1:])}) == 1, u

    _hammer(2, work)
    want = np.concatenate([np.tile((steps - 1 + np.arange(4)) % 25 + 25 * i, (25, 1)) for i in range(2)])
    assert rec.adjacency().tolist() == want.tolist()


def test_threads_share_a_builder_and_a_cover_tree():
    b = _core.DynamicTreeBuilder(6, 3, k=2, seed=1, vocab_size=20)

    def build(i):
        for _ in range(200):
            try:
                b.reset(i)
                ids, toks, _, _ = b.frontier()
                b.expand(ids, np.tile([[1, 2]], (len(ids), 1)), np.tile([[0.5, 0.25]], (len(ids), 1)))
            except ValueError as e:  # the other thread reset or expanded first: a clean refusal
                assert "frontier" in str(e) or "expanded" in str(e), e
            t = b.tree()
            parents = t[1].tolist()
            assert parents[0] == -1 and all(0 <= p < j for j, p in enumerate(parents) if j)

    _hammer(2, build)
    ix = _core.ByteIndex([b"a", b"b", b"ab"], np.zeros(3, bool), 3)
    tree = _core.CoverTree(ix, canonical=False)
    tree.expand(0)
    _hammer(2, lambda i: [tree.push(97 + i) for _ in range(300)])
    assert len(tree.prefix) == 600


# -- Python wrappers: ids and seeds are ints, never truncated ------------------------------------
@pytest.mark.parametrize("bad", [1.5, "3", True, np.float64(3.0)])
def test_wrappers_refuse_float_and_string_ids(bad):
    rec = tokenloom.TokenRecycler(10, k=8)
    with pytest.raises(TypeError):
        rec.draft(bad)
    with pytest.raises(TypeError):
        tokenloom.TokenRecycler(bad)
    with pytest.raises(TypeError):
        tokenloom.DynamicTreeBuilder(4, 3, seed=bad)
    b = tokenloom.DynamicTreeBuilder(4, 3, seed=1)
    with pytest.raises(TypeError):
        b.reset(bad)
    b.reset(2)
    with pytest.raises(TypeError):
        b.node(bad)


def test_wrappers_refuse_float_tree_arrays():
    from types import SimpleNamespace

    from tokenloom.runtime.kvcache import compact_cache
    from tokenloom.runtime.treeattn import ancestor_matrix, tree_attention_mask, tree_position_ids

    with pytest.raises(ValueError, match="integer ids"):
        ancestor_matrix([-1, 0.9])
    assert ancestor_matrix(np.array([-1, 0], np.int32)).tolist() == [[True, False], [True, True]]
    with pytest.raises(ValueError, match="keep: expected integer ids"):
        compact_cache(SimpleNamespace(layers=[]), 0, [0.5, 2.5])
    with pytest.raises(TypeError, match="past_len"):
        tree_position_ids([0, 1], 2.5)
    with pytest.raises(TypeError, match="past_len"):
        tree_attention_mask([-1, 0], "3")
    with pytest.raises(ValueError, match="integer"):
        tree_position_ids([0, 1.5], 2)
    assert tree_position_ids(np.array([0, 1]), np.int64(3)).tolist() == [[3, 4]]
