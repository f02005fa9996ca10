"""Seeded property fuzzing of the compiled API (``tokenloom._core``) and of the top-level
kernel functions: hostile arguments of every kind (huge, negative and float ids, NaN and
subnormal floats, strings, byte-swapped and oddly shaped arrays) must give a result or a clean
ValueError / TypeError / IndexError / OSError; never a PanicException, an OverflowError, a
RuntimeError or a crash. Derandomized, so CI sees the same examples on every run."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tokenloom
from tokenloom import _core

CLEAN = (ValueError, TypeError, IndexError, OSError)
SETTINGS = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

SPECIAL_INTS = [-1, -2, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
SPECIAL_FLOATS = [0.0, -0.0, 5e-324, 1e-310, 1e300, float("nan"), float("inf"), float("-inf"), 0.5, 1.0]


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.integers(-3, 12),
        st.sampled_from(SPECIAL_INTS),
        st.sampled_from(SPECIAL_FLOATS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
        st.binary(max_size=4),
        st.sampled_from([np.int64(3), np.uint8(2), np.float32(1.5), np.float64(2.0)]),
    )


DTYPES = [np.int64, np.int32, np.uint64, np.float32, np.float64, ">f8", ">f4", ">i8", np.float16, np.bool_]


def arrays() -> st.SearchStrategy:
    return hnp.arrays(
        dtype=st.sampled_from(DTYPES),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    )


def small_prob_arrays() -> st.SearchStrategy:
    """Mostly well-formed: probability rows [T, V] (sometimes [B, T, V]) in float32 / float64."""

    def rows(t: int, v: int, dtype, raw: bool, b: int):
        def build(w):
            x = np.asarray(w, dtype=np.float64).reshape((b, t, v) if b else (t, v))
            if not raw:
                s = x.sum(-1, keepdims=True)
                x = np.where(s > 0, x / np.where(s > 0, s, 1), 1.0 / v)
            return x.astype(dtype)

        n = (b or 1) * t * v
        return st.lists(st.floats(0, 1), min_size=n, max_size=n).map(build)

    return st.tuples(
        st.integers(1, 4), st.integers(1, 4), st.sampled_from([np.float32, np.float64, ">f8"]), st.booleans(),
        st.sampled_from([0, 0, 2]),
    ).flatmap(lambda a: rows(*a))


def values() -> st.SearchStrategy:
    ints = st.one_of(st.integers(-2, 6), st.sampled_from(SPECIAL_INTS))
    return st.one_of(
        scalars(),
        arrays(),
        small_prob_arrays(),
        st.lists(ints, max_size=5),
        st.lists(st.lists(ints, max_size=3), max_size=4),
        st.lists(scalars(), max_size=3),
        st.just([-1, 0, 0, 1]),
        st.just(np.array([-1, 0, 0, 1], np.int64)),
        st.just(np.array([[-1, 0, 1], [-1, 0, 0]], np.int64)),
    )


def check_call(f, *args, **kwargs):
    """Calls ``f``; a clean refusal is fine, anything else (PanicException is a BaseException)
    fails the test."""
    try:
        return f(*args, **kwargs)
    except CLEAN:
        return None


def arity(f) -> int:
    try:
        return len([p for p in inspect.signature(f).parameters.values() if p.kind <= p.POSITIONAL_OR_KEYWORD])
    except (TypeError, ValueError):
        return 4


CORE_FUNCTIONS = [
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
    "verify_chain",
    "verify_chain_batch",
    "probs_from_logits",
    "sample_logits",
    "uniforms",
    "template_paths",
    "template_parents",
]


@pytest.mark.parametrize("name", CORE_FUNCTIONS)
@SETTINGS
@given(data=st.data())
def test_core_functions(name, data):
    f = getattr(_core, name)
    n = data.draw(st.integers(0, arity(f)), label="nargs")
    args = [data.draw(values(), label=f"arg{i}") for i in range(n)]
    check_call(f, *args)


TOP_LEVEL = [
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
    "verify_chain",
    "verify_chain_batch",
    "probs_from_logits",
]


@pytest.mark.parametrize("name", TOP_LEVEL)
@SETTINGS
@given(data=st.data())
def test_top_level_kernel_functions(name, data):
    f = getattr(tokenloom, name)
    n = data.draw(st.integers(0, arity(f)), label="nargs")
    args = [data.draw(values(), label=f"arg{i}") for i in range(n)]
    kwargs = {}
    if "seed" in inspect.signature(f).parameters and data.draw(st.booleans()):
        kwargs["seed"] = data.draw(st.one_of(st.integers(0, 2**64 - 1), st.none()), label="seed")
    check_call(f, *args, **kwargs)


@SETTINGS
@given(st.lists(values(), max_size=5), st.lists(values(), max_size=2))
def test_sampler(ctor, calls):
    s = check_call(tokenloom.Sampler, *ctor[:4])
    if s is not None:
        for x in calls:
            out = check_call(s, x)
            if out is not None:
                assert np.asarray(out).dtype == np.int64


def calls(methods, max_args=3, max_calls=6) -> st.SearchStrategy:
    """Method calls ``(name, args)`` with hostile arguments."""
    one = st.tuples(st.sampled_from(methods), st.lists(values(), max_size=max_args))
    return st.lists(one, max_size=max_calls)


RECYCLER_METHODS = ["draft", "update", "seed_from_prefill", "ranks_of", "set_template", "adjacency"]


@SETTINGS
@given(st.lists(values(), max_size=3), calls(RECYCLER_METHODS, 2))
def test_token_recycler(ctor, calls):
    for cls in (_core.TokenRecycler, tokenloom.TokenRecycler):
        rec = check_call(cls, *ctor)
        if rec is None:
            rec = cls(12, 3, "2.2.2-4") if cls is _core.TokenRecycler else cls(12, k=3, template="2.2.2-4")
        for method, args in calls:
            check_call(getattr(rec, method), *args)
        adj = np.asarray(rec.adjacency())
        assert ((0 <= adj) & (adj < rec.vocab_size)).all()


BUILDER_KWARGS = ["k", "sampled", "seed", "vocab_size", "max_frontier"]
BUILDER_METHODS = ["reset", "frontier", "expand", "expand_rows", "tree", "node"]


@SETTINGS
@given(
    st.lists(values(), max_size=2),
    st.dictionaries(st.sampled_from(BUILDER_KWARGS), values(), max_size=3),
    calls(BUILDER_METHODS),
)
def test_dynamic_tree_builder(ctor, kwargs, calls):
    for cls in (_core.DynamicTreeBuilder, tokenloom.DynamicTreeBuilder):
        b = check_call(cls, *ctor, **kwargs)
        if b is None:
            b = cls(5, 3, k=2, seed=1, vocab_size=16)
            b.reset(1)
        for method, args in calls:
            check_call(getattr(b, method), *args)
            t = check_call(b.tree)
            if t is not None:
                parents = np.asarray(t[1]).tolist()
                assert parents[0] == -1 and all(0 <= p < j for j, p in enumerate(parents) if j)
                assert len(parents) <= b.budget + 1


def _index(canonical: bool):
    toks = [b"a", b"b", b"ab", b" ", b"  ", b"\xc3", b"\xa9", b""]
    special = np.zeros(len(toks), bool)
    special[-1] = True
    if not canonical:
        return _core.ByteIndex(toks, special, len(toks) + 2)
    base = [[0], [1], [0, 1], [3], [3, 3], [5], [6], []]
    merges = np.array([[0, 1, 2], [3, 3, 4]], np.int64)
    return _core.ByteIndex(toks, special, len(toks) + 2, base=base, merges=merges, pretok="gpt2")


BYTE_METHODS = ["next_mask", "context_mask", "next_mask_after", "valid_pair", "valid_pair_before",
                "first_ok", "first_ok_before", "sequence_ok", "enumerate_covers", "tokens_with_prefix",
                "prefix_tokens", "continuation_masses", "gpt2_piece_starts"]


@SETTINGS
@given(st.booleans(), calls(BYTE_METHODS))
def test_byte_index(canonical, calls):
    ix = _index(canonical)
    for method, args in calls:
        check_call(getattr(ix, method), *args)


@SETTINGS
@given(st.lists(values(), max_size=7))
def test_byte_index_constructor(args):
    check_call(_core.ByteIndex, *args)


COVER_TREE_METHODS = ["push", "expand", "active", "info", "path", "byte_masses", "top_straddling"]


@SETTINGS
@given(st.booleans(), calls(COVER_TREE_METHODS, 4, 10))
def test_cover_tree(canonical, calls):
    tree = _core.CoverTree(_index(canonical), canonical=canonical)
    tree.expand(0)
    for method, args in calls:
        check_call(getattr(tree, method), *args)
    for n in tree.active():
        assert len(tree.info(n)) == 6
