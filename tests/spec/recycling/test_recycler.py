"""TokenRecycler and templates: parity with a pure-Python reference (draft, update,
move-to-front), the 2.2.2 template, the nested family, save/load, bad input, the deprecated
template API."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenloom
from tokenloom import TokenRecycler
from tokenloom.spec.templates import (
    NESTED_SIZES,
    compile_template,
    nested_template_order,
    template_names,
    template_parents,
    template_paths,
)

from tests.reference.spec import move_to_front_reference

# The paper's template as listed in the reference code (model/recycling/tree_template_.py).
PAPER_2_2_2 = (
    [[r] for r in range(8)]
    + [[0, r] for r in range(8)] + [[1, r] for r in range(4)] + [[2, r] for r in range(3)]
    + [[3, 0], [3, 1], [4, 0], [5, 0], [6, 0], [7, 0]]
    + [[0, 0, r] for r in range(8)] + [[0, 1, 0], [0, 1, 1], [0, 1, 2], [0, 2, 0], [0, 2, 1]]
    + [[0, r, 0] for r in range(3, 8)] + [[1, 0, 0], [1, 0, 1], [1, 1, 0]] + [[r, 0, 0] for r in range(2, 6)]
    + [[0, 0, 0, r] for r in range(5)] + [[0, 0, 1, 0], [0, 0, 1, 1], [0, 0, 2, 0], [0, 0, 3, 0], [0, 0, 4, 0]]
    + [[0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0], [3, 0, 0, 0]]
    + [[0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2], [0, 0, 0, 1, 0], [0, 0, 0, 2, 0], [0, 0, 1, 0, 0]]
    + [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]
    + [[0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]
)


# --- pure-Python reference -----------------------------------------------------------------


def ref_canonical(paths):
    return sorted((list(p) for p in paths), key=lambda p: (len(p), p))


def ref_draft(adj, root, paths):
    """BFS over canonical paths: node i + 1 = paths[i]; token = adj[token(parent)][rank]."""
    paths = ref_canonical(paths)
    index = {(): 0}
    tokens, parents, depths = [root], [-1], [0]
    for i, p in enumerate(paths):
        parent = index[tuple(p[:-1])]
        index[tuple(p)] = i + 1
        tokens.append(int(adj[tokens[parent]][p[-1]]))
        parents.append(parent)
        depths.append(len(p))
    return tokens, parents, depths


def ref_update(adj, tokens, topk):
    """Row tokens[i] := topk[i] in order: the last position wins."""
    for t, row in zip(tokens, topk):
        adj[t] = list(row)


@st.composite
def closed_templates(draw, k=4, max_nodes=30):
    """A random subtree-closed set of rank paths with ranks < k, in a random order."""
    paths = [[draw(st.integers(0, k - 1))]]
    for _ in range(draw(st.integers(0, max_nodes - 1))):
        parent = draw(st.sampled_from(paths + [[]]))
        child = parent + [draw(st.integers(0, k - 1))]
        if child not in paths:
            paths.append(child)
    return draw(st.permutations(paths))


@settings(max_examples=200, deadline=None)
@given(
    template=closed_templates(),
    vocab=st.integers(1, 12),
    updates=st.lists(st.tuples(st.integers(0, 11), st.lists(st.integers(0, 11), min_size=4, max_size=4)), max_size=25),
    root=st.integers(0, 11),
)
def test_draft_and_update_parity(template, vocab, updates, root):
    k = 4
    updates = [(t % vocab, [x % vocab for x in row]) for t, row in updates]
    root %= vocab
    rec = TokenRecycler(vocab, k)
    ref = [[0] * k for _ in range(vocab)]
    if updates:
        toks = np.array([u[0] for u in updates], dtype=np.int64)
        topk = np.array([u[1] for u in updates], dtype=np.int64)
        rec.update(toks, topk)
        ref_update(ref, toks.tolist(), topk.tolist())
    assert rec.adjacency().tolist() == ref
    d = rec.draft(root, template)
    tokens, parents, depths = ref_draft(ref, root, template)
    assert d.tokens.tolist() == tokens
    assert d.parents.tolist() == parents
    assert d.depths.tolist() == depths
    assert len(d) == len(template) + 1
    assert template_paths(template) == ref_canonical(template)
    # ranks_of: first matching rank in the row, -1 otherwise.
    nxt = [(root + j) % vocab for j in range(len(tokens))]
    want = [ref[t].index(n) if n in ref[t] else -1 for t, n in zip(tokens, nxt)]
    assert rec.ranks_of(tokens, nxt).tolist() == want


@settings(max_examples=60, deadline=None)
@given(
    vocab=st.integers(1, 12),
    k=st.integers(1, 4),
    seed=st.lists(st.tuples(st.integers(0, 11), st.lists(st.integers(0, 11), min_size=4, max_size=4)), max_size=6),
    pairs=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11)), max_size=12),
    empty=st.lists(st.integers(0, 11), max_size=5),
)
def test_move_to_front_parity(vocab, k, seed, pairs, empty):
    """The core's move-to-front against the pure-Python rule: rows in ``empty`` start with no
    candidates, the others with their contents; an emptied row no pair writes is unchanged."""
    rec = TokenRecycler(vocab, k)
    if seed:
        rec.update([t % vocab for t, _ in seed], [[x % vocab for x in row[:k]] for _, row in seed])
    before = rec.adjacency().tolist()
    empty = sorted({e % vocab for e in empty})
    rows = {t: list(before[t]) for t in range(vocab) if t not in empty}
    tokens, succ = [t % vocab for t, _ in pairs], [s % vocab for _, s in pairs]
    move_to_front_reference(rows, tokens, succ, k)
    rec.move_to_front(tokens, succ, empty=empty)
    after = rec.adjacency().tolist()
    for t in range(vocab):
        assert after[t] == rows.get(t, before[t]), t


def test_move_to_front_checks_every_id_first():
    rec = TokenRecycler(10, 3)
    rec.update([1, 2], [[3, 4, 5], [6, 7, 8]])
    before = rec.adjacency().copy()
    with pytest.raises(IndexError, match="successors: 10 is out of range"):
        rec.move_to_front([1, 2], [4, 10])
    with pytest.raises(IndexError, match="tokens: -1"):
        rec.move_to_front([1, -1], [4, 5])
    with pytest.raises(IndexError, match="empty: 12"):
        rec.move_to_front([1], [4], empty=[12])
    with pytest.raises(ValueError, match="successors: expected length 2"):
        rec.move_to_front([1, 2], [4])
    with pytest.raises(ValueError, match="integer ids"):
        rec.move_to_front([1.5], [4])
    assert np.array_equal(rec.adjacency(), before), "failed calls write nothing"
    rec.move_to_front([1, 9], [5, 2], empty=[9])
    assert rec.adjacency()[1].tolist() == [5, 3, 4] and rec.adjacency()[9].tolist() == [2, 2, 2]


def test_template_api_is_deprecated():
    """The template belongs to the drafter: the recycler's own still works, with a warning."""
    with pytest.warns(DeprecationWarning, match="template"):
        rec = TokenRecycler(20, 3, [[0], [0, 0]])
    rec.update([4, 7], [[7, 1, 2], [9, 3, 3]])
    with pytest.warns(DeprecationWarning):
        assert rec.draft(4).tokens.tolist() == [4, 7, 9]
    with pytest.warns(DeprecationWarning):
        assert rec.template == [[0], [0, 0]] and rec.tree_size == 3
    with pytest.warns(DeprecationWarning):
        rec.set_template([[0]])
    assert rec.draft(4, [[0], [0, 0]]).tokens.tolist() == [4, 7, 9]
    assert rec.draft(4, compile_template([[0], [1]])).tokens.tolist() == [4, 7, 1]
    assert TokenRecycler(20, 3).draft(4, [[0]]).tokens.tolist() == [4, 0]  # any k without a template


def test_duplicate_tokens_last_position_wins():
    rec = TokenRecycler(10, 2)
    rec.update([3, 5, 3], [[1, 2], [4, 4], [7, 8]])
    assert rec.adjacency()[3].tolist() == [7, 8]
    assert rec.adjacency()[5].tolist() == [4, 4]
    rec.seed_from_prefill([5, 5], [[1, 1], [9, 0]])
    assert rec.adjacency()[5].tolist() == [9, 0]


def test_paper_template_exact():
    assert len(PAPER_2_2_2) == 80
    assert template_paths("2.2.2") == PAPER_2_2_2  # the reference order is canonical
    rec = TokenRecycler(100, 8)
    assert len(rec.draft(0, "2.2.2")) == 81
    levels = np.bincount([len(p) for p in PAPER_2_2_2])
    assert levels.tolist() == [0, 8, 21, 25, 15, 8, 3]


def test_nested_family():
    names = template_names()
    assert names[0] == "2.2.2" and [f"2.2.2-{n}" for n in NESTED_SIZES] == names[1:]
    order = nested_template_order()
    assert sorted(map(tuple, order)) == sorted(map(tuple, PAPER_2_2_2))
    prev: set = set()
    for n in NESTED_SIZES:
        paths = template_paths(f"2.2.2-{n}")
        assert len(paths) == n
        assert {tuple(p) for p in paths} == {tuple(p) for p in order[:n]}
        assert prev <= {tuple(p) for p in paths}  # nested
        assert all(tuple(p[:-1]) in {tuple(q) for q in paths} for p in paths if len(p) > 1)  # closed
        prev = {tuple(p) for p in paths}
    assert template_paths("2.2.2-1") == [[0]]
    assert template_parents("2.2.2-4").tolist()[0] == -1


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    rec = TokenRecycler(300, 5)
    toks = rng.integers(0, 300, 200)
    rec.update(toks, rng.integers(0, 300, (200, 5)))
    path = tmp_path / "rec.bin"
    rec.save(path)
    assert path.stat().st_size == 28 + 300 * 5 * 4
    back = TokenRecycler.load(path, vocab_size=300, k=5)
    assert np.array_equal(back.adjacency(), rec.adjacency())
    assert back.draft(int(toks[0]), "2.2.2-4").tokens.tolist() == rec.draft(int(toks[0]), "2.2.2-4").tokens.tolist()
    assert TokenRecycler.load(str(path)).k == 5


def test_load_errors(tmp_path):
    rec = TokenRecycler(50, 3)
    path = tmp_path / "rec.bin"
    rec.save(path)
    with pytest.raises(ValueError, match="vocab mismatch: expected 49152, file has 50"):
        TokenRecycler.load(path, vocab_size=49152)
    with pytest.raises(ValueError, match="k mismatch: expected 8, file has 3"):
        TokenRecycler.load(path, k=8)
    assert TokenRecycler.load(path).k == 3  # the matrix needs no template
    with pytest.raises(ValueError, match="rank 7"), pytest.warns(DeprecationWarning):
        TokenRecycler.load(path, template="2.2.2")  # the deprecated own template: "2.2.2" needs k = 8
    data = path.read_bytes()
    (tmp_path / "short.bin").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="truncated"):
        TokenRecycler.load(tmp_path / "short.bin")
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a recycler" * 3)
    with pytest.raises(ValueError, match="magic"):
        TokenRecycler.load(tmp_path / "junk.bin")
    bad = bytearray(data)
    bad[8] = 2
    (tmp_path / "v2.bin").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="version 2"):
        TokenRecycler.load(tmp_path / "v2.bin")
    with pytest.raises(OSError):
        TokenRecycler.load(tmp_path / "missing.bin")
    with pytest.raises(OSError):
        rec.save(tmp_path / "no-such-dir" / "x.bin")


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((0,), ValueError, "vocab_size: expected an int >= 1, got 0"),
        ((10, 0), ValueError, "k: expected an int >= 1, got 0"),
        ((10, 8, []), ValueError, "empty template"),
        ((10, 8, [[]]), ValueError, "path 0 is empty"),
        ((10, 8, [[0], [0]]), ValueError, "appears twice"),
        ((10, 8, [[0, 1]]), ValueError, "not subtree-closed"),
        ((10, 8, [[-1]]), ValueError, "ranks must be >= 0"),
        ((10, 2, [[0], [2]]), ValueError, "rank 2 but the recycler keeps only k = 2"),
        ((10, 8, "2.2.9"), ValueError, "unknown template"),
        ((10, 8, "2.2.2-5"), ValueError, "unknown template"),
        ((10, 8, [["a"]]), TypeError, "rank paths"),
        ((10, 8, 5), TypeError, "rank paths"),
        ((10, 8, [[0.5]]), TypeError, "rank paths"),
        ((-3,), ValueError, "vocab_size"),
    ],
)
def test_bad_construction(args, exc, match):
    import contextlib

    # A template given to the recycler (deprecated: the drafter's) is still checked.
    with pytest.raises(exc, match=match), (pytest.warns(DeprecationWarning) if len(args) > 2 else contextlib.nullcontext()):
        TokenRecycler(*args)


def test_bad_calls():
    rec = TokenRecycler(10, 2)
    with pytest.raises(IndexError, match=r"root token: 10 is out of range \[0, 10\)"):
        rec.draft(10, [[0], [1]])
    with pytest.raises(IndexError, match="out of range"):
        rec.draft(-1, [[0], [1]])
    with pytest.raises(IndexError, match="tokens: 12 is out of range"):
        rec.update([12], [[1, 2]])
    with pytest.raises(IndexError, match="topk_ids: 10 is out of range"):
        rec.update([1], [[1, 10]])
    with pytest.raises(IndexError, match="topk_ids: -1"):
        rec.update([1], [[1, -1]])
    with pytest.raises(ValueError, match=r"topk_ids: expected \[1, 2\]"):
        rec.update([1], [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"topk_ids: expected \[2, 2\]"):
        rec.update([1, 2], [[1, 2]])
    with pytest.raises(ValueError, match="2-D"):
        rec.update([1], [1, 2])
    with pytest.raises(ValueError, match="integer ids"):
        rec.update([1], [[1.5, 2.0]])
    with pytest.raises(ValueError, match="next_tokens: expected length 2"):
        rec.ranks_of([1, 2], [1])
    with pytest.raises(ValueError, match="rank 7"):
        rec.draft(0, "2.2.2")
    assert rec.adjacency().sum() == 0, "failed calls write nothing"


def test_torch_inputs_and_repr():
    import torch

    rec = tokenloom.TokenRecycler(20, 3)
    rec.update(torch.tensor([4, 7]), torch.tensor([[7, 1, 2], [9, 3, 3]]))
    assert rec.draft(torch.tensor(4), [[0], [0, 0]]).tokens.tolist() == [4, 7, 9]
    assert repr(rec) == "TokenRecycler(vocab_size=20, k=3)"
    assert rec.adjacency().dtype == np.uint32 and rec.adjacency().shape == (20, 3)
