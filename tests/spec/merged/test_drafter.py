"""The merged drafter's per-step tree in the Rust core (``_core.grow_merged``) against its
pure-Python form (tests/reference/suffix.py ``grow_reference``): identical trees (tokens,
parents, depths, scores bit for bit, builder ids), identical offered rows and the same
calibration learnt from them; the core's row cap and class map against ``cap_rows`` and
``Calibration``; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenloom import _core
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.merged.calibration import CANDIDATE_CLASSES, PROB_BUCKETS, Calibration
from tokenloom.spec.sizing import StepCost
from tokenloom.spec.merged.drafter import MergedDrafter, best_nodes, cap_rows, subtree, top_path
from tokenloom.spec.suffix.store import SuffixCache

from tests.reference.suffix import (
    best_nodes_reference,
    cap_reference,
    cap_rows_reference,
    grow_core,
    grow_reference,
    top_path_reference,
)

VOCAB = 12


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float64).tobytes()


# --- the row cap and the class map --------------------------------------------------------------

entry = st.floats(0.0, 1.0) | st.sampled_from([0.0, 0.5, 0.6, 0.95, 1.0, 1 / 3])


@given(st.integers(1, 4).flatmap(lambda r: st.integers(1, 140).flatmap(
    lambda w: st.lists(st.lists(entry, min_size=w, max_size=w), min_size=r, max_size=r))))
@settings(max_examples=300, deadline=None)
def test_core_cap_rows_is_the_numpy_rule_bit_for_bit(rows):
    """Widths 1..140 cover numpy's three summation orders (plain, 8 partial sums, halves)."""
    p = np.array(rows, dtype=np.float64)
    got = _core.cap_rows(p)
    assert bits(got) == bits(cap_rows_reference(p))
    assert bits(cap_rows(p)) == bits(got)
    for i in range(p.shape[0]):
        assert got[i].tolist() == pytest.approx(cap_reference(p[i].tolist()), abs=1e-12)


def test_core_cap_rows_bad_input():
    for bad in (np.array([[0.5, np.nan]]), np.array([[1.5]]), np.array([[-0.1, 0.2]])):
        with pytest.raises(ValueError, match="expected an estimate in"):
            _core.cap_rows(bad)


@given(
    source=st.integers(0, 1),
    match_len=st.integers(0, 1 << 31) | st.sampled_from([1, 2, 3, 4, 5, 8, 9, 12, 13]),
    prob=st.floats(0.0, 1.0) | st.sampled_from(list(PROB_BUCKETS) + [0.998, 0.9995]),
    support=st.integers(0, 1 << 62) | st.sampled_from([1, 2, 3, 4]),
    rank=st.integers(0, 7),
    depth=st.integers(0, 40),
)
@settings(max_examples=300, deadline=None)
def test_class_map_is_the_calibrations(source, match_len, prob, support, rank, depth):
    cal = Calibration(k=8)
    assert CANDIDATE_CLASSES.n_suffix == cal.n_suffix
    assert CANDIDATE_CLASSES.num_classes(8) == cal.estimates().size
    assert CANDIDATE_CLASSES.suffix_class(source, match_len, prob, support) == cal.suffix_class(source, match_len, prob, support)
    assert CANDIDATE_CLASSES.recycle_class(rank, depth) == cal.recycle_class(rank, depth)


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]) | st.floats(0.0, 1.0), st.integers(1, 4)), max_size=40),
       st.lists(st.floats(1.0, 3.0), min_size=2, max_size=5))
@settings(max_examples=200, deadline=None)
def test_best_nodes_matches_reference(nodes, seconds):
    """best_nodes (numpy) against its plain form, ties in score and depth included."""
    scores = np.array([1.0] + [s for s, _ in nodes])
    depths = np.array([0] + [d for _, d in nodes], dtype=np.int64)
    cost = StepCost(tuple(range(1, len(seconds) + 1)), tuple(sorted(seconds)))
    got = best_nodes(scores, depths, cost)
    assert got.dtype == np.int64 and got.tolist() == best_nodes_reference(scores, depths, cost)


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]) | st.floats(0.0, 1.0), st.integers(0, 40)), max_size=40),
       st.sampled_from([0.0, 0.1, 0.25, 0.5, 1.0]))
@settings(max_examples=200, deadline=None)
def test_top_path_matches_reference(nodes, token_cost):
    """top_path (core) against its plain form, ties in gain and depth included."""
    scores = np.array([1.0] + [s for s, _ in nodes])
    parents = np.array([-1] + [p % (i + 1) for i, (_, p) in enumerate(nodes)], dtype=np.int64)
    assert top_path(scores, parents, token_cost).tolist() == top_path_reference(scores, parents, token_cost)


def test_top_path_bad_input():
    for scores, parents, cost in (([1.0, 0.5], [-1, 1], 0.0), ([1.0, 0.5], [0, 0], 0.0), ([1.0], [-1, 0], 0.0),
                                  ([1.0, np.nan], [-1, 0], 0.0), ([1.0], [-1], 1.5), ([], [], 0.0)):
        with pytest.raises(ValueError):
            _core.top_path(np.array(scores, dtype=np.float64), np.array(parents, dtype=np.int64), cost)


# --- whole trees ----------------------------------------------------------------------------------

tokens = st.integers(0, VOCAB - 1)


@st.composite
def drafter_states(draw):
    """A merged / suffix drafter mid-request: random sequence, cache, recycler rows (all-zero
    ones and duplicated tokens included) and calibration (random hits observed), random sizes."""
    k = draw(st.integers(1, 8))
    recycled = draw(st.booleans())
    rec = None
    if recycled:
        rec = TokenRecycler(VOCAB, k)
        written = draw(st.lists(tokens, max_size=VOCAB, unique=True))
        if written:
            rows = draw(st.lists(st.lists(st.integers(0, 4) | tokens, min_size=k, max_size=k),
                                 min_size=len(written), max_size=len(written)))
            rec.update(np.array(written, dtype=np.int64), np.array(rows, dtype=np.int64))
    cache = None
    if draw(st.booleans()):
        cache = SuffixCache(max_depth=draw(st.integers(2, 12)), max_bytes=1 << 20)
        for doc in draw(st.lists(st.lists(tokens, max_size=30), max_size=4)):
            cache.insert(np.array(doc, dtype=np.int64))
    kk = k if recycled else 0
    cal = Calibration(k=kk, decay=draw(st.sampled_from([1.0, 0.9])), prior_weight=draw(st.sampled_from([3.0, 0.01])))
    n = cal.estimates().size
    for _ in range(draw(st.integers(0, 4))):
        offered = draw(st.lists(st.lists(st.integers(0, n - 1), max_size=12), max_size=4))
        hits = [[draw(st.booleans()) for _ in o] for o in offered]
        cal.observe(offered, hits)
    d = MergedDrafter(
        recycler=rec, cache=cache, budget=draw(st.integers(1, 32)), max_depth=draw(st.integers(1, 12)),
        max_match=draw(st.integers(1, 8)), children=draw(st.integers(1, 8)), index_depth=draw(st.integers(2, 12)),
        calibration=cal, seed_prefill=False,
    )
    seq = draw(st.lists(st.integers(0, 5) | tokens, min_size=1, max_size=60))
    d.begin(seq, draw(st.integers(0, len(seq))))
    return d


def offered_rows(row_nodes, offsets, toks, classes):
    """{builder id: (tokens, classes per token)} of the rows that offered something."""
    rows = {}
    for r, bid in enumerate(row_nodes.tolist()):
        a, b = int(offsets[r]), int(offsets[r + 1])
        tl, cl = [], []
        for t, c in zip(toks[a:b].tolist(), classes[a:b].tolist()):
            if tl and tl[-1] == t:
                cl[-1].append(c)
            else:
                tl.append(t)
                cl.append([c])
        if tl:
            rows[bid] = (tl, cl)
    return rows


@given(drafter_states())
@settings(max_examples=400, deadline=None)
def test_grow_is_the_python_rule(d):
    ref = grow_reference(d, d.seq[-1])
    (tokens, parents, depths, scores, draft_rows, node_ids), (row_nodes, offsets, toks, classes), matched = grow_core(d)
    for name, got in (("tokens", tokens), ("parents", parents), ("depths", depths), ("node_ids", node_ids)):
        assert got.tolist() == ref[name].tolist(), name
    assert bits(scores) == bits(ref["scores"])
    assert matched == ref["matched"]
    assert offered_rows(row_nodes, offsets, toks, classes) == ref["rows"]
    # draft_rows index the rows by node: expanded nodes only, each its own row.
    for i, r in enumerate(draft_rows.tolist()):
        assert r == -1 or row_nodes[r] == node_ids[i]


@pytest.mark.parametrize("seed", range(30))
def test_grow_is_the_python_rule_on_large_trees(seed):
    """Seeded, larger cases: repetitive sequences (long matches, deep chains), every recycler
    row written, a request's worth of observed calibration, budgets up to 64."""
    rng = np.random.default_rng(seed)
    vocab, k = 40, 8
    rec = TokenRecycler(vocab, k)
    rec.update(np.arange(vocab), rng.integers(0, vocab, (vocab, k)))
    cache = SuffixCache(max_bytes=1 << 20)
    chunks = [rng.integers(0, vocab, int(rng.integers(3, 12))).tolist() for _ in range(6)]
    for _ in range(3):
        cache.insert(np.array(sum((chunks[i] for i in rng.integers(0, 6, 8)), []), dtype=np.int64))
    cal = Calibration(k=k)
    for _ in range(50):
        offered = [rng.integers(0, cal.estimates().size, 10).tolist() for _ in range(3)]
        cal.observe(offered, [(rng.random(10) < 0.3).tolist() for _ in offered])
    d = MergedDrafter(recycler=rec, cache=cache, budget=int(rng.integers(8, 65)), max_depth=int(rng.integers(4, 17)),
                      children=int(rng.integers(2, 9)), calibration=cal, seed_prefill=False)
    d.begin(sum((chunks[i] for i in rng.integers(0, 6, 10)), []), 20)
    ref = grow_reference(d, d.seq[-1])
    (tokens, parents, depths, scores, _, node_ids), (row_nodes, offsets, toks, classes), matched = grow_core(d)
    assert tokens.tolist() == ref["tokens"].tolist() and parents.tolist() == ref["parents"].tolist()
    assert node_ids.tolist() == ref["node_ids"].tolist() and bits(scores) == bits(ref["scores"])
    assert offered_rows(row_nodes, offsets, toks, classes) == ref["rows"] and matched == ref["matched"]
    # Cut for a step cost (auto): the reference's tree cut by the plain best_nodes.
    knots = np.unique(rng.integers(1, 70, 5))
    cost = StepCost(tuple(int(x) for x in knots), tuple(np.sort(rng.random(knots.size)) + 1.0))
    keep = np.array(best_nodes_reference(ref["scores"], ref["depths"], cost))
    want = subtree(keep, ref["tokens"], ref["parents"], ref["depths"])
    (tokens, parents, depths, scores, rows, node_ids), *_ = grow_core(d, cost)
    assert tokens.tolist() == want.tokens.tolist() and parents.tolist() == want.parents.tolist()
    assert depths.tolist() == want.depths.tolist() and bits(scores) == bits(ref["scores"][keep])
    assert node_ids.tolist() == ref["node_ids"][keep].tolist()
    # Cut to the best chain (chain mode).
    token_cost = float(rng.choice([0.0, 0.05, 0.3]))
    keep = np.array(top_path_reference(ref["scores"], ref["parents"], token_cost))
    want = subtree(keep, ref["tokens"], ref["parents"], ref["depths"])
    (tokens, parents, depths, scores, rows, node_ids), *_ = grow_core(d, token_cost=token_cost)
    assert tokens.tolist() == want.tokens.tolist() and parents.tolist() == want.parents.tolist()
    assert node_ids.tolist() == ref["node_ids"][keep].tolist()


@given(drafter_states(), st.data())
@settings(max_examples=150, deadline=None)
def test_propose_and_learn_match_the_python_rule(d, data):
    """The proposed tree is the reference's (no cut with a fixed budget), and learning an
    accepted path observes exactly the classes and hits the reference's rows give."""
    ref = grow_reference(d, d.seq[-1])
    want = d.calibration.copy()
    tree = d.propose(d.seq[-1], len(d.seq) - 1)
    assert tree.tokens.tolist() == ref["tokens"].tolist() and tree.parents.tolist() == ref["parents"].tolist()
    node = data.draw(st.integers(0, tree.size - 1))
    path = [node]
    while path[-1] != 0:
        path.append(int(tree.parents[path[-1]]))
    path = path[::-1]
    emitted = [int(tree.tokens[i]) for i in path[1:]] + [data.draw(tokens)]
    offered, hits = [], []
    for j, node in enumerate(path):
        row = ref["rows"].get(int(ref["node_ids"][node]))
        if row is not None:
            offered.append([c for cl in row[1] for c in cl])
            hits.append([t == emitted[j] for t, cl in zip(*row) for _ in cl])
    want.observe(offered, hits)
    d.learn(path, emitted)
    assert bits(d.calibration.offers) == bits(want.offers) and bits(d.calibration.hits) == bits(want.hits)


def test_chain_and_auto_cut_the_same_tree():
    """Chain mode keeps the best path, auto mode the best nodes of the core's tree; learn maps
    the cut tree's nodes to their rows."""
    rec = TokenRecycler(64, 4)
    rec.update(np.array([5, 6]), np.array([[40, 41, 40, 0], [7, 9, 10, 11]]))
    for kw in ({"chain": True}, {"budget": "auto", "cost": StepCost((1, 4, 16), (1.0, 1.1, 1.6))}):
        d = MergedDrafter(recycler=rec, seed_prefill=False, **kw)
        d.begin([5, 6, 7, 8, 1, 5, 6, 7, 8, 2, 5], 11)
        ref = grow_reference(d, 5)
        keep = top_path_reference(ref["scores"], ref["parents"]) if "chain" in kw else best_nodes_reference(ref["scores"], ref["depths"], kw["cost"])
        tree = d.propose(5, 10)
        assert tree.tokens.tolist() == ref["tokens"][keep].tolist() and tree.size > 2
        before = d.calibration.offers.sum()
        d.learn([0, 1], [int(tree.tokens[1]), 3])
        assert d.calibration.offers.sum() > before


def test_grow_bad_input():
    d = MergedDrafter(recycler=TokenRecycler(VOCAB, 4), cache=SuffixCache(), seed_prefill=False)
    d.begin([1, 2, 3, 1, 2], 5)
    b = _core.DynamicTreeBuilder(4, 4)
    est = d.calibration.estimates()
    ctx = np.array([1, 2], dtype=np.int64)
    rec, idx, cache = d.recycler.core, d.index.core, d.cache.core

    def call(*, builder=b, root=2, context=ctx, e=est, classes=CANDIDATE_CLASSES, cache=cache, recycler=rec, **kw):
        return _core.grow_merged(builder, root, context, e, classes, idx, cache, recycler, **kw)

    call()
    with pytest.raises(ValueError, match="est: expected 284 estimates"):
        call(e=est[:-1])
    with pytest.raises(ValueError, match="est: expected 252 estimates .* k = 0"):
        call(recycler=None)
    with pytest.raises(ValueError, match=r"est\[3\] = NaN"):
        e = est.copy()
        e[3] = np.nan
        call(e=e)
    with pytest.raises(ValueError, match=r"est\[0\] = 1.5"):
        call(e=np.full_like(est, 1.5))
    with pytest.raises(ValueError, match="source 1"):
        one = _core.CandidateClasses((1, 2), (0.5, 1.0), (1,), 8, sources=1)
        call(classes=one, e=np.zeros(one.num_classes(4)))
    with pytest.raises(IndexError):
        call(root=-1)
    with pytest.raises(IndexError):
        call(context=np.array([1, 1 << 30], dtype=np.int64))
    with pytest.raises(IndexError):  # a recycler row token outside the recycler's vocabulary
        call(root=VOCAB + 3)
    with pytest.raises(ValueError, match="max_match"):
        call(max_match=0)
    with pytest.raises(ValueError, match="one cut at most"):
        call(cost_tokens=np.array([1.0]), cost_seconds=np.array([1.0]), token_cost=0.0)
    with pytest.raises(ValueError, match="token_cost"):
        call(token_cost=2.0)
    with pytest.raises(ValueError, match="both or neither"):
        call(cost_tokens=np.array([1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        call(cost_tokens=np.array([2.0, 1.0]), cost_seconds=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="times > 0"):
        call(cost_tokens=np.array([1.0]), cost_seconds=np.array([0.0]))
    with pytest.raises(ValueError, match="cost"):
        call(cost_tokens=np.array([1.0, 2.0]), cost_seconds=np.array([1.0]))
    with pytest.raises(ValueError, match="depths"):
        _core.best_nodes(np.ones(3), np.zeros(2, dtype=np.int64), np.array([1.0]), np.array([1.0]))
    with pytest.raises(TypeError):
        call(builder="builder")
    with pytest.raises(TypeError):
        call(recycler=d.recycler)  # the wrapper, not its core
    for bad in (((2, 1), (0.5, 1.0), (1,), 8), ((1,), (1.0,), (1,), 8), ((1,), (0.5, 1.0), (1,), 0)):
        with pytest.raises(ValueError):
            _core.CandidateClasses(*bad)
