"""KV-cache operations of a tree step on a transformers ``DynamicCache``: read its length,
read every layer's keys / values, and compact it to the accepted path after verification.

After a tree step of T nodes the cache holds ``past_len + T`` entries;
``compact_cache(cache, past_len, path)`` keeps the prefix and the accepted nodes (in order), so the
cache again holds one entry per emitted token. Cache layers must be full (``DynamicLayer``);
sliding-window layers are refused.

Caches whose entries are *slots* of a tree forwarded over many steps (ByteLM's covers) use
:func:`keep_slots` (keep any ascending set of absolute positions) and :func:`crop_cache`;
:func:`cache_nbytes` and :func:`kv_bytes_per_token` size a cache before and after it exists.

Batches (B rows of different lengths in one cache ``[B, H, S, D]``): row ``b``'s valid entries
are the window of slots ``[starts[b], ends[b])``; the slots before it are the row's left
padding, the slots after it hold stale entries that every mask hides (see
:func:`tokenloom.runtime.treeattn.batch_tree_forward`). After a batched tree step appended
``T`` slots at ``past_len``, :func:`compact_rows` copies each row's accepted path to the slots
right after its own window (a gather within the row), so windows stay contiguous, and cuts the
cache to the longest row; :func:`select_rows` drops finished rows (and the left padding no
remaining row needs), so a finished row stops costing memory and forward width.
"""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import numpy as np

from tokenloom._arrays import as_array, as_int

__all__ = [
    "append_kv",
    "cache_kv",
    "cache_length",
    "cache_nbytes",
    "compact_cache",
    "compact_rows",
    "crop_cache",
    "keep_slots",
    "kv_bytes_per_token",
    "select_rows",
    "stack_rows",
]


class _KV:
    """Uniform get/set of layer ``i``'s key/value tensors [B, H, S, D] across cache layouts:
    transformers >= 4.56 ``cache.layers[i].keys/.values`` and the older
    ``cache.key_cache[i] / cache.value_cache[i]`` lists."""

    def __init__(self, cache: Any):
        self.cache = cache
        layers = getattr(cache, "layers", None)
        if layers is not None:
            self.kind = "layers"
            self.n = len(layers)
        elif hasattr(cache, "key_cache") and hasattr(cache, "value_cache"):
            self.kind = "lists"
            self.n = len(cache.key_cache)
        else:
            raise TypeError(
                f"unsupported cache type {type(cache).__name__}: expected a transformers DynamicCache "
                "(cache.layers[i].keys/.values or cache.key_cache/value_cache)"
            )

    def get(self, i: int) -> Tuple[Any, Any]:
        if self.kind == "layers":
            layer = self.cache.layers[i]
            if getattr(layer, "is_sliding", False):
                raise ValueError("compact_cache: sliding-window cache layers are not supported")
            return getattr(layer, "keys", None), getattr(layer, "values", None)
        return self.cache.key_cache[i], self.cache.value_cache[i]

    def set(self, i: int, k: Any, v: Any) -> None:
        if self.kind == "layers":
            self.cache.layers[i].keys, self.cache.layers[i].values = k, v
        else:
            self.cache.key_cache[i], self.cache.value_cache[i] = k, v


#: Slots a layer's in-place buffer (:func:`append_kv`) keeps beyond what it holds: at least
#: this many, and at least half its length (so a long generation reallocates O(log n) times).
APPEND_ROOM = 256


def _slot_in(view: Any, buf: Any) -> int:
    """The slot ``a`` where ``view`` == ``buf[:, :, a : a + S]`` ([B, H, S, D] views of one
    storage with the same strides), else -1."""
    if (
        view.dim() != 4 or view.dtype != buf.dtype or view.device != buf.device
        or view.stride() != buf.stride() or view.shape[:2] != buf.shape[:2] or view.shape[3] != buf.shape[3]
        or view.untyped_storage().data_ptr() != buf.untyped_storage().data_ptr()
    ):
        return -1
    step = buf.stride(2)
    diff = view.storage_offset() - buf.storage_offset()
    if step <= 0 or diff < 0 or diff % step or diff // step + view.shape[2] > buf.shape[2]:
        return -1
    return diff // step


def append_kv(cache: Any, i: int, k: Any, v: Any) -> Tuple[Any, Any]:
    """``cache.update(k, v, i)`` (k, v: [B, H_kv, T, D]) that writes the T new entries into
    spare slots of a buffer the layer keeps, instead of concatenating (transformers'
    ``DynamicLayer.update`` copies the whole layer every step: ~2 ms of a one-token step of the
    embedded model at 200 cached tokens, ~6.5 ms at 770, on the 2-core Xeon). Returns the
    layer's keys and values [B, H_kv, S + T, D]: the same values as ``update``'s, as views of
    the buffer (a slot dimension of stride ``capacity * D``, not ``S * D``).

    The buffer is the layer's own (made here on the first append, and again when the layer's
    tensors are no longer views of it: after transformers' ``update``, a row selection, or when
    full, with :data:`APPEND_ROOM`), so the entries written are slots past the layer's current
    length. As with :func:`compact_cache`'s in-place moves, a view of the layer's tensors taken
    before it was cropped must not be used after the next append. Layers other than a plain
    ``DynamicLayer`` (and the older list layout) take ``cache.update``."""
    import torch

    layers = getattr(cache, "layers", None)
    layer = layers[i] if layers is not None and i < len(layers) else None
    if type(layer) is not _dynamic_layer() or getattr(cache, "offloading", False) or not getattr(layer, "is_initialized", False):
        return cache.update(k, v, i)
    keys, values = layer.keys, layer.values
    if keys is None or keys.dim() != 4 or keys.shape[0] != k.shape[0] or keys.dtype != k.dtype or keys.device != k.device:
        return cache.update(k, v, i)
    s, t = int(keys.shape[2]), int(k.shape[2])
    held = layer.__dict__.get("_tokenloom_kv")
    # (keys buffer, values buffer, the views set last, their slot): the layer still holds those
    # very views (not replaced by a crop, transformers' update or a row selection) -> their slot
    if held is not None and keys is held[2] and values is held[3]:
        a = held[4]
        same = True
    else:
        a = _slot_in(keys, held[0]) if held is not None else -1
        same = a >= 0 and _slot_in(values, held[1]) == a
    # an inference tensor takes no in-place write outside inference mode: a new buffer then
    stale = held is not None and held[0].is_inference() and not torch.is_inference_mode_enabled()
    if not same or stale or a + s + t > held[0].shape[2]:
        cap = s + t + max(APPEND_ROOM, (s + t) // 2)
        kb = keys.new_empty((keys.shape[0], keys.shape[1], cap, keys.shape[3]))
        vb = values.new_empty((values.shape[0], values.shape[1], cap, values.shape[3]))
        kb[:, :, :s] = keys
        vb[:, :, :s] = values
        held, a = (kb, vb, None, None, 0), 0
    kb, vb = held[0], held[1]
    kb[:, :, a + s : a + s + t] = k
    vb[:, :, a + s : a + s + t] = v
    keys, values = kb[:, :, a : a + s + t], vb[:, :, a : a + s + t]
    layer.keys, layer.values = keys, values
    layer.__dict__["_tokenloom_kv"] = (kb, vb, keys, values, a)
    return keys, values


def _dynamic_layer() -> Any:
    """transformers' ``DynamicLayer`` (imported once)."""
    if not _DYNAMIC_LAYER:
        from transformers.cache_utils import DynamicLayer

        _DYNAMIC_LAYER.append(DynamicLayer)
    return _DYNAMIC_LAYER[0]


_DYNAMIC_LAYER: list = []


def cache_kv(cache: Any) -> List[Tuple[Any, Any]]:
    """The (keys, values) tensors [B, H, S, D] of every layer (for tests and tools)."""
    kv = _KV(cache)
    return [kv.get(i) for i in range(kv.n)]


def cache_length(cache: Any) -> int:
    """Tokens held by the cache (the sequence length of its first initialised layer)."""
    kv = _KV(cache)
    for i in range(kv.n):
        k, _ = kv.get(i)
        if k is not None and getattr(k, "numel", lambda: 0)() > 0:
            return int(k.shape[-2])
    return 0


def compact_cache(cache: Any, past_len: int, keep: Sequence[int]) -> None:
    """Keep the prefix ``[0, past_len)`` and the tree entries ``past_len + keep`` (in the given
    order), drop every other entry, in place on every layer.

    Args:
        cache: a ``DynamicCache`` (either layout, see :func:`cache_kv`) holding
            ``past_len + T`` entries after a tree step.
        past_len: tokens cached before the tree step.
        keep: node indices to keep, e.g. the accepted path ``[0, 3, 7]``; each in ``[0, T)``,
            strictly increasing (a root-to-node path always is).

    Raises:
        ValueError: ``keep`` not strictly increasing or out of range; sliding-window layers.
        TypeError: an unsupported cache object.
    """
    import torch

    kv = _KV(cache)
    # Integer node indices only: [0.5, 2.5] is refused, not truncated to [0, 2].
    keep_list = as_array(keep, np.int64, "keep", 1).tolist()
    past_len = as_int(past_len, "past_len")
    n = len(keep_list)
    total = cache_length(cache)
    t = total - past_len
    if past_len < 0 or t < 0:
        raise ValueError(f"compact_cache: past_len {past_len} outside the cache length {total}")
    if any(b <= a for a, b in zip(keep_list, keep_list[1:])) or (n and (keep_list[0] < 0 or keep_list[-1] >= t)):
        raise ValueError(f"compact_cache: keep must be strictly increasing node indices in [0, {t}), got {keep_list}")
    contiguous = keep_list == list(range(n))
    idx = None
    for i in range(kv.n):
        k, v = kv.get(i)
        if k is None or k.numel() == 0:
            continue
        if not contiguous:
            if idx is None:
                idx = torch.tensor(keep_list, dtype=torch.long, device=k.device) + past_len
            # Gather first (a copy), then write into the front of the tree block.
            k[:, :, past_len : past_len + n] = k.index_select(2, idx)
            v[:, :, past_len : past_len + n] = v.index_select(2, idx)
        kv.set(i, k.narrow(2, 0, past_len + n), v.narrow(2, 0, past_len + n))


def compact_rows(cache: Any, past_len: int, ends: Sequence[int], paths: Sequence[Sequence[int]]) -> List[int]:
    """The batch form of :func:`compact_cache`: after a batched tree step appended the slots
    ``[past_len, past_len + T)`` to every row, copy row ``b``'s tree entries ``past_len +
    paths[b]`` (in order) to the slots ``ends[b], ends[b] + 1, ...`` right after its window,
    then cut every layer to the longest row. Entries past a row's new end are stale (hidden by
    the next step's mask). In place on every layer; one gather and one scatter per layer.

    Args:
        cache: a ``DynamicCache`` of B rows holding ``past_len + T`` slots.
        past_len: slots before the tree step.
        ends: int [B], each row's window end before the step (``<= past_len``).
        paths: B node-index lists, each strictly increasing in ``[0, T)`` and non-empty.

    Returns:
        The rows' new window ends, ``ends[b] + len(paths[b])``.

    Raises:
        ValueError: a path that is empty, not strictly increasing or out of range; an end past
            ``past_len``; a row count that is not the cache's. TypeError: an unsupported cache.
    """
    import torch

    kv = _KV(cache)
    past_len = as_int(past_len, "past_len")
    end_list = as_array(ends, np.int64, "ends", 1).tolist()
    keep = [as_array(p, np.int64, f"paths[{b}]", 1).tolist() for b, p in enumerate(paths)]
    t = cache_length(cache) - past_len
    if past_len < 0 or t < 0 or len(keep) != len(end_list):
        raise ValueError(f"compact_rows: past_len {past_len} outside the cache, or {len(keep)} paths for {len(end_list)} rows")
    for b, (e, p) in enumerate(zip(end_list, keep)):
        if not p or any(y <= x for x, y in zip(p, p[1:])) or p[0] < 0 or p[-1] >= t or not (0 <= e <= past_len):
            raise ValueError(
                f"compact_rows: row {b}: expected a non-empty strictly increasing path in [0, {t}) "
                f"and an end in [0, {past_len}], got path {p} and end {e}"
            )
    width = max(len(p) for p in keep)
    new_ends = [e + len(p) for e, p in zip(end_list, keep)]
    src = dst = None
    for i in range(kv.n):
        k, v = kv.get(i)
        if k is None or k.numel() == 0:
            continue
        if k.shape[0] != len(keep):
            raise ValueError(f"compact_rows: the cache holds {k.shape[0]} rows, got paths for {len(keep)}")
        if src is None:
            # Short paths repeat their last node; the extra copies land past the row's new end.
            pad = [p + [p[-1]] * (width - len(p)) for p in keep]
            src = torch.tensor(pad, dtype=torch.long, device=k.device) + past_len
            dst = torch.tensor(end_list, dtype=torch.long, device=k.device).view(-1, 1) + torch.arange(width, device=k.device)
        shape = (k.shape[0], k.shape[1], width, k.shape[3])
        gs = src.view(-1, 1, width, 1).expand(shape)
        gd = dst.view(-1, 1, width, 1).expand(shape)
        k.scatter_(2, gd, k.gather(2, gs))  # gather first (a copy), then write
        v.scatter_(2, gd, v.gather(2, gs))
        kv.set(i, k.narrow(2, 0, max(new_ends)), v.narrow(2, 0, max(new_ends)))
    return new_ends


def select_rows(cache: Any, rows: Sequence[int], start: int = 0) -> None:
    """Keep the batch rows ``rows`` (in that order) and the slots from ``start`` on, in place on
    every layer (e.g. drop finished rows and the left padding no kept row needs).

    Raises:
        ValueError: a row outside the cache, no row, or ``start`` outside the cache.
        TypeError: an unsupported cache object.
    """
    import torch

    kv = _KV(cache)
    keep = as_array(rows, np.int64, "rows", 1).tolist()
    start = as_int(start, "start")
    length = cache_length(cache)
    if not keep or not (0 <= start <= length):
        raise ValueError(f"select_rows: expected at least one row and start in [0, {length}], got {keep} and {start}")
    idx = None
    for i in range(kv.n):
        k, v = kv.get(i)
        if k is None or k.numel() == 0:
            continue
        if min(keep) < 0 or max(keep) >= k.shape[0]:
            raise ValueError(f"select_rows: rows must lie in [0, {k.shape[0]}), got {keep}")
        if idx is None:
            idx = torch.tensor(keep, dtype=torch.long, device=k.device)
        k, v = k.index_select(0, idx), v.index_select(0, idx)
        kv.set(i, k.narrow(2, start, k.shape[2] - start), v.narrow(2, start, v.shape[2] - start))


def stack_rows(caches: Sequence[Any], rows: Sequence[Sequence[int]], width: int) -> Any:
    """One cache of B left-padded rows from caches of row groups (each group prefilled on its
    own, left-padded to its own longest row): group ``g``'s cache holds the batch rows
    ``rows[g]`` (in order) and ``m_g <= width`` slots; they land in the last ``m_g`` of ``width``
    slots, so every row keeps its window ending at ``width``; slots before a group's are zeros
    (left padding every mask hides). The first cache object is reused (its tensors replaced;
    a single group of all rows in order and ``width`` slots is returned as it is, not copied).

    Args:
        caches: one ``DynamicCache`` per group (all with the same layers, dtype and device).
        rows: the batch rows of each group; together a permutation of ``0..B-1``.
        width: the batch's slots (its longest row).

    Returns:
        ``caches[0]``, now holding all B rows and ``width`` slots.

    Raises:
        ValueError: rows that are not a permutation, a group wider than ``width`` or of another
            row count. TypeError: an unsupported cache.
    """
    import torch

    groups = [as_array(r, np.int64, f"rows[{g}]", 1).tolist() for g, r in enumerate(rows)]
    flat = sorted(b for r in groups for b in r)
    if len(groups) != len(caches) or not caches or flat != list(range(len(flat))):
        raise ValueError(f"stack_rows: expected one row group per cache, together a permutation of 0..B-1, got {groups}")
    width = as_int(width, "width")
    kvs = [_KV(c) for c in caches]
    first = kvs[0]
    if len(caches) == 1 and groups[0] == flat and cache_length(caches[0]) == width:
        return caches[0]  # one group of every row in order, as wide as the batch: already its layout
    index = [torch.tensor(r, dtype=torch.long) for r in groups]
    for i in range(first.n):
        parts = [kv.get(i) for kv in kvs]
        k0, _ = parts[0]
        if k0 is None or k0.numel() == 0:
            continue
        shape = (len(flat), k0.shape[1], width, k0.shape[3])
        keys = torch.zeros(shape, dtype=k0.dtype, device=k0.device)
        values = torch.zeros(shape, dtype=k0.dtype, device=k0.device)
        for (k, v), idx, r in zip(parts, index, groups):
            m = int(k.shape[2])
            if m > width or k.shape[0] != len(r):
                raise ValueError(f"stack_rows: a group of {len(r)} rows holds {k.shape[0]} rows and {m} slots (width {width})")
            keys[idx.to(k.device), :, width - m :] = k
            values[idx.to(k.device), :, width - m :] = v
        first.set(i, keys, values)
    return caches[0]


def keep_slots(cache: Any, slots: Sequence[int]) -> None:
    """Keep the absolute cache positions ``slots`` (strictly increasing), in that order, and
    drop every other entry, in place on every layer (:func:`compact_cache` after the longest
    leading run ``0, 1, ..., p - 1`` of ``slots``, which stays where it is).

    Raises:
        ValueError: ``slots`` not strictly increasing or outside the cache.
        TypeError: an unsupported cache object.
    """
    keep = as_array(slots, np.int64, "slots", 1).tolist()  # integer positions, never truncated
    p = 0
    while p < len(keep) and keep[p] == p:
        p += 1
    compact_cache(cache, p, [s - p for s in keep[p:]])


def crop_cache(cache: Any, n: int) -> None:
    """Keep the first ``n`` entries (``0 <= n <= cache_length(cache)``), in place.

    Raises:
        ValueError: ``n`` outside the cache. TypeError: an unsupported cache object.
    """
    compact_cache(cache, n, [])


def cache_nbytes(cache: Any) -> int:
    """Bytes held by the keys and values of every layer (0 for an empty cache)."""
    total = 0
    for k, v in cache_kv(cache):
        for t in (k, v):
            if t is not None:
                total += int(t.numel()) * int(t.element_size())
    return total


def kv_bytes_per_token(model: Any, dtype: Any = None) -> int:
    """Bytes one cached token costs in a full ``DynamicCache`` of ``model``: layers x 2 (keys,
    values) x key/value heads x head dim x element size, from ``model.config`` (0 when the
    config does not say; measure with :func:`cache_nbytes` then).

    Args:
        model: an HF causal LM (its ``config``: ``num_hidden_layers``, ``num_attention_heads``,
            ``num_key_value_heads``, ``head_dim`` or ``hidden_size``).
        dtype: the cache dtype (default: the model's float dtype).
    """
    from tokenloom.runtime.model import model_dtype_device

    cfg: Any = getattr(model, "config", None)
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    layers = getattr(cfg, "num_hidden_layers", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None)
    if not head_dim and heads and getattr(cfg, "hidden_size", None):
        head_dim = int(cfg.hidden_size) // int(heads)
    if not (isinstance(layers, int) and isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return 0
    if dtype is None:
        dtype, _ = model_dtype_device(model)
    import torch

    elt = torch.empty((), dtype=dtype).element_size()
    return 2 * layers * kv_heads * head_dim * elt
