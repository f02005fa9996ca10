"""Pure-Python references for the byte-level tests and benchmarks; cover enumeration and the
brute-force next-byte distribution (scoring every cover with plain, uncached forwards) have
their one home in :mod:`tokenloom.eval.bytesoracle`, which the device check also runs."""

from __future__ import annotations

from typing import List, Sequence, Tuple

from tokenloom.eval.bytesoracle import BruteForce, allowed_canonical, ref_covers

__all__ = ["BruteForce", "allowed_canonical", "expanded_tree", "plan_paths", "ref_covers", "ref_extension_plan", "ref_top_straddling"]


def expanded_tree(vocab, data: bytes, canonical: bool):
    """A CoverTree of ``data`` with every exact path expanded, and its live expanded nodes
    (the nodes that carry a distribution in ByteLM)."""
    from tokenloom._core import CoverTree

    tree = CoverTree(vocab.index, canonical)
    expanded = {0}
    tree.expand(0)
    for b in data:
        for n in tree.push(b):
            tree.expand(n)
            expanded.add(n)
    return tree, [n for n in tree.active() if n in expanded and tree.info(n)[5]]


def ref_top_straddling(vocab, tree, nodes, qs, scales, k):
    """Pure Python: every (node, token) with token bytes starting with prefix[end:] and running
    past the prefix end, q[token] > 0, scored scale * (mass of tokens starting with its bytes)."""
    prefix = tree.prefix
    byte_tokens = [(i, b) for i, b in enumerate(vocab.token_bytes) if b and not vocab.special[i]]
    out = []
    for n, q, sc in zip(nodes, qs, scales):
        rest = prefix[tree.info(n)[3] :]
        through = {}  # byte string -> mass of the tokens starting with it
        for u, bu in byte_tokens:
            for j in range(1, len(bu) + 1):
                through[bu[:j]] = through.get(bu[:j], 0.0) + float(q[u])
        for t, b in byte_tokens:
            if len(b) > len(rest) and b.startswith(rest) and q[t] > 0:
                out.append((n, t, sc * through[b]))
    out.sort(key=lambda x: (-x[2], x[0], x[1]))
    return out[:k]


def ref_extension_plan(token_bytes: Sequence[bytes], data: bytes) -> List[Tuple[int, ...]]:
    """Pure Python: the exact paths that ``CoverTree.extension_plan`` lists below the root of
    ``data`` (all covers), sorted, with the empty path (the root) first when it matters: every
    token path decoding to a prefix of ``data`` from which a cover can still be completed, i.e.
    the exact prefixes of the covers (an exact path that is no cover's prefix is never read)."""
    out = set()
    for c in ref_covers(token_bytes, data):
        for i in range(len(c) + 1):
            if i < len(c) or sum(len(token_bytes[t]) for t in c) == len(data):
                out.add(c[:i])
    return sorted(out)


def plan_paths(rows) -> List[Tuple[int, ...]]:
    """The token paths of ``extension_plan``'s rows below one node (a row after its parent)."""
    paths: List[Tuple[int, ...]] = []
    for k, (_, parent, t) in enumerate(rows):
        assert parent < k, "a row after its parent"
        paths.append((paths[parent] if parent >= 0 else ()) + (t,))
    return paths
