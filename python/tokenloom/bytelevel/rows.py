"""Where a ByteLM's token distributions live, and the few numbers the cover kernels read off them.

A distribution ``Q(. | path)`` is a float32 row [width]. The cover code never reads a row in
full; it asks for

- ``Q(t | path)`` of the tokens that extend a path (:meth:`probs_at`);
- next-byte masses: per exact path, the mass of the tokens that start with the bytes after the
  path's end followed by byte ``b`` (256 sums), of those ending exactly there, and of the
  end-of-text tokens, weighted by the path's share of the prefix mass (:meth:`masses`,
  :meth:`continuation`);
- the heaviest straddling tokens for look-ahead rows (:meth:`top_straddling`) and a first-byte
  marginal (:meth:`first_byte_masses`).

:class:`HostRows` keeps rows as numpy arrays on the host and answers with the Rust cover
kernels (a CPU model). :class:`DeviceRows` keeps them as tensors where the model runs (an
accelerator) and answers with torch ops over the vocabulary in trie order (:class:`TrieOrder`:
every trie node's tokens are one contiguous range, so a byte's mass is a difference of two
prefix sums); only the answers cross to the host: O(paths x bytes) numbers per call, never a
vocabulary row. :func:`rows_for` picks one through :func:`tokenloom.device.is_accelerator`.
"""

from __future__ import annotations

import bisect
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from tokenloom.bytelevel.distcache import masked_softmax, softmax
from tokenloom.device import is_accelerator

__all__ = ["DeviceRows", "HostRows", "TrieOrder", "rows_for"]

#: Distinct byte strings whose trie bounds :class:`TrieOrder` keeps.
BOUNDS_CACHE = 4096
#: Allowed-next-token masks :class:`DeviceRows` keeps on the device.
DEVICE_MASKS = 64

Masses = Tuple[np.ndarray, float, float]


def _numpy(row: Any) -> Any:
    """A host tensor's numpy view (no copy); numpy arrays as they are."""
    return row.numpy() if hasattr(row, "detach") else row


def rows_for(device: Any, vocab: Any, canonical: bool) -> "HostRows":
    """:class:`DeviceRows` for a model on an accelerator (or with the accelerator branches
    forced), else :class:`HostRows`."""
    return DeviceRows(vocab, canonical, device) if is_accelerator(device) else HostRows(vocab, canonical)


class HostRows:
    """Rows as np.ndarray float32 [width] on the host; the Rust cover kernels read them.

    Args:
        vocab: the ``ByteVocab``. canonical: the mode of the allowed-token masks.
    """

    def __init__(self, vocab: Any, canonical: bool) -> None:
        self.vocab = vocab
        self.canonical = canonical
        self.special = np.flatnonzero(vocab.special)

    def dist(self, logits_row: Any, prev: int, pprev: int = -1) -> Any:
        """``Q(. | path)`` from the logits row of a path ending ``[.., pprev, prev]``."""
        return masked_softmax(self.vocab, self.canonical, _numpy(logits_row), prev, pprev)

    def raw(self, logits: Any, i: int) -> Any:
        """A copy of row ``i`` of a forward's logits [q, width], kept for later."""
        return logits[i].numpy().copy()

    def softmax(self, logits_row: Any) -> Any:
        """The unmasked softmax of a logits row (float32)."""
        return softmax(_numpy(logits_row))

    def probs_at(self, pairs: Sequence[Tuple[Any, int]]) -> List[float]:
        """``q[t]`` for each ``(q, t)`` (0.0 for a dead, empty ``q``)."""
        return [float(q[t]) if len(q) else 0.0 for q, t in pairs]

    def masses(
        self, tree: Any, nodes: Sequence[int], qs: Sequence[Any], scales: Sequence[float], rests: Sequence[bytes],
        at_end: Sequence[bool],
    ) -> Masses:
        """Next-byte masses of live exact paths.

        Args:
            tree: the ``CoverTree``; nodes, qs, scales: the paths, their rows and weights;
            rests: the prefix bytes after each path's end; at_end: whether it ends at the prefix end.

        Returns:
            (bytes float64 [256], exact, eos): ``sum_i scales[i] * mass`` of the tokens starting
            with ``rests[i] + b``, of those equal to ``rests[i]``, and of the end-of-text tokens
            of paths at the end.
        """
        bm = tree.byte_masses(list(nodes), list(qs), list(scales))
        eos = sum(s * float(q[self.special].astype(np.float64).sum()) for q, s, e in zip(qs, scales, at_end) if e)
        return bm[:256], float(bm[256]), float(eos)

    def continuation(self, data: bytes, q: Any) -> np.ndarray:
        """float64 [257]: the mass of the tokens starting with ``data + b``, then of those equal to ``data``."""
        return self.vocab.index.continuation_masses(data, q)  # type: ignore[no-any-return]

    def top_straddling(self, tree: Any, nodes: Sequence[int], qs: Sequence[Any], scales: Sequence[float], rests: Sequence[bytes], k: int) -> List[Tuple[int, int, float]]:
        """The ``k`` heaviest ``(node, token, score)`` straddling extensions (``CoverTree.top_straddling``)."""
        return tree.top_straddling(list(nodes), list(qs), list(scales), k)  # type: ignore[no-any-return]

    def first_byte_masses(self, q: Any) -> np.ndarray:
        """float64 [256]: the mass of the tokens starting with each byte."""
        return np.bincount(self.vocab.first_bytes, weights=q, minlength=257)[:256]


class TrieOrder:
    """The byte tokens in the cover trie's order (by bytes, then id; special and byte-less
    tokens left out), as the Rust ``TokenTrie`` sorts them: the tokens starting with any byte
    string are one contiguous range.

    Attributes:
        perm: int64 [M], the token ids in trie order.
        group_lo: int64 [M], per position, the first position of a token with the same bytes.
        subtree_hi: int64 [M], per position, the end of the range of tokens starting with its bytes.
    """

    def __init__(self, token_bytes: Sequence[bytes], special: np.ndarray) -> None:
        ids = [i for i, b in enumerate(token_bytes) if b and not special[i]]
        ids.sort(key=lambda i: (token_bytes[i], i))
        self.keys = [token_bytes[i] for i in ids]
        self.perm = np.asarray(ids, dtype=np.int64)
        self._pad = b"\xff" * (max((len(k) for k in self.keys), default=0) + 1)
        self.group_lo = np.fromiter((bisect.bisect_left(self.keys, k) for k in self.keys), np.int64, len(self.keys))
        self.subtree_hi = np.fromiter(
            (bisect.bisect_left(self.keys, k + self._pad, lo) for lo, k in enumerate(self.keys)), np.int64, len(self.keys)
        )
        self._bounds: "OrderedDict[bytes, np.ndarray]" = OrderedDict()

    def bounds(self, data: bytes) -> np.ndarray:
        """int64 [258]: ``[lo, b_0, .., b_255, hi]``: the tokens starting with ``data`` are
        positions ``[lo, hi)``; those equal to ``data`` ``[lo, b_0)``; those continuing with byte
        ``b`` ``[b_b, b_(b+1))`` (``b_256 = hi``)."""
        out = self._bounds.get(data)
        if out is not None:
            self._bounds.move_to_end(data)
            return out
        keys = self.keys
        lo = bisect.bisect_left(keys, data)
        hi = bisect.bisect_left(keys, data + self._pad, lo)
        out = np.empty(258, dtype=np.int64)
        out[0], out[257] = lo, hi
        for b in range(256):
            out[b + 1] = bisect.bisect_left(keys, data + bytes((b,)), lo, hi)
        self._bounds[data] = out
        if len(self._bounds) > BOUNDS_CACHE:
            self._bounds.popitem(last=False)
        return out


_ORDERS: "weakref.WeakKeyDictionary[Any, TrieOrder]" = weakref.WeakKeyDictionary()


def trie_order(vocab: Any) -> TrieOrder:
    """The vocabulary's :class:`TrieOrder` (built once per ``ByteVocab``)."""
    order = _ORDERS.get(vocab)
    if order is None:
        order = _ORDERS[vocab] = TrieOrder(vocab.token_bytes, vocab.special)
    return order


class DeviceRows(HostRows):
    """Rows as torch float32 tensors [width] on ``device``; every answer is computed there and
    only the answer crosses to the host (see the module docstring).

    Args:
        vocab, canonical: as :class:`HostRows`. device: where the model runs.
    """

    def __init__(self, vocab: Any, canonical: bool, device: Any) -> None:
        import torch

        super().__init__(vocab, canonical)
        self.device = torch.device(device)
        self.order = trie_order(vocab)
        dev = self.device
        self._perm = torch.from_numpy(self.order.perm).to(dev)
        self._group_lo = torch.from_numpy(self.order.group_lo).to(dev)
        self._subtree_hi = torch.from_numpy(self.order.subtree_hi).to(dev)
        self._special = torch.from_numpy(self.special).to(dev)
        self._first = torch.from_numpy(vocab.first_bytes).to(dev)
        self._masks: "OrderedDict[Tuple[int, int], Any]" = OrderedDict()

    def _bias(self, prev: int, pprev: int) -> Any:
        import torch

        key = (int(prev), int(pprev))
        m = self._masks.get(key)
        if m is None:
            m = torch.from_numpy(self.vocab.next_token_bias(prev, self.canonical, pprev)).to(self.device)
            self._masks[key] = m
            if len(self._masks) > DEVICE_MASKS:
                self._masks.popitem(last=False)
        else:
            self._masks.move_to_end(key)
        return m

    def dist(self, logits_row: Any, prev: int, pprev: int = -1) -> Any:
        import torch

        return torch.softmax(logits_row.float() + self._bias(prev, pprev), -1)

    def raw(self, logits: Any, i: int) -> Any:
        return logits[i].clone()

    def softmax(self, logits_row: Any) -> Any:
        import torch

        return torch.softmax(logits_row.float(), -1)

    def probs_at(self, pairs: Sequence[Tuple[Any, int]]) -> List[float]:
        import torch

        groups: Dict[int, Tuple[Any, List[int], List[int]]] = {}
        for j, (q, t) in enumerate(pairs):
            if len(q):
                groups.setdefault(id(q), (q, [], []))[1].append(int(t))
                groups[id(q)][2].append(j)
        out = [0.0] * len(pairs)
        if not groups:
            return out
        picked = torch.cat([q[torch.tensor(ts, dtype=torch.long, device=self.device)] for q, ts, _ in groups.values()])
        vals = picked.double().cpu().numpy().tolist()  # one number per pair crosses
        where = [j for _, _, js in groups.values() for j in js]
        for j, v in zip(where, vals):
            out[j] = v
        return out

    def _prefix_sums(self, qs: Sequence[Any]) -> Any:
        """float64 [N, M + 1]: per row, the prefix sums of its tokens in trie order."""
        import torch

        x = torch.stack(list(qs))[:, self._perm].double().cumsum(-1)
        return torch.nn.functional.pad(x, (1, 0))

    def _range_masses(self, csum: Any, rests: Sequence[bytes]) -> Any:
        """float64 [N, 257]: per row, the mass of the tokens equal to ``rests[i]``, then of those
        continuing with each byte."""
        import torch

        b = torch.from_numpy(np.stack([self.order.bounds(r) for r in rests])).to(self.device)
        g = csum.gather(1, b)
        return g[:, 1:] - g[:, :-1]

    def masses(
        self, tree: Any, nodes: Sequence[int], qs: Sequence[Any], scales: Sequence[float], rests: Sequence[bytes],
        at_end: Sequence[bool],
    ) -> Masses:
        import torch

        d = self._range_masses(self._prefix_sums(qs), rests)
        sc = torch.tensor(list(scales), dtype=torch.float64, device=self.device)
        end = torch.tensor(list(at_end), dtype=torch.bool, device=self.device)
        eos = torch.stack(list(qs))[:, self._special].double().sum(-1)
        out = torch.cat([(sc[:, None] * d).sum(0), (sc * eos * end).sum().view(1)])
        host = out.cpu().numpy()  # 258 numbers cross, whatever the vocabulary and the paths
        return host[1:257].copy(), float(host[0]), float(host[257])

    def continuation(self, data: bytes, q: Any) -> np.ndarray:
        d = self._range_masses(self._prefix_sums([q]), [data])[0].cpu().numpy()  # 257 numbers
        return np.append(d[1:], d[0])

    def top_straddling(self, tree: Any, nodes: Sequence[int], qs: Sequence[Any], scales: Sequence[float], rests: Sequence[bytes], k: int) -> List[Tuple[int, int, float]]:
        import torch

        live = [i for i, s in enumerate(scales) if s > 0]
        if k <= 0 or not live:
            return []
        csum = self._prefix_sums([qs[i] for i in live])
        m = self._perm.numel()
        mass = csum[:, self._subtree_hi] - csum[:, self._group_lo]
        sc = torch.tensor([scales[i] for i in live], dtype=torch.float64, device=self.device)
        score = sc[:, None] * mass
        b = np.stack([self.order.bounds(rests[i]) for i in live])
        pos = torch.arange(m, device=self.device)
        first = torch.from_numpy(b[:, 1]).to(self.device)[:, None]
        hi = torch.from_numpy(b[:, 257]).to(self.device)[:, None]
        own = torch.stack([qs[i] for i in live])[:, self._perm] > 0
        ok = (pos >= first) & (pos < hi) & own & (score > 0)
        score = torch.where(ok, score, torch.full_like(score, -1.0))
        top = score.reshape(-1).topk(min(k, score.numel()))
        vals = top.values.cpu().numpy()  # 2k numbers cross
        idx = top.indices.cpu().numpy()
        out = [
            (int(nodes[live[j // m]]), int(self.order.perm[j % m]), float(v))
            for v, j in zip(vals.tolist(), idx.tolist())
            if v > 0
        ]
        out.sort(key=lambda x: (-x[2], x[0], x[1]))
        return out

    def first_byte_masses(self, q: Any) -> np.ndarray:
        import torch

        fb = torch.zeros(257, dtype=torch.float64, device=self.device).scatter_add_(0, self._first, q.double())
        return fb[:256].cpu().numpy()  # 256 numbers cross
