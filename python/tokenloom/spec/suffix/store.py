"""Suffix tries over token ids (thin wrappers over the Rust ``_core.SuffixIndex`` /
``_core.SuffixCache``).

* :class:`SuffixIndex` — one growing sequence (a request's prompt and output): every substring
  of at most ``max_depth`` tokens with its occurrence count; appending a token is O(max_depth).
* :class:`SuffixCache` — earlier requests' outputs in one trie, bounded by ``max_bytes`` (and
  optionally ``max_requests``); the oldest sequences are evicted first, and a sequence too
  large for the cap on its own keeps as many of its last tokens as fit. Thread-safe: one cache
  may serve several requests. ``to_bytes`` / ``from_bytes`` carry it across processes; the
  per-model default cache (:func:`default_suffix_cache`) is persisted through
  :mod:`tokenloom.spec.persist`. A cache made with ``vocab_size`` holds only ids below it
  (inserted or loaded); :meth:`SuffixCache.check_vocab` is the check a drafter runs when it
  binds a cache to a model.

``speculate(context)`` finds the longest suffix of ``context`` (at most ``max_match`` tokens,
``max_match`` in [1, 256]) that occurred before with a continuation and returns at most
``max_nodes`` (in [1, 2**24]) nodes of the continuation tree, best first by path probability,
``P(child) = count(child) / sum of its siblings' counts``::

    tokens int64 [m], parents int64 [m] (-1: below the root = context[-1]), probs float64 [m],
    support int64 [m] (the siblings' total count), match_len int (0: no match, m == 0)
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array
from tokenloom.spec.persist import PerModelStates

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DEFAULT_MAX_DEPTH",
    "MAX_MATCH",
    "MAX_NODES",
    "SuffixCache",
    "SuffixDraft",
    "SuffixIndex",
    "STATE_NAME",
    "STATE_VERSION",
    "default_suffix_cache",
    "reset_default_suffix_caches",
    "suffix_cache_changed",
]

#: Longest substring stored (match + continuation), as arctic-inference's default tree depth.
DEFAULT_MAX_DEPTH = 24
#: Default memory cap of a cross-request cache.
DEFAULT_CACHE_BYTES = 64 << 20
#: Caps of ``speculate`` (the core's): ``max_match`` (and ``max_depth``) in [1, 256],
#: ``max_nodes`` in [1, 2**24].
MAX_MATCH = 256
MAX_NODES = 1 << 24

SuffixDraft = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]


class SuffixIndex:
    """Suffix trie of one growing sequence.

    Args:
        max_depth: longest substring stored, in [1, 256].

    Raises:
        ValueError: ``max_depth`` out of range. TypeError: not an int.
    """

    __slots__ = ("_i",)

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH):
        self._i = _core.SuffixIndex(max_depth)

    def extend(self, tokens: Any) -> None:
        """Append ``tokens`` (int [n], ids in [0, 2**24)). Raises IndexError for a bad id."""
        self._i.extend(as_array(tokens, np.int64, "tokens", 1))

    def speculate(self, context: Any, max_match: int = 16, max_nodes: int = 16, min_prob: float = 0.0) -> SuffixDraft:
        """The continuation tree of the longest earlier match of ``context``'s end (module docs).

        Raises:
            ValueError: ``max_match`` outside [1, 256], ``max_nodes`` outside [1, 2**24],
                ``min_prob`` outside [0, 1].
            IndexError: a bad token id. TypeError: a size that is not an int.
        """
        return self._i.speculate(as_array(context, np.int64, "context", 1), max_match, max_nodes, min_prob)

    def __len__(self) -> int:
        return len(self._i)

    @property
    def core(self) -> Any:
        """The ``_core.SuffixIndex`` under this index (for kernels that read it directly)."""
        return self._i

    @property
    def max_depth(self) -> int:
        return int(self._i.max_depth)

    @property
    def num_nodes(self) -> int:
        return int(self._i.num_nodes)

    @property
    def memory_bytes(self) -> int:
        return int(self._i.memory_bytes)

    def __repr__(self) -> str:
        return repr(self._i)


class SuffixCache:
    """Earlier requests' outputs in one bounded suffix trie (oldest evicted first).

    Args:
        max_depth: longest substring stored, in [1, 256].
        max_bytes: memory cap in bytes (>= 4096): trie nodes, child index and stored
            sequences; :attr:`memory_bytes` never exceeds it after an insert. A sequence too
            large for it on its own keeps as many of its last tokens as fit.
        max_requests: most sequences kept (None: only the memory cap).
        vocab_size: the vocabulary ids must lie in, in [1, 2**24] (None: any id below 2**24).

    Raises:
        ValueError: a size out of range. TypeError: a size that is not an int.
    """

    __slots__ = ("_c", "__weakref__")

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_CACHE_BYTES,
                 max_requests: Optional[int] = None, *, vocab_size: Optional[int] = None):
        self._c = _core.SuffixCache(max_depth, max_bytes, max_requests, vocab_size=vocab_size)

    def insert(self, tokens: Any) -> None:
        """Cache one sequence (int [n]); O(n * max_depth) plus evictions. Raises IndexError for
        an id outside ``[0, vocab_size)`` (nothing is inserted)."""
        self._c.insert(as_array(tokens, np.int64, "tokens", 1))

    def check_vocab(self, vocab_size: int) -> None:
        """Check that every id this cache can give lies in a model's vocabulary ``[0,
        vocab_size)`` (run when a drafter binds the cache to a model: an id past the vocabulary
        would fail inside the model's embedding on every later matching request).

        Raises:
            ValueError: the cache holds an id >= ``vocab_size`` (say what to do about it).
        """
        own = self._c.vocab_size
        if own is not None and own <= vocab_size:
            return
        top = self._c.max_token
        if top is not None and top >= vocab_size:
            raise ValueError(
                f"cache: holds token id {top}, outside the model's vocabulary [0, {vocab_size}); "
                "clear() it or use a cache made with vocab_size=<the model's>"
            )

    def speculate(self, context: Any, max_match: int = 16, max_nodes: int = 16, min_prob: float = 0.0) -> SuffixDraft:
        """As :meth:`SuffixIndex.speculate`, over the cached sequences."""
        return self._c.speculate(as_array(context, np.int64, "context", 1), max_match, max_nodes, min_prob)

    def clear(self) -> None:
        self._c.clear()

    def sequences(self) -> List[np.ndarray]:
        """The cached sequences, oldest first."""
        return list(self._c.sequences())

    def to_bytes(self) -> bytes:
        """The cached sequences as versioned bytes (the caps are the loader's)."""
        return bytes(self._c.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = DEFAULT_CACHE_BYTES, max_requests: Optional[int] = None,
                   vocab_size: Optional[int] = None) -> "SuffixCache":
        """A cache holding the sequences of ``data`` under the caps and vocabulary given here.

        Raises:
            ValueError: not suffix-cache bytes, another version, truncated or corrupt data, an
                id outside ``[0, vocab_size)``.
            TypeError: ``data`` is not bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        obj = cls.__new__(cls)
        obj._c = _core.SuffixCache.from_bytes(bytes(data), max_bytes=max_bytes, max_requests=max_requests, vocab_size=vocab_size)
        return obj

    def __len__(self) -> int:
        return len(self._c)

    @property
    def core(self) -> Any:
        """The ``_core.SuffixCache`` under this cache (for kernels that read it directly)."""
        return self._c

    @property
    def max_depth(self) -> int:
        return int(self._c.max_depth)

    @property
    def max_bytes(self) -> int:
        return int(self._c.max_bytes)

    @property
    def max_requests(self) -> Optional[int]:
        return self._c.max_requests

    @property
    def vocab_size(self) -> Optional[int]:
        """The vocabulary the ids lie in (None: any id below 2**24)."""
        return self._c.vocab_size

    @property
    def max_token(self) -> Optional[int]:
        """The largest id held (None: empty)."""
        return self._c.max_token

    @property
    def memory_bytes(self) -> int:
        return int(self._c.memory_bytes)

    @property
    def num_tokens(self) -> int:
        return int(self._c.num_tokens)

    @property
    def evicted(self) -> int:
        return int(self._c.evicted)

    def __repr__(self) -> str:
        return repr(self._c)


#: Version of the persisted cache (the payload is :meth:`SuffixCache.to_bytes`, which carries
#: its own format version too).
STATE_VERSION = 1
#: The name the default cache is persisted under (:mod:`tokenloom.spec.persist`).
STATE_NAME = "suffix-cache"

_DEFAULTS = PerModelStates()


def default_suffix_cache(vocab_size: int, *, model: Any = None, persist: Optional[bool] = None) -> SuffixCache:
    """The process-wide cross-request cache (created on first use with the default caps and
    ``vocab_size``, so it never holds an id outside it, then kept).

    With ``model`` there is one cache per model (:func:`tokenloom.spec.persist.model_key`) and,
    when persistence is on (``persist=True``, or None and ``TOKENLOOM_PERSIST`` not 0), it
    starts from the sequences the last process saved for that model (a corrupted or outdated
    file, or one holding an id outside ``[0, vocab_size)``, gives one warning and a cold
    start). Without ``model``: one cache per ``vocab_size``, never persisted.

    Raises:
        TypeError: ``persist`` is not None or a bool.
    """
    return _DEFAULTS.get(model, (vocab_size,), STATE_NAME, STATE_VERSION, persist,
                         lambda: SuffixCache(vocab_size=vocab_size),
                         lambda b: SuffixCache.from_bytes(b, vocab_size=vocab_size))


def suffix_cache_changed(cache: SuffixCache, model: Any, persist: Optional[bool] = None) -> None:
    """After a request on ``default_suffix_cache(..., model=model)``: save it (throttled,
    atomic; see :class:`~tokenloom.spec.persist.StateSaver`) when persistence is on. A no-op for
    any other cache."""
    _DEFAULTS.changed(cache, model, STATE_NAME, persist)


def reset_default_suffix_caches() -> None:
    """Forget the process-wide caches (the next request starts from the saved state, or cold)."""
    _DEFAULTS.reset()
