"""Pure-Python reference of the suffix trie (``tokenloom.spec.suffix.store``) for its parity
tests and benchmarks: substring counts and the ``speculate`` rule, written plainly, and the
check of a kernel's draft against them; and the merged drafter's row cap (``cap_rows``)."""

from __future__ import annotations

import pytest


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
