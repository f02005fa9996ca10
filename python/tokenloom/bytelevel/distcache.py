"""The bounded cache of token-level distributions of a ByteLM, keyed by token prefix.

A *token prefix* (the tokens after the context ids) is named by an int id: 0 is the empty
prefix, and ``key(parent_id, token)`` interns the prefix one token longer. Ids are handed out by
a counter and never reused, so an id always names one token prefix; the intern table only
exists to share ids (and so cached distributions) between cover states and look-ahead rows.

Both tables are LRU-bounded, and evicted together, so memory stays bounded in a long-lived
process:

- distributions: at most ``size`` (each float32 [width] where the model runs: 192 KiB at a 49k
  vocabulary), either a ready distribution or the raw logits of a look-ahead row
  (:class:`RawLogits`, masked and softmaxed only when a path uses it);
- interned prefixes: at most ``KEYS_PER_DIST * max(size, 1)``. Evicting a distribution drops
  its prefix's intern entry, and evicting an intern entry drops its distribution. An evicted
  id may still be held by a cover state: it keeps naming the same prefix, only sharing is lost
  (the next ``key()`` of that prefix hands out a new id).

Exactness never depends on the cache: a miss means one more model row, never another number.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from typing import Any, Dict, Optional, Set, Tuple

import numpy as np

__all__ = ["DistCache", "KEYS_PER_DIST", "RawLogits", "masked_softmax", "softmax"]

#: Interned token prefixes kept per cached distribution (a cover state interns every node,
#: most of which never get a distribution of their own).
KEYS_PER_DIST = 16


class RawLogits:
    """Logits of a look-ahead row whose distribution is not needed yet: masking and softmax
    wait until a path uses it (most look-ahead rows are never used, and the allowed-token mask
    of a new previous token costs milliseconds).

    Attributes:
        logits: np.ndarray[float32] [width] (a copy of the forward's row).
        prev, pprev: the row's last and second-to-last tokens (-1: none), for the mask.
    """

    __slots__ = ("logits", "prev", "pprev")

    def __init__(self, logits: Any, prev: int, pprev: int) -> None:
        self.logits, self.prev, self.pprev = logits, prev, pprev


def softmax(row: Any) -> np.ndarray:
    """Softmax (fp32, max-shifted) of a float32 row, np.ndarray or CPU tensor [width].

    NumPy rather than torch: these are single-row operations between model forwards, and on a
    loaded machine torch's intra-op thread pool made each one cost milliseconds."""
    x = np.array(row, dtype=np.float32)
    x -= x.max()
    np.exp(x, out=x)
    x /= x.sum(dtype=np.float32)
    return x


def masked_softmax(vocab: Any, canonical: bool, logits_row: Any, prev: int, pprev: int = -1) -> np.ndarray:
    """``Q(. | path)`` from a logits row of a path ending ``[.., pprev, prev]``: the softmax
    (fp32, max-shifted) of the row plus the vocabulary's allowed-next-token bias.

    Args:
        vocab: the ``ByteVocab`` (its ``next_token_bias`` masks are cached and shared).
        canonical: the mode of the mask.
        logits_row: float32 [width] on the host (np.ndarray or torch tensor).
        prev, pprev: the path's last two tokens (-1: none).

    Returns:
        np.ndarray[float32], shape [width], sums to 1 over the allowed rows.
    """
    return softmax(np.asarray(logits_row, dtype=np.float32) + vocab.next_token_bias(prev, canonical, pprev))


class DistCache:
    """Token-prefix ids and their distributions, both LRU-bounded (see the module docstring).

    Args:
        size: distributions kept (>= 0).

    Raises:
        ValueError: size is not an int >= 0.
    """

    def __init__(self, size: int) -> None:
        try:
            size = operator.index(size)
        except TypeError:
            size = -1
        if isinstance(size, bool) or size < 0:
            raise ValueError(f"cache_size must be an int >= 0, got {size!r}")
        self.size = size
        self.max_keys = KEYS_PER_DIST * max(size, 1)
        self._dists: "OrderedDict[int, Any]" = OrderedDict()  # id -> np.ndarray | RawLogits
        self._ids: "OrderedDict[Tuple[int, int], int]" = OrderedDict()  # (parent id, token) -> id
        self._prefix: Dict[int, Tuple[int, int]] = {}  # id -> (parent id, token)
        self._lookahead: Set[int] = set()  # ids cached by a look-ahead row, not used yet
        self._next = 1

    def key(self, parent: int, token: int) -> int:
        """The id of token prefix ``parent + [token]`` (interned; a new id when unknown)."""
        pair = (parent, token)
        k = self._ids.get(pair)
        if k is not None:
            self._ids.move_to_end(pair)
            return k
        k = self._next
        self._next += 1
        self._ids[pair] = k
        self._prefix[k] = pair
        while len(self._ids) > self.max_keys:
            _, old = self._ids.popitem(last=False)
            del self._prefix[old]
            self._drop_dist(old)
        return k

    def __contains__(self, key: int) -> bool:
        return key in self._dists

    def __len__(self) -> int:
        return len(self._dists)

    def get(self, key: int) -> Any:
        """The cached entry of ``key`` (np.ndarray or :class:`RawLogits`), refreshed; None."""
        v = self._dists.get(key)
        if v is not None:
            self._touch(key)
        return v

    def peek(self, key: int) -> Any:
        """The cached entry of ``key`` without refreshing it; None."""
        return self._dists.get(key)

    def put(self, key: int, value: Any, lookahead: bool = False) -> None:
        """Cache ``value`` (np.ndarray float32 [width] or :class:`RawLogits`) for ``key`` (a
        new key becomes the most recent; an existing one keeps its place); ``lookahead``:
        computed ahead of need (see :meth:`take_lookahead`)."""
        self._dists[key] = value
        pair = self._prefix.get(key)
        if pair is not None:
            self._ids.move_to_end(pair)
        if lookahead:
            self._lookahead.add(key)
        while len(self._dists) > self.size:
            old, _ = self._dists.popitem(last=False)
            self._lookahead.discard(old)
            pair = self._prefix.pop(old, None)
            if pair is not None:
                del self._ids[pair]

    def take_lookahead(self, key: int) -> bool:
        """True (once) when ``key``'s entry came from a look-ahead row (a look-ahead hit)."""
        if key in self._lookahead:
            self._lookahead.discard(key)
            return True
        return False

    def clear(self) -> None:
        """Forget every distribution and every id (ids are still never reused)."""
        self._dists.clear()
        self._ids.clear()
        self._prefix.clear()
        self._lookahead.clear()

    def sizes(self) -> Dict[str, int]:
        """Entries per table: ``distributions``, ``prefix_ids``, ``lookahead_keys``."""
        return {"distributions": len(self._dists), "prefix_ids": len(self._ids), "lookahead_keys": len(self._lookahead)}

    def _touch(self, key: int) -> None:
        self._dists.move_to_end(key)
        pair = self._prefix.get(key)
        if pair is not None:
            self._ids.move_to_end(pair)

    def _drop_dist(self, key: int) -> None:
        if self._dists.pop(key, None) is not None:
            self._lookahead.discard(key)
