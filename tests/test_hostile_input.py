"""Bad input found by fuzzing the compiled kernels, one test per class of failure: sizes are
checked before anything is allocated, walks are iterative, ids are ints checked by value,
float dtypes are converted by value, and shared objects are safe to use from two threads.
Every case used to abort the interpreter, crash, hang, answer wrongly or raise an unrelated
exception (OverflowError, PanicException, "Already borrowed")."""

from __future__ import annotations

import json
import os
import struct
import threading
import warnings

import numpy as np
import pytest
import torch

import tokenloom
from tokenloom import _core
from tokenloom.spec import persist
from tokenloom.spec.persist import PersistWarning

from tokenloom.integrations.hf.models import make_tiny_llama

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


# == issue 26: hostile input at the package's edges ===========================================
# Ids are ints in [0, vocab) everywhere (one check: tokenloom._arrays.as_ids), a whole input is
# checked before any state changes, persisted state is checked against the model it is bound
# to, and a state path is read only when it is a regular file of bounded size.


def _gen(model, **kw):
    ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3]])
    kw.setdefault("max_new_tokens", 6)
    return tokenloom.generate(model, ids, **kw)


@pytest.fixture(scope="module")
def small_llama():
    return make_tiny_llama(vocab_size=64, layers=1)


# -- 1. persisted state bound to a model ------------------------------------------------------
@pytest.mark.parametrize("method", ["suffix", "merged"])
def test_a_persisted_cache_holding_an_id_past_the_vocabulary_starts_cold(small_llama, method):
    from tokenloom.spec.suffix import store

    store.reset_default_suffix_caches()
    key = persist.model_key(small_llama)
    bad = store.SuffixCache()
    bad.insert(np.array([1, 2, 3, 4, 100]))  # 100 >= the model's 64 ids; the file's checksum is valid
    persist.save_state(key, store.STATE_NAME, store.STATE_VERSION, bad.to_bytes())
    with pytest.warns(PersistWarning, match="outside the vocabulary") as got:
        first = _gen(small_llama, method=method, budget=4, persist=True)
    assert len([w for w in got if issubclass(w.category, PersistWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", PersistWarning)  # one warning per file and process
        again = _gen(small_llama, method=method, budget=4, persist=True)
    assert first.sequences.tolist() == again.sequences.tolist()
    assert store.default_suffix_cache(64, model=small_llama).max_token < 64
    store.reset_default_suffix_caches()


def test_the_default_cache_holds_only_the_vocabulary(small_llama):
    from tokenloom.spec.suffix import store

    cache = store.default_suffix_cache(64, model=small_llama, persist=False)
    with pytest.raises(IndexError, match=r"\[0, 64\)"):
        cache.insert(np.array([1, 64]))
    assert cache.max_token is None or cache.max_token < 64
    store.reset_default_suffix_caches()


def test_a_given_cache_or_recycler_is_checked_when_bound_to_the_model(small_llama):
    from tokenloom.spec.suffix.store import SuffixCache

    cache = SuffixCache()
    cache.insert(np.array([1, 2, 3, 4, 99]))
    for method in ("suffix", "merged"):
        with pytest.raises(ValueError, match=r"cache: holds token id 99, outside the model's vocabulary \[0, 64\)"):
            _gen(small_llama, method=method, cache=cache, budget=4, persist=False)
    cache.clear()
    _gen(small_llama, method="suffix", cache=cache, budget=4, persist=False)  # cleared: usable again
    rec = tokenloom.TokenRecycler(128)  # more rows than the model's ids: allowed, if no candidate is past them
    rec.update(np.array([1]), np.array([[100, 3, 4, 5, 6, 7, 8, 9]]))
    for method in ("recycling", "merged"):
        with pytest.raises(ValueError, match="recycler: holds candidate id 100"):
            _gen(small_llama, method=method, recycler=rec, persist=False, **({"tree": "2.2.2"} if method == "recycling" else {"budget": 4}))
    with pytest.raises(ValueError, match="smaller than the model's 64"):
        _gen(small_llama, method="recycling", recycler=tokenloom.TokenRecycler(32), tree="2.2.2", persist=False)
    rec.update(np.array([1]), np.array([[10, 3, 4, 5, 6, 7, 8, 9]]))
    _gen(small_llama, method="recycling", recycler=rec, tree="2.2.2", persist=False)


def test_suffix_cache_bytes_are_checked_against_the_loaders_vocabulary():
    from tokenloom.spec.suffix.store import SuffixCache

    c = SuffixCache()
    c.insert(np.array([5, 70, 6]))
    with pytest.raises(ValueError, match=r"token 70 is outside the vocabulary \[0, 64\)"):
        SuffixCache.from_bytes(c.to_bytes(), vocab_size=64)
    assert SuffixCache.from_bytes(c.to_bytes(), vocab_size=71).max_token == 70
    for bad in (0, 2**24 + 1, 1.5):
        with pytest.raises((ValueError, TypeError), match="vocab_size"):
            SuffixCache(vocab_size=bad)


# -- 2. state paths are regular files, read with a size bound ---------------------------------
def _no_hang(fn, seconds=20.0):
    """``fn()``'s result, failing (instead of hanging the suite) when it blocks."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "blocked on a named pipe"
    if "error" in out:
        raise out["error"]
    return out.get("value")


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")


@needs_fifo
def test_a_named_pipe_as_a_state_file_starts_cold(small_llama):
    from tokenloom.spec.suffix import store

    store.reset_default_suffix_caches()
    key = persist.model_key(small_llama)
    path = persist.state_path(key, store.STATE_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    with pytest.warns(PersistWarning, match="expected a regular file, got a named pipe"):
        assert _no_hang(lambda: persist.load_state(key, store.STATE_NAME, store.STATE_VERSION)) is None
    _no_hang(lambda: _gen(small_llama, method="suffix", budget=4, persist=True))
    store.reset_default_suffix_caches()


@needs_fifo
def test_core_state_loaders_refuse_a_named_pipe(tmp_path):
    fifo = tmp_path / "state.bin"
    os.mkfifo(fifo)
    for load in (lambda: tokenloom.TokenRecycler.load(fifo), lambda: _core.TokenCounts.load(fifo)):
        with pytest.raises(OSError, match="not a regular file"):
            _no_hang(load)
    with pytest.raises(OSError, match="a folder"):
        _core.TokenCounts.load(tmp_path)


def test_state_reads_are_bounded(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"x" * 100)
    assert persist.read_regular_file(path, 100) == b"x" * 100
    with pytest.raises(ValueError, match="at most 99 bytes"):
        persist.read_regular_file(path, 99)
    with pytest.raises(ValueError, match="a folder"):
        persist.read_regular_file(tmp_path, 99)


@needs_fifo
def test_step_cost_file_that_is_a_pipe_or_hostile_is_measured_again(small_llama):
    from tokenloom.spec import sizing

    key = sizing.calibration_key(small_llama)
    fake = {"timer": lambda kernel, t, run: (run(), 0.01 * t)[1], "loadavg": lambda: 0.0}  # an idle machine
    name, version = sizing.STEP_COST_STATE, sizing.STEP_COST_VERSION
    path = persist.state_path(key, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # well-formed files (valid checksum) holding curves that are not measured curves
    for bad in ({"tokens": [1, 2], "seconds": [-1.0, 0.5], "key": key}, {"tokens": [2.5], "seconds": [1.0]}, [1, 2]):
        sizing.clear_step_cost_cache()
        persist.save_state(key, name, version, json.dumps(bad).encode())
        with pytest.warns(persist.PersistWarning, match="not a valid curve"):
            cost = sizing.calibrate_step_cost(small_llama, tokens=(1, 2), repeats=1, **fake)
        assert cost.tokens == (1, 2) and all(s > 0 for s in cost.seconds)
    # a corrupted file (checksum): measured again too
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    sizing.clear_step_cost_cache()
    cost = sizing.calibrate_step_cost(small_llama, tokens=(1, 2), repeats=1, **fake)
    assert cost.tokens == (1, 2)
    path.unlink()
    os.mkfifo(path)
    sizing.clear_step_cost_cache()
    cost = _no_hang(lambda: sizing.calibrate_step_cost(small_llama, tokens=(1, 2), repeats=1, disk=True, **fake))
    assert cost.tokens == (1, 2)
    sizing.clear_step_cost_cache()


# -- 3. chain drafters: a history is checked whole before any state changes -------------------
def test_recycling_chains_check_the_whole_history_first():
    from tokenloom.spec.recycling.chains import RecyclingChains

    d = RecyclingChains(16, 3)
    with pytest.raises(IndexError, match=r"history: token id -1 is outside the vocabulary \[0, 16\)"):
        d.start(np.array([5, -1, 7]))
    assert d.stats()["known_rows"] == 0 and d.propose(np.array([5]), 3) == []
    with pytest.raises(IndexError, match="token id 64"):
        d.start([3, 64, 3, 64])
    assert d.propose([3], 3) == []
    with pytest.raises(ValueError, match="integer ids"):
        d.start(np.array([1.5, 2.0, 3.0]))
    with pytest.raises(ValueError, match="integer ids"):
        d.propose(np.array([3.7]), 3)
    for max_tokens in (0, -1):  # no chain wanted: the history is still checked
        with pytest.raises(IndexError):
            d.propose([3, 99], max_tokens)
    with pytest.raises(ValueError, match="max_tokens"):
        d.propose([3], -1)
    with pytest.raises(IndexError, match="emitted"):
        d.observe([3, 4], [4, 16], None)
    with pytest.raises(IndexError, match="topk"):
        d.observe([3, 4], [4], np.array([[1] * 8, [16] * 8]))
    assert d.stats() == {"known_rows": 0, "topk_updates": 0, "move_to_front_updates": 0}
    d.start([3, 4, 3, 5])
    assert d.propose([3], 3) == [5] and d.stats()["known_rows"] == 2


@pytest.mark.parametrize("recycled", [True, False])
def test_merged_chains_check_histories_and_their_cache(recycled):
    from tokenloom.spec.merged.chains import MergedChains
    from tokenloom.spec.suffix.store import SuffixCache

    d = MergedChains(16, 3, recycled=recycled)
    for bad, err in (([5, -1, 7], IndexError), ([3, 64, 3], IndexError), (np.array([1.5, 2.0]), ValueError)):
        with pytest.raises(err):
            d.start(bad)
        with pytest.raises(err):
            d.propose(bad, 0)
    assert d.stats()["requests"] == 0
    assert d.cache.vocab_size == 16
    big = SuffixCache()
    big.insert([1, 2, 40])
    with pytest.raises(ValueError, match="holds token id 40"):
        MergedChains(16, 3, recycled=recycled, cache=big)
    with pytest.raises(ValueError, match=r"max_match: expected an int in \[1, 256\]"):
        MergedChains(16, 3, recycled=recycled, max_match=257)


# -- 4. tree attention: sizes, positions and tokens are ints ----------------------------------
def test_tree_attention_refuses_floats():
    from tokenloom.runtime.treeattn import causal_attention_mask, prefix_tree_mask, slot_attention_mask, tree_position_ids

    with pytest.raises(TypeError, match="q_len: expected an int, got float"):
        causal_attention_mask(1.5, 4)
    with pytest.raises(TypeError, match="past_len"):
        causal_attention_mask(2, 4.0)
    with pytest.raises(TypeError, match=r"visible\[0\]: expected an int, got float"):
        prefix_tree_mask(2, 5, [[2.5]])
    with pytest.raises(TypeError, match="prefix_len"):
        slot_attention_mask(2.0, 5, [[3]])
    with pytest.raises(ValueError, match="depths: expected integer ids"):
        tree_position_ids(torch.tensor([0.0, 1.0]), 3)
    assert causal_attention_mask(np.int64(2), 4).shape == (1, 1, 2, 6)
    assert prefix_tree_mask(2, 5, [[np.int64(2)]]).shape == (1, 1, 1, 6)


def test_tree_forward_refuses_float_tokens_and_a_wrong_past_len(small_llama):
    from transformers import DynamicCache

    from tokenloom.runtime.treeattn import tree_forward

    cache = DynamicCache()
    for tokens in ([9.5, 3.7], torch.tensor([9.5, 3.7]), np.array([9.5, 3.7])):
        with pytest.raises(ValueError, match="tokens: expected integer ids"):
            tree_forward(small_llama, cache, tokens, [-1, 0])
    with pytest.raises(ValueError, match="past_len: expected the cache's length 0, got 3"):
        tree_forward(small_llama, cache, [9, 3], [-1, 0], past_len=3)
    with pytest.raises(TypeError, match="past_len"):
        tree_forward(small_llama, cache, [9, 3], [-1, 0], past_len=0.0)
    assert tree_forward(small_llama, cache, torch.tensor([9, 3], dtype=torch.int32), [-1, 0], past_len=0).shape == (2, 64)
    with pytest.raises(ValueError, match="past_len: expected the cache's length 2, got 0"):
        tree_forward(small_llama, cache, [9, 3], [-1, 0], past_len=0)


# -- 5. argument checks on every branch -------------------------------------------------------
@pytest.mark.parametrize(
    "method, kw, match",
    [
        ("merged", {"budget": 4, "max_budget": -1}, "max_budget"),
        ("suffix", {"budget": 4, "max_budget": 0}, "max_budget"),
        ("merged", {"max_match": 257}, "max_match"),
        ("dyspec", {"tree": "fixed", "max_frontier": -1}, "max_frontier"),
        ("recycling", {"tree": "2.2", "resize_every": 0}, "resize_every"),
    ],
)
def test_arguments_are_checked_whatever_the_other_arguments(small_llama, method, kw, match):
    with pytest.raises(ValueError, match=match):
        _gen(small_llama, method=method, persist=False, **kw) if method != "dyspec" else _gen(small_llama, method=method, **kw)


@pytest.mark.parametrize(
    "method, kw, err",
    [
        ("merged", {"budget": 0}, ValueError),
        ("suffix", {"budget": 0}, ValueError),
        ("recycling", {"tree": "nope"}, ValueError),
        ("dyspec", {"budget": 0}, ValueError),
        ("lookup", {"max_ngram": 0}, ValueError),
        ("cautious", {"punctuation": [1.5]}, ValueError),
        ("cautious", {"punctuation": [13], "record": "x"}, TypeError),
    ],
)
def test_arguments_are_checked_with_nothing_to_generate(small_llama, method, kw, err):
    with pytest.raises(err):
        _gen(small_llama, method=method, max_new_tokens=0, **kw)


def test_nothing_to_generate_runs_no_forward(small_llama):
    calls = []
    handle = small_llama.register_forward_hook(lambda *a: calls.append(1))
    try:
        for method, kw in (("plain", {}), ("merged", {"budget": 4, "persist": False}), ("cautious", {"punctuation": [13]})):
            out = _gen(small_llama, method=method, max_new_tokens=0, **kw)
            assert out.sequences.shape[1] == 7
    finally:
        handle.remove()
    assert calls == []


def test_cautious_punctuation_ids_are_checked(small_llama):
    with pytest.raises(ValueError, match="punctuation: expected integer ids"):
        _gen(small_llama, method="cautious", punctuation=[1.5])
    with pytest.raises(IndexError, match=r"punctuation: token id 64 is outside the vocabulary \[0, 64\)"):
        _gen(small_llama, method="cautious", punctuation={13, 64})
    with pytest.raises(TypeError, match="punctuation"):
        _gen(small_llama, method="cautious", punctuation=".")
    with pytest.raises(TypeError, match="record: expected a CautiousRecord or None, got str"):
        _gen(small_llama, method="cautious", punctuation=[13], record="x")


def test_top_k_ids_takes_float_rows_only():
    from tokenloom.sampling.topk import top_k_ids

    for ints in (np.arange(6).reshape(2, 3), torch.arange(6).reshape(2, 3), torch.ones(2, 3, dtype=torch.bool)):
        with pytest.raises(ValueError, match="float"):
            top_k_ids(ints, 1)
    assert top_k_ids(torch.tensor([[0.0, 2.0, 1.0]], dtype=torch.float16), 2).tolist() == [[1, 2]]


def test_a_sequence_longer_than_the_cache_keeps_its_last_tokens():
    from tokenloom.spec.suffix.store import SuffixCache

    for depth in (256, 24):
        c = SuffixCache(depth, 4096)
        c.insert(np.arange(1000))
        (kept,) = c.sequences()
        assert 0 < len(kept) < 1000 and kept.tolist() == list(range(1000 - len(kept), 1000))
        assert c.memory_bytes <= 4096


def _freq_file(tmp_path):
    t = _core.TokenCounts(6)
    t.add(np.array([1, 2, 2, 5]))
    t.add(np.array([0]))
    path = tmp_path / "f.tlfreq"
    t.save(path)
    return t, path


def test_token_frequency_file_detects_any_flipped_bit(tmp_path):
    t, path = _freq_file(tmp_path)
    good = path.read_bytes()
    docs_at = 8 + 4 + 4 + 8 + 8
    for at in range(len(good)):
        bad = bytearray(good)
        bad[at] ^= 1 << (at % 8)
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError):
            _core.TokenCounts.load(path)
    bad = bytearray(good)
    bad[docs_at] ^= 1  # the document count: no other check covers it
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="CRC-32 mismatch"):
        _core.TokenCounts.load(path)
    path.write_bytes(good)
    back = _core.TokenCounts.load(path, 6)
    assert (back.total, back.docs) == (t.total, t.docs) == (5, 2)


def test_token_frequency_version_1_files_are_still_read(tmp_path):
    _, path = _freq_file(tmp_path)
    v1 = bytearray(path.read_bytes()[:-4])
    v1[8:12] = struct.pack("<I", 1)
    path.write_bytes(bytes(v1))
    back = _core.TokenCounts.load(path)
    assert (back.total, back.docs) == (5, 2)
    v9 = bytearray(v1)
    v9[8:12] = struct.pack("<I", 9)
    path.write_bytes(bytes(v9))
    with pytest.raises(ValueError, match="version 9 is not supported"):
        _core.TokenCounts.load(path)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint8, np.uint64, np.dtype(">i8")])
def test_core_integer_arrays_convert_by_value(dtype):
    p, t = np.array([-1, 0, 1]), np.array([5, 2, 3])
    argmax = np.array([2, 3, 4]).astype(dtype)
    path, tokens = _core.verify_greedy(p, t, argmax)
    assert path.tolist() == [0, 1, 2] and tokens.tolist() == [2, 3, 4]
    path, tokens = _core.verify_greedy(p.astype(np.int32), t.astype(np.int32), argmax)
    assert tokens.tolist() == [2, 3, 4]
    res = _core.verify_greedy_batch(p[None].astype(np.int32), t[None], argmax[None], np.array([3], np.int32))
    assert res[0][1].tolist() == [2, 3, 4]


@pytest.mark.parametrize("bad", [np.array([2.0, 3.0, 4.0]), np.array([2, 3, 4], np.float32), [2, 3, 4], np.zeros((1, 3), np.int64)])
def test_core_integer_arrays_refuse_floats_by_name(bad):
    p, t = np.array([-1, 0, 1]), np.array([5, 2, 3])
    with pytest.raises(TypeError, match=r"argument 'target_argmax': expected a 1-D int64 numpy array"):
        _core.verify_greedy(p, t, bad)
    c = _core.SuffixCache()
    with pytest.raises(TypeError, match=r"argument 'tokens': expected a 1-D int64"):
        c.insert(bad)
    assert len(c) == 0


# -- 6. the documented float dtypes and caps --------------------------------------------------
def test_probs_from_logits_converts_float16_as_documented():
    logits = np.array([[0.0, 1.0, 2.0]], np.float16)
    p = _core.probs_from_logits(logits)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, _core.probs_from_logits(logits.astype(np.float32)), rtol=1e-6)
    assert "float16" in _core.probs_from_logits.__doc__


def test_suffix_caps_are_documented_and_enforced():
    from tokenloom.spec.suffix.store import MAX_MATCH, MAX_NODES, SuffixIndex

    idx = SuffixIndex(4)
    idx.extend([1, 2, 3])
    idx.speculate([1, 2], max_match=MAX_MATCH, max_nodes=MAX_NODES)
    for kw in ({"max_match": MAX_MATCH + 1}, {"max_nodes": MAX_NODES + 1}):
        with pytest.raises(ValueError, match=r"max_(match|nodes): expected an int <= (256|16777216)"):
            idx.speculate([1, 2], **kw)
    for doc in (_core.SuffixIndex.speculate.__doc__, SuffixIndex.speculate.__doc__):
        assert "256" in doc and "2**24" in doc
