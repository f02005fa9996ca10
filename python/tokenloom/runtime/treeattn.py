"""Generic tree-attention step machinery for Hugging Face causal LMs (method-agnostic: Token
Recycling and DySpec both use it).

A *tree step* feeds T tree nodes after a cached prefix of ``past_len`` tokens in ONE forward:

* node 0 is the root (the last emitted token, not yet in the cache), ``parents[0] == -1`` and
  ``0 <= parents[i] < i`` (a forward scan is a topological order);
* node ``i`` attends to the whole prefix and to itself and its ancestors — the additive 4D mask
  from :func:`tree_attention_mask` (0 = see, ``finfo(dtype).min`` = hide), shape
  ``(1, 1, T, past_len + T)``;
* node ``i`` sits at position ``past_len + depth(i)`` (:func:`tree_position_ids`);
* after verification, :func:`compact_cache` keeps the prefix and the accepted nodes (in order)
  and drops the rest, so the cache again holds one entry per emitted token.

Typical step (``cache`` is a ``transformers.DynamicCache`` already holding the prefix)::

    past = cache_length(cache)
    logits = tree_forward(model, cache, tokens, parents, depths)   # [T, V], one forward
    path = ...verify (node indices starting with 0)...
    compact_cache(cache, past, path)                               # cache = past + len(path)

Batches (:func:`batch_tree_forward`): B rows each feed their own tree after their own
cached window in ONE forward. The cache is ``[B, H, S, D]`` and row ``b``'s valid entries are
the contiguous window of slots ``[starts[b], ends[b])`` (left padding before it, and stale or
padding entries after it are hidden); the trees are padded to the widest ``T`` and appended at
slots ``[S, S + T)``. Row ``b``'s node ``i`` sits at position ``ends[b] - starts[b] + depth(i)``
(positions count valid tokens only, as HF's left-padded ``generate`` counts them) and sees its
row's window and its own ancestors (:func:`batch_tree_mask`); a padding node sees only itself.
:func:`tokenloom.runtime.kvcache.compact_rows` then keeps each row's accepted path.

Requirements: :func:`tree_forward` takes batch size 1; the model's attention implementation must accept a custom 4D float
mask ("sdpa" or "eager"; flash-attention-2 does not); position ids are honoured (all
rotary/absolute-position decoder models in transformers). Cache layers must be full
(``DynamicLayer``); sliding-window layers are refused by :func:`compact_cache`.

Everything here works on CPU and CUDA; masks are cached per tree shape, dtype and device.
Sizes, positions and token ids are ints everywhere (:func:`tokenloom._arrays.as_int`,
:func:`~tokenloom._arrays.as_int_tensor`): a float is refused, never truncated.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import numpy as np

from tokenloom._arrays import as_array, as_int, as_int_tensor
from tokenloom.runtime.gqa import grouped_attention
from tokenloom.runtime.leanforward import step_logits
from tokenloom.runtime.model import model_dtype_device

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "ancestor_matrix",
    "batch_tree_forward",
    "batch_tree_inputs",
    "batch_tree_mask",
    "causal_attention_mask",
    "prefix_tree_mask",
    "slot_attention_mask",
    "tree_attention_mask",
    "tree_bias",
    "tree_forward",
    "tree_position_ids",
]


def _parents_array(parents: Any) -> np.ndarray:
    # Integer ids only: a float array is refused, not truncated ([-1, 0.9] is no tree).
    p = as_array(parents, np.int64, "parents", 1)
    if p.size == 0:
        raise ValueError(f"parents: expected a non-empty 1-D array, got shape {tuple(p.shape)}")
    if p[0] != -1:
        raise ValueError(f"parents[0] must be -1 (node 0 is the root), got {int(p[0])}")
    idx = np.arange(1, p.size)
    bad = np.nonzero((p[1:] < 0) | (p[1:] >= idx))[0]
    if bad.size:
        i = int(bad[0]) + 1
        raise ValueError(f"parents must be topologically ordered (0 <= parents[i] < i): parents[{i}] = {int(p[i])}")
    return p


def ancestor_matrix(parents: Any) -> np.ndarray:
    """bool [T, T]: ``M[i, j]`` is True when node ``j`` is node ``i`` or one of its ancestors.

    Raises:
        ValueError: ``parents`` is not a valid parent array.
    """
    p = _parents_array(parents)
    t = p.size
    m = np.zeros((t, t), dtype=bool)
    m[0, 0] = True
    for i in range(1, t):
        m[i] = m[p[i]]
        m[i, i] = True
    return m


@functools.lru_cache(maxsize=64)
def _bias_cached(key: bytes, dtype: Any, device: Any) -> "torch.Tensor":
    import torch

    parents = np.frombuffer(key, dtype=np.int64)
    see = torch.from_numpy(ancestor_matrix(parents))
    bias = torch.zeros(see.shape, dtype=dtype)
    bias.masked_fill_(~see, torch.finfo(dtype).min)
    return bias.to(device)


def tree_bias(parents: Any, dtype: Any = None, device: Any = "cpu") -> "torch.Tensor":
    """Additive [T, T] block of the tree mask: 0 where node ``j`` is ``i`` or an ancestor of
    ``i``, ``finfo(dtype).min`` elsewhere. Cached per (parents, dtype, device); do not modify.
    """
    import torch

    p = _parents_array(parents)
    return _bias_cached(p.tobytes(), dtype or torch.float32, torch.device(device))


def tree_attention_mask(parents: Any, past_len: int, dtype: Any = None, device: Any = "cpu") -> "torch.Tensor":
    """The 4D additive mask (1, 1, T, past_len + T) of a tree step: every node sees the whole
    prefix (zeros) and, among tree nodes, only itself and its ancestors.

    Args:
        parents: int [T] parent array (``parents[0] == -1``, ``parents[i] < i``).
        past_len: tokens already in the cache (>= 0).
        dtype: float dtype of the model's attention (default float32).
        device: where the model runs.
    """
    import torch

    past_len = as_int(past_len, "past_len")
    if past_len < 0:
        raise ValueError(f"past_len: expected >= 0, got {past_len}")
    dtype = dtype or torch.float32
    block = tree_bias(parents, dtype, device)
    t = block.shape[0]
    mask = torch.zeros((1, 1, t, past_len + t), dtype=dtype, device=block.device)
    mask[0, 0, :, past_len:] = block
    return mask


def causal_attention_mask(q_len: int, past_len: int, dtype: Any = None, device: Any = "cpu") -> "torch.Tensor":
    """The 4D additive mask (1, 1, q_len, past_len + q_len) of a plain causal chain of
    ``q_len`` tokens after ``past_len`` cached ones (the tree mask of a chain).

    Raises:
        TypeError: ``q_len`` or ``past_len`` is not an int. ValueError: ``q_len < 1`` or
        ``past_len < 0``.
    """
    q_len = as_int(q_len, "q_len")
    if q_len < 1:
        raise ValueError(f"q_len: expected >= 1, got {q_len}")
    return tree_attention_mask(np.arange(-1, q_len - 1, dtype=np.int64), past_len, dtype, device)


def prefix_tree_mask(
    prefix_len: int, past_len: int, visible: Sequence[Sequence[int]], dtype: Any = None, device: Any = "cpu"
) -> "torch.Tensor":
    """The 4D additive mask (1, 1, q, past_len + q) of q new tokens fed after a cache that
    holds a shared prefix ``[0, prefix_len)`` followed by earlier, partly unrelated entries
    (e.g. tree nodes forwarded by previous draft forwards, one depth at a time).

    Row ``j`` sees the prefix, the absolute cache positions ``visible[j]`` (each in
    ``[prefix_len, past_len)``: its tree ancestors already in the cache) and itself
    (``past_len + j``); nothing else. :func:`slot_attention_mask` also lets a row see earlier
    rows of the same forward.

    Raises:
        ValueError: ``prefix_len`` outside ``[0, past_len]`` or a position outside
            ``[prefix_len, past_len)``. TypeError: a size or a position that is not an int.
    """
    prefix_len, past_len, visible = _slot_args(prefix_len, past_len, visible)
    cols = [c for cs in visible for c in cs]
    if 0 <= prefix_len <= past_len and any(not (prefix_len <= c < past_len) for c in cols):
        raise ValueError(f"visible: positions must lie in [{prefix_len}, {past_len}), got {cols}")
    return _slot_mask(prefix_len, past_len, visible, dtype, device)


def _slot_args(prefix_len: Any, past_len: Any, visible: Any) -> Tuple[int, int, List[List[int]]]:
    """The sizes and slots of a slot mask as ints (floats refused, never truncated)."""
    if isinstance(visible, (str, bytes)):
        raise TypeError(f"visible: expected one list of slots per row, got {type(visible).__name__}")
    rows = [list(cs) for cs in visible]
    slots = [[as_int(c, f"visible[{j}]") for c in cs] for j, cs in enumerate(rows)]
    return as_int(prefix_len, "prefix_len"), as_int(past_len, "past_len"), slots


def slot_attention_mask(
    prefix_len: int, past_len: int, visible: Sequence[Sequence[int]], dtype: Any = None, device: Any = "cpu"
) -> "torch.Tensor":
    """The 4D additive mask (1, 1, q, past_len + q) of q new rows whose ancestors sit at
    arbitrary cache *slots*: in the cache (``< past_len``) or among the earlier rows of this
    same forward (row ``i`` has slot ``past_len + i``). Used when one forward extends many
    paths of a tree whose nodes were cached by earlier forwards in any order (ByteLM's covers).

    Row ``j`` sees the shared prefix ``[0, prefix_len)``, the slots in ``visible[j]`` (each in
    ``[prefix_len, past_len + j)``) and itself (``past_len + j``); nothing else. 0 = see,
    ``finfo(dtype).min`` = hide.

    Args:
        prefix_len: slots every row sees (e.g. the context), ``0 <= prefix_len <= past_len``.
        past_len: slots already in the cache.
        visible: one list of slots per new row.
        dtype: float dtype of the model's attention (default float32).
        device: where the model runs.

    Raises:
        ValueError: ``prefix_len`` outside ``[0, past_len]`` or a slot outside
            ``[prefix_len, past_len + j)`` in row ``j``. TypeError: a size or a slot that is
            not an int.
    """
    return _slot_mask(*_slot_args(prefix_len, past_len, visible), dtype, device)


def _slot_mask(prefix_len: int, past_len: int, visible: List[List[int]], dtype: Any, device: Any) -> "torch.Tensor":
    """:func:`slot_attention_mask` of checked ints."""
    import torch

    if not (0 <= prefix_len <= past_len):
        raise ValueError(f"prefix_len: expected in [0, past_len={past_len}], got {prefix_len}")
    dtype = dtype or torch.float32
    q = len(visible)
    rows = [j for j, cols in enumerate(visible) for _ in cols]
    cols = [c for cs in visible for c in cs]
    bad = [(j, c) for j, c in zip(rows, cols) if not (prefix_len <= c < past_len + j)]
    if bad:
        j, c = bad[0]
        raise ValueError(f"visible[{j}]: slots must lie in [{prefix_len}, {past_len + j}), got {c}")
    mask = torch.full((q, past_len + q), torch.finfo(dtype).min, dtype=dtype)
    mask[:, :prefix_len] = 0.0
    if rows:
        mask[rows, cols] = 0.0
    diag = torch.arange(q)
    mask[diag, past_len + diag] = 0.0
    return mask.view(1, 1, q, past_len + q).to(device)


def tree_position_ids(depths: Any, past_len: int, device: Any = "cpu") -> "torch.Tensor":
    """LongTensor [1, T]: ``past_len + depths``."""
    import torch

    d = as_int_tensor(depths, "depths")
    return (d.to(device=device, dtype=torch.long) + as_int(past_len, "past_len")).view(1, -1)


def _check_depths(depths: Any, parents: np.ndarray) -> np.ndarray:
    """``depths`` as int64 [T], checked against the (valid) parent array: a wrong depth would
    put a node at a wrong position silently."""
    d = as_array(depths, np.int64, "depths", 1)
    if d.shape != parents.shape:
        raise ValueError(f"depths: expected shape [{parents.size}] (= len(parents)), got {list(d.shape)}")
    if d[0] != 0 or (d[1:] != d[parents[1:]] + 1).any():
        raise ValueError("depths: expected depths[0] == 0 and depths[i] == depths[parents[i]] + 1")
    return d


def _depths_of(parents: np.ndarray) -> np.ndarray:
    d = np.zeros(parents.size, dtype=np.int64)
    for i in range(1, parents.size):
        d[i] = d[parents[i]] + 1
    return d



def tree_forward(
    model: Any,
    cache: Any,
    tokens: Any,
    parents: Any,
    depths: Any = None,
    *,
    past_len: int = -1,
) -> "torch.Tensor":
    """One forward of a token tree after the cached prefix; appends T entries to ``cache``.

    Args:
        model: HF causal LM (called with ``input_ids``, a 4D ``attention_mask`` (None for a
            root-only tree),
            ``position_ids`` and ``past_key_values``).
        cache: the model's cache (``DynamicCache``), holding ``past_len`` tokens.
        tokens: int [T] node tokens, root first (numpy, torch or a sequence).
        parents: int [T] parent array.
        depths: int [T] node depths (computed from ``parents`` when None).
        past_len: tokens in the cache (read from ``cache`` when negative; else it must be the
            cache's length).

    Returns:
        torch.Tensor [T, V]: the logits after every node (float32 view of the model's output).

    Raises:
        ValueError: bad parents, tokens that are not ints or of another length, depths of
            another length or not the parents' depths, a ``past_len`` that is not the cache's
            length. TypeError: ``past_len`` is not an int.
    """
    import torch

    from tokenloom.runtime.kvcache import cache_length

    p = _parents_array(parents)
    dtype, device = model_dtype_device(model)
    past_len = as_int(past_len, "past_len")
    held = cache_length(cache)
    if past_len < 0:
        past_len = held
    elif past_len != held:
        raise ValueError(f"past_len: expected the cache's length {held}, got {past_len}")
    tok = as_int_tensor(tokens, "tokens")
    if tok.shape[0] != p.size:
        raise ValueError(f"tokens: expected shape [{p.size}] (= len(parents)), got {list(tok.shape)}")
    if depths is None:
        depths = _depths_of(p)
    else:
        depths = _check_depths(depths, p)
    pos = tree_position_ids(depths, past_len, device)
    # A root-only tree sees every cached entry: no mask, the model's own one-token step (the
    # same kernels, so the same logits, as plain decoding and HF's generate).
    mask = None if p.size == 1 else tree_attention_mask(p, past_len, dtype, device)
    with grouped_attention():
        logits = step_logits(model, cache, tok.to(device=device, dtype=torch.long).view(1, -1), pos, mask)[0]
    return logits if logits.dtype == torch.float32 else logits.float()


def _row_windows(starts: Any, ends: Any, past_len: int) -> Tuple[List[int], List[int]]:
    """``starts`` / ``ends`` as int lists, checked: ``0 <= starts[b] <= ends[b] <= past_len``."""
    st = as_array(starts, np.int64, "starts", 1).tolist()
    en = as_array(ends, np.int64, "ends", 1).tolist()
    if len(st) != len(en):
        raise ValueError(f"ends: expected {len(st)} rows (= len(starts)), got {len(en)}")
    for b, (s, e) in enumerate(zip(st, en)):
        if not (0 <= s <= e <= past_len):
            raise ValueError(f"row {b}: expected 0 <= starts <= ends <= {past_len} (the cache's length), got [{s}, {e})")
    return st, en


def batch_tree_mask(
    parents: Sequence[Any], starts: Any, ends: Any, past_len: int, dtype: Any = None, device: Any = "cpu"
) -> "torch.Tensor":
    """The 4D additive mask (B, 1, T, past_len + T) of one batched tree step, ``T`` the widest
    tree: row ``b``'s node ``i`` sees the cache slots ``[starts[b], ends[b])`` and, among the
    step's slots ``past_len + j``, itself and its ancestors in ``parents[b]``. A padding node
    (``i >= len(parents[b])``) sees only itself (so no attention row is empty).

    Args:
        parents: B parent arrays (each int [T_b], ``parents[0] == -1``, ``parents[i] < i``).
        starts, ends: int [B], each row's valid window of the cache.
        past_len: slots in the cache (``S``).
        dtype: float dtype of the model's attention (default float32).
        device: where the model runs.

    Raises:
        ValueError: a bad parent array, a window outside ``[0, past_len]`` or B == 0.
    """
    import torch

    past_len = as_int(past_len, "past_len")
    st, en = _row_windows(starts, ends, past_len)
    ps = [_parents_array(p) for p in parents]
    if len(ps) != len(st) or not ps:
        raise ValueError(f"parents: expected one parent array per row ({len(st)} rows, at least 1), got {len(ps)}")
    return _batch_mask(ps, st, en, past_len, dtype or torch.float32, torch.device(device))


def _batch_mask(
    ps: Sequence[np.ndarray], st: List[int], en: List[int], past_len: int, dtype: Any, device: Any
) -> "torch.Tensor":
    """:func:`batch_tree_mask` of checked parent arrays and windows."""
    import torch

    blocks = [_bias_cached(p.tobytes(), dtype, torch.device("cpu")) for p in ps]
    t = max(int(blk.shape[0]) for blk in blocks)
    lo = torch.finfo(dtype).min
    slots = torch.arange(past_len)
    window = (slots >= torch.tensor(st).view(-1, 1)) & (slots < torch.tensor(en).view(-1, 1))  # [B, S]
    mask = torch.full((len(st), 1, t, past_len + t), lo, dtype=dtype)
    mask[:, 0, :, :past_len] = torch.where(window, 0.0, lo).to(dtype).unsqueeze(1)
    diag = torch.arange(t)
    mask[:, 0, diag, past_len + diag] = 0.0
    for b, blk in enumerate(blocks):
        n = int(blk.shape[0])
        mask[b, 0, :n, past_len : past_len + n] = blk
    return mask.to(device)


def batch_tree_inputs(
    tokens: Sequence[Any],
    parents: Sequence[Any],
    depths: Sequence[Any],
    starts: Any,
    ends: Any,
    past_len: int,
    dtype: Any = None,
    device: Any = "cpu",
) -> Tuple["torch.Tensor", "torch.Tensor", "torch.Tensor"]:
    """The model inputs of one batched tree step (what :func:`batch_tree_forward` feeds).

    Args:
        tokens, parents, depths: B arrays each, int [T_b] (root first; checked as in
            :func:`tree_forward`).
        starts, ends: int [B], row ``b``'s valid cache slots ``[starts[b], ends[b])``.
        past_len: slots in the cache (``S``); dtype, device: the model's.

    Returns:
        ``(input_ids, attention_mask, position_ids)``: LongTensor [B, T] (padding nodes repeat
        their row's root), the additive mask (B, 1, T, past_len + T) of
        :func:`batch_tree_mask`, LongTensor [B, T] = ``ends[b] - starts[b] + depth``.

    Raises:
        ValueError: bad trees, rows of different counts, windows outside the cache.
    """
    import torch

    past_len = as_int(past_len, "past_len")
    ps = [_parents_array(p) for p in parents]
    if not (len(ps) == len(tokens) == len(depths)):
        raise ValueError(f"tokens, parents, depths: expected one array per row each, got {len(tokens)}, {len(ps)}, {len(depths)}")
    st, en = _row_windows(starts, ends, past_len)
    if len(st) != len(ps) or not ps:
        raise ValueError(f"starts: expected {len(ps)} rows (one per tree, at least 1), got {len(st)}")
    t = max(p.size for p in ps)
    ids = np.zeros((len(ps), t), dtype=np.int64)
    pos = np.zeros((len(ps), t), dtype=np.int64)
    for b, p in enumerate(ps):
        tok = as_array(tokens[b], np.int64, f"tokens[{b}]", 1)
        if tok.shape[0] != p.size:
            raise ValueError(f"tokens[{b}]: expected shape [{p.size}] (= len(parents[{b}])), got {list(tok.shape)}")
        d = _check_depths(depths[b], p)
        ids[b, : p.size], ids[b, p.size :] = tok, tok[0]
        pos[b] = en[b] - st[b]
        pos[b, : p.size] += d
    dev = torch.device(device)
    mask = _batch_mask(ps, st, en, past_len, dtype or torch.float32, dev)
    return torch.from_numpy(ids).to(dev), mask, torch.from_numpy(pos).to(dev)


def batch_tree_forward(
    model: Any,
    cache: Any,
    tokens: Sequence[Any],
    parents: Sequence[Any],
    depths: Sequence[Any],
    *,
    starts: Any,
    ends: Any,
) -> "torch.Tensor":
    """One forward of B rows' trees, each after its own window of the cache; appends ``T``
    entries (the widest tree) to every row of ``cache``.

    Args:
        model: HF causal LM (as for :func:`tree_forward`).
        cache: the model's cache (``DynamicCache``) of B rows and ``S`` slots.
        tokens, parents, depths: B arrays each, int [T_b] (root first; checked as in
            :func:`tree_forward`).
        starts, ends: int [B], row ``b``'s valid cache slots ``[starts[b], ends[b])``; its
            nodes sit at positions ``ends[b] - starts[b] + depths[b]``.

    Returns:
        torch.Tensor [B, T, V]: row ``b``'s logits after each of its nodes in ``[:T_b]``
        (float32; rows past ``T_b`` belong to padding nodes).

    Raises:
        ValueError: bad trees, rows of different counts, windows outside the cache.
    """
    import torch

    from tokenloom.runtime.kvcache import cache_length

    dtype, device = model_dtype_device(model)
    ids, mask, pos = batch_tree_inputs(tokens, parents, depths, starts, ends, cache_length(cache), dtype, device)
    with grouped_attention():
        logits = step_logits(model, cache, ids, pos, mask)
    return logits if logits.dtype == torch.float32 else logits.float()
