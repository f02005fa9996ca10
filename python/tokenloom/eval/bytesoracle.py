"""The brute-force reference of :class:`tokenloom.ByteLM`, shared by the device check
(:mod:`.devicecheck`) and the tests: every cover of a byte string enumerated, canonical mode
spelled out pair by pair, and each cover scored with plain (uncached) forwards."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["BruteForce", "allowed_canonical", "ref_covers"]


def ref_covers(token_bytes: Sequence[bytes], data: bytes, allowed: Optional[Callable[..., bool]] = None) -> List[Tuple[int, ...]]:
    """Every cover of ``data``: exact path + a last token starting with the rest.
    ``allowed(path, t)`` filters tokens (``path``: the tokens before ``t``); None = all covers."""
    by_first: Dict[int, List[int]] = {}
    for t, b in enumerate(token_bytes):
        if b:
            by_first.setdefault(b[0], []).append(t)
    ok = allowed or (lambda path, t: True)
    if not data:
        return [()]
    out: List[Tuple[int, ...]] = []

    def walk(j: int, path: Tuple[int, ...]) -> None:
        rest = data[j:]
        for t in by_first.get(rest[0], []):
            b = token_bytes[t]
            if not ok(path, t):
                continue
            if b.startswith(rest):
                out.append(path + (t,))
            elif rest.startswith(b):
                walk(j + len(b), path + (t,))

    walk(0, ())
    return out


def allowed_canonical(vocab: Any, path: Tuple[int, ...], t: int) -> bool:
    """Canonical mode, spelled out: ``t`` may start the text (``first_ok``) or follow the last
    token (``valid_pair``), and the pair before it must stay valid now that its next token is
    known to start with ``t``'s bytes (``valid_pair_before`` / ``first_ok_before``, the
    pre-tokenizer's look-ahead)."""
    ix = vocab.index
    if not path:
        return ix.first_ok(t)
    if not ix.valid_pair(path[-1], t):
        return False
    follow = vocab.token_bytes[t]
    if len(path) == 1:
        return ix.first_ok_before(path[-1], follow)
    return ix.valid_pair_before(path[-2], path[-1], follow)


class BruteForce:
    """P(b | x) by enumerating every cover and scoring it with uncached forwards."""

    def __init__(self, model: Any, vocab: Any, context_ids: Sequence[int], canonical: bool) -> None:
        self.model, self.vocab, self.ctx, self.canonical = model, vocab, list(context_ids), canonical
        self._dist = lru_cache(maxsize=None)(self._dist_uncached)

    def _dist_uncached(self, path: Tuple[int, ...]) -> np.ndarray:
        import torch

        dev = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(torch.tensor([self.ctx + list(path)], device=dev)).logits[0, -1].double()
        prev = path[-1] if path else -1
        pprev = path[-2] if len(path) > 1 else -1
        m = torch.from_numpy(self.vocab.index.next_mask_after(pprev, prev, self.canonical)).to(dev)
        return torch.softmax(logits.masked_fill(~m, float("-inf")), -1).cpu().numpy()

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
