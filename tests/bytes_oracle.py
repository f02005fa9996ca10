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


class BruteForce:
    """P(b | x) by enumerating every cover and scoring it with uncached forwards."""

    def __init__(self, model, vocab, context_ids, canonical: bool):
        self.model, self.vocab, self.ctx, self.canonical = model, vocab, list(context_ids), canonical
        self._dist = lru_cache(maxsize=None)(self._dist_uncached)

    def _dist_uncached(self, path: Tuple[int, ...]) -> np.ndarray:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([self.ctx + list(path)])).logits[0, -1].double()
        prev = path[-1] if path else -1
        pprev = path[-2] if len(path) > 1 else -1
        m = torch.from_numpy(self.vocab.index.next_mask_after(pprev, prev, self.canonical))
        return torch.softmax(logits.masked_fill(~m, float("-inf")), -1).numpy()

    def allowed(self, path: Tuple[int, ...], t: int) -> bool:
        return allowed_canonical(self.vocab, path, t) if self.canonical else True

    def cover_prob(self, cover: Tuple[int, ...]) -> float:
        p = 1.0
        for i, t in enumerate(cover):
            p *= float(self._dist(cover[:i])[t])
        return p

    def next_byte_probs(self, x: bytes) -> Tuple[np.ndarray, float]:
        tb = self.vocab.token_bytes
        special = self.vocab.special
        out = np.zeros(257)
        first = np.array([b[0] if b else -1 for b in tb] + [-1] * (self.vocab.width - len(tb)))
        covers = ref_covers(tb, x, self.allowed) if x else [()]
        total = 0.0
        for c in covers:
            p = self.cover_prob(c)
            total += p
            d = self.vocab.decode(c)
            if len(d) > len(x):
                out[d[len(x)]] += p
            else:
                q = self._dist(c)
                np.add.at(out, first[first >= 0], p * q[first >= 0])
                out[256] += p * q[: len(tb)][special].sum()
        return out / out.sum(), total


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
