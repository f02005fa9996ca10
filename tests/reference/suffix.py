"""Pure-Python reference of the suffix trie (``tokenloom.spec.suffix.store``) for its parity
tests and benchmarks: substring counts and the ``speculate`` rule, written plainly, and the
check of a kernel's draft against them; the merged drafter's row cap (``cap_rows``); and the
merged drafter's per-step tree (``_core.grow_merged``) as it was grown in Python, one builder
round at a time (:func:`grow_reference`)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

from tokenloom import _core
from tokenloom.spec.merged.calibration import CANDIDATE_CLASSES, RECYCLE_DEPTHS
from tokenloom.spec.merged.drafter import cost_curve


def ref_counts(docs, depth):
    """Occurrences of every substring of at most ``depth`` tokens."""
    c = {}
    for d in docs:
        for s in range(len(d)):
            for e in range(s + 1, min(len(d), s + depth) + 1):
                c[tuple(d[s:e])] = c.get(tuple(d[s:e]), 0) + 1
    return c


def ref_speculate(counts, depth, context, max_match):
    """The rule of ``speculate``, written plainly: the longest suffix of ``context`` (<=
    max_match, < depth tokens) with a stored continuation, and every continuation path below it.

    Returns:
        (paths, match length): ``paths`` maps each continuation path (a tuple of tokens) to
        (path probability, P(its last token | the path before), the siblings' total count);
        ({}, 0) without a match.
    """
    c = counts
    vocab = sorted({k[0] for k in c})
    top = min(max_match, len(context), depth - 1)
    for m in range(top, 0, -1):
        s = tuple(context[len(context) - m:])
        if any(s + (t,) in c for t in vocab):
            allp = {}
            frontier = [((), 1.0)]
            while frontier:
                path, p = frontier.pop()
                total = sum(c.get(s + path + (t,), 0) for t in vocab)
                for t in vocab:
                    n = c.get(s + path + (t,), 0)
                    if n:
                        allp[path + (t,)] = (p * n / total, n / total, total)
                        frontier.append((path + (t,), p * n / total))
            return allp, m
    return {}, 0


def paths_of(tokens, parents):
    """The token path of every node of a draft (``parents``: -1 below the root)."""
    paths = []
    for t, p in zip(tokens.tolist(), parents.tolist()):
        paths.append((paths[p] if p >= 0 else ()) + (t,))
    return paths


def check_against_reference(counts, depth, context, max_match, max_nodes, got, ref=None):
    """Assert that ``got`` (a ``speculate`` result) is the reference's draft: the same match
    length, min(max_nodes, all continuations) nodes, each with the reference's probability and
    support, parents before children, and the best path probabilities (ties may pick other
    nodes of equal probability). ``ref``: ``ref_speculate``'s result when already computed."""
    toks, pars, probs, support, m = got
    allp, ref_m = ref if ref is not None else ref_speculate(counts, depth, context, max_match)
    assert m == ref_m
    paths = paths_of(toks, pars)
    assert len(paths) == len(set(paths)) == min(max_nodes, len(allp))
    for path, q, n in zip(paths, probs.tolist(), support.tolist()):
        _, want_q, want_n = allp[path]
        assert n == want_n and q == pytest.approx(want_q)
    best = sorted((v[0] for v in allp.values()), reverse=True)
    assert sorted((allp[p][0] for p in paths), reverse=True) == pytest.approx(best[: len(paths)])
    assert all(pars[i] < i for i in range(len(pars)))
    return paths


def cap_reference(row):
    """One row, element by element: unchanged when it sums to <= 1; else the n candidates tied
    at the largest estimate keep min(max, 1/n) each and the others share the rest in proportion."""
    total = sum(row)
    if total <= 1.0:
        return list(row)
    best = max(row)
    n = sum(1 for x in row if x == best)
    keep = min(best, 1.0 / n)
    others = total - n * best
    room = 1.0 - n * keep
    factor = room / others if others > room else 1.0
    return [keep if x == best else x * factor for x in row]


def cap_rows_reference(probs):
    """The row cap in numpy, the form the Rust core follows float for float (its sums in
    numpy's order): each row of ``probs`` (float [rows, width] or [width]) capped as
    :func:`cap_reference`, vectorised."""
    p = np.asarray(probs, dtype=np.float64)
    flat = p.reshape(1, -1) if p.ndim == 1 else p
    total = flat.sum(axis=1, keepdims=True)
    if not (total > 1.0).any():
        return p.copy()
    best = flat.max(axis=1, keepdims=True)
    is_best = flat == best
    n = is_best.sum(axis=1, keepdims=True)
    keep = np.minimum(best, 1.0 / n)
    rest, room = total - n * best, 1.0 - n * keep
    factor = np.where(rest > room, room / np.maximum(rest, 1e-300), 1.0)
    out = np.where(total > 1.0, np.where(is_best, keep, flat * factor), flat)
    return out.reshape(p.shape)


# --- the merged drafter's tree of one step, grown in Python ------------------------------------


def grow_core(d, cost=None, token_cost=None):
    """``_core.grow_merged`` on the drafter's stores with a fresh builder of its sizes (cut
    for ``cost`` or to a chain for ``token_cost`` when given)."""
    b = _core.DynamicTreeBuilder(d.budget, d.max_depth, k=d.children)
    tokens, seconds = cost_curve(cost) if cost is not None else (None, None)
    return _core.grow_merged(
        b, d.seq[-1], np.array(d.seq[-d.max_match:], dtype=np.int64), d.calibration.estimates(), CANDIDATE_CLASSES,
        d.index.core, None if d.cache is None else d.cache.core, None if d.recycler is None else d.recycler.core,
        max_match=d.max_match, max_nodes=d.budget, cost_tokens=tokens, cost_seconds=seconds,
        token_cost=token_cost,
    )


def grow_reference(d, root):
    """The tree ``MergedDrafter.propose`` grows before any cut (chain / auto), for the drafter
    ``d`` in its current state, with a fresh builder of its sizes: the trie union of the suffix
    continuations, grown one frontier per round, each row the suffix children of the node's
    trie node with the recycled candidates of its token, ``1 - prod(1 - p)`` per token, capped.

    Returns:
        dict: tokens, parents, depths, scores, node_ids (the builder's tree), rows {builder id:
        (tokens, classes per token)} of every row that offered something, matched [request,
        cache].
    """
    kids, cls, matched = _suffix_trie(d)
    b = _core.DynamicTreeBuilder(d.budget, d.max_depth, k=d.children)
    b.reset(int(root))
    est = d.calibration.estimates()
    upper = np.triu(np.ones((d.k, d.k), dtype=bool), 1)
    sid: Dict[int, int] = {0: 0}
    rows: Dict[int, Tuple[List[int], List[List[int]]]] = {}
    while not b.done:
        ids, toks, pars, deps = b.frontier()
        tid, tp, classes = _recycled_rows(d, upper, toks, deps, est) if d.recycler is not None else (None, None, None)
        bids = ids.tolist()
        suffix_rows = {}
        for r, bid in enumerate(bids):
            s = sid.get(bid)
            if s is None:
                ps = sid.get(int(pars[r]), -1)
                s = kids[ps].get(int(toks[r]), -1) if ps >= 0 else -1
                sid[bid] = s
            if s >= 0 and cls[s]:
                suffix_rows[r] = _merge_row(cls[s], tid, classes, r, est)
            elif tid is not None:
                keep = tp[r] > 0.0
                rows[bid] = (tid[r][keep].tolist(), [[c] for c in classes[r][keep].tolist()])
        if suffix_rows:
            width = max([len(t) for t, _, _ in suffix_rows.values()] + [0 if tid is None else tid.shape[1]])
            n = len(bids)
            new_ids = np.zeros((n, width), dtype=np.int64)
            new_p = np.zeros((n, width), dtype=np.float64)
            if tid is not None:
                new_ids[:, : tid.shape[1]] = tid
                new_p[:, : tid.shape[1]] = tp
            for r, (tl, pl, cl) in suffix_rows.items():
                new_ids[r] = 0
                new_p[r] = 0.0
                new_ids[r, : len(tl)] = tl
                new_p[r, : len(pl)] = pl
                rows[bids[r]] = (tl, cl)
            tid, tp = new_ids, cap_rows_reference(new_p)  # the merged rows (recycled-only rows are capped already)
        elif tid is None:
            tid = np.zeros((len(bids), 1), dtype=np.int64)
            tp = np.zeros((len(bids), 1), dtype=np.float64)
        b.expand(ids, tid, tp)
    tokens, parents, depths, scores, _rows, node_ids = b.tree()
    rows = {bid: row for bid, row in rows.items() if row[0]}
    return {"tokens": tokens, "parents": parents, "depths": depths, "scores": scores, "node_ids": node_ids,
            "rows": rows, "matched": matched}


def _suffix_trie(d):
    """``kids[n]`` token -> child and ``cls[n]`` token -> calibration classes of that child (one
    per source offering it) of the trie union of this step's suffix continuations."""
    kids: List[Dict[int, int]] = [{}]
    cls: List[Dict[int, List[int]]] = [{}]
    matched = [False, False]
    ctx = np.asarray(d.seq[-d.max_match:], dtype=np.int64)
    sources = [(0, d.index)] + ([(1, d.cache)] if d.cache is not None else [])
    cal = d.calibration
    for src, store in sources:
        toks, pars, probs, support, m = store.speculate(ctx, d.max_match, d.budget)
        if not m:
            continue
        matched[src] = True
        local: List[int] = []
        depth: List[int] = []
        for i, (t, p) in enumerate(zip(toks.tolist(), pars.tolist())):
            mp = 0 if p < 0 else local[p]
            dd = 1 if p < 0 else depth[p] + 1
            child = kids[mp].get(t)
            if child is None:
                child = kids[mp][t] = len(kids)
                kids.append({})
                cls.append({})
            cls[mp].setdefault(t, []).append(cal.suffix_class(src, m + dd - 1, float(probs[i]), int(support[i])))
            local.append(child)
            depth.append(dd)
    return kids, cls, matched


def _recycled_rows(d, upper, toks, deps, est):
    """ids int64 [F, k], calibrated probabilities [F, k] (0 for a repeated token and for rows
    never written), capped, and classes of the recycled candidates of the frontier tokens."""
    rows = d.recycler.rows(toks).astype(np.int64)
    ranks = np.arange(d.k)
    classes = d.calibration.n_suffix + ranks[None, :] * RECYCLE_DEPTHS + np.minimum(deps, RECYCLE_DEPTHS - 1)[:, None]
    probs = est[classes]
    dup = ((rows[:, :, None] == rows[:, None, :]) & upper).any(axis=1)  # a token's first rank only
    probs[dup] = 0.0
    probs[~rows.any(axis=1)] = 0.0  # an all-zero row was never written
    return rows, cap_rows_reference(probs), classes


def _merge_row(suffix, tid: Optional[np.ndarray], classes: Optional[np.ndarray], r: int, est: np.ndarray):
    """Tokens, probabilities (``1 - prod(1 - p)`` over the sources) and classes of one row
    offering suffix candidates and the recycled ones of row ``r``."""
    cand: Dict[int, List[int]] = {t: list(c) for t, c in suffix.items()}
    if tid is not None and classes is not None and tid[r].any():
        first = int(classes[r, 0])  # recycled classes of this row are >= it, suffix ones below
        for t, c in zip(tid[r].tolist(), classes[r].tolist()):
            lst = cand.setdefault(t, [])
            if not lst or lst[-1] < first:  # a token's first rank only
                lst.append(c)
    tl = list(cand)
    pl = []
    for t in tl:
        miss = 1.0
        for c in cand[t]:
            miss *= 1.0 - est[c]
        pl.append(1.0 - miss)
    return tl, pl, [cand[t] for t in tl]


def best_nodes_reference(scores, depths, cost):
    """``best_nodes`` written plainly: the draft nodes by score (ties: shallower, then lower
    index), the count N maximising ``(1 + sum of the N best) / cost(N + 1)``, root included."""
    t = len(scores)
    order = sorted(range(1, t), key=lambda i: (-scores[i], depths[i], i))
    cum = np.concatenate([[0.0], np.cumsum([scores[i] for i in order])])
    seconds = np.interp(np.arange(1, t + 1), cost.tokens, cost.seconds)
    n = int(np.argmax((1.0 + cum) / seconds))
    return sorted([0] + order[:n])


def top_path_reference(scores, parents, token_cost=0.0):
    """``top_path`` written plainly: the root-to-node path with the largest sum of
    ``score - token_cost`` (ties: the shallower, then the lower index), root first."""
    t = len(scores)
    gain = [0.0] * t
    depth = [0] * t
    for i in range(1, t):
        gain[i] = gain[int(parents[i])] + float(scores[i]) - token_cost
        depth[i] = depth[int(parents[i])] + 1
    best = min(range(t), key=lambda i: (-gain[i], depth[i], i))
    path = [best]
    while path[-1] != 0:
        path.append(int(parents[path[-1]]))
    return path[::-1]
