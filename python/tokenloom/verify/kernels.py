"""Lossless verification of draft trees and chains (thin wrappers over the Rust kernels).

Conventions: node 0 is the root (its token is already in the sequence), ``parents[0] == -1``,
``parents[i] < i``; the target's prediction at node ``i`` (``target_argmax[i]``,
``target_probs[i]``) is about the token that follows it. A result's ``path`` lists the accepted
nodes from 0; its ``tokens`` are the accepted draft tokens then one token from the target.

Inputs may be numpy arrays, sequences or torch tensors. Probabilities stay float32 / float64
without a copy (CPU tensors cross through ``.numpy()``). For tensors on an accelerator the
vocabulary-wide work runs on the device with torch (the per-node samples, the gathers and
residuals) and only ids and a few scalars reach the host: ``[T, V]`` is never copied to walk a
tree. Randomness comes from the counter-based generator of ``tokenloom-core`` (``seed``), so a
seed fixes the result on either path.
"""

from __future__ import annotations

from typing import Any, List, Optional

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array, as_float_array
from tokenloom.device import is_accelerator
from tokenloom.sampling.seeds import as_seed
from tokenloom.verify.result import VerifyResult

__all__ = [
    "VerifyResult",
    "verify_chain",
    "verify_chain_batch",
    "verify_greedy",
    "verify_greedy_batch",
    "verify_tree",
    "verify_tree_batch",
]

_I64 = np.int64
_new_tuple = tuple.__new__


def _result(pair: Any) -> VerifyResult:
    return _new_tuple(VerifyResult, pair)  # type: ignore[no-any-return]


def _on_device(*xs: Any) -> bool:
    """Whether a tensor argument is on an accelerator (only tensors count: a string passed as
    data is refused by the host path's checks, never read as a device name)."""
    return any(hasattr(x, "detach") and is_accelerator(x) for x in xs)


def verify_greedy(parents: Any, tokens: Any, target_argmax: Any) -> VerifyResult:
    """Greedy (temperature 0) verification of one tree.

    Args:
        parents: int [T]; ``parents[0] == -1``, ``0 <= parents[i] < i``.
        tokens: int [T]; token of each node (the root's is ignored).
        target_argmax: int [T]; the target's argmax after each node.

    Returns:
        VerifyResult. Among duplicate siblings the lowest node index is taken.

    Raises:
        ValueError: lengths differ, the tree is empty or not topologically ordered.
        IndexError: a negative target id.
    """
    try:  # fast path: int64 C-contiguous numpy arrays go straight to the kernel
        return _new_tuple(VerifyResult, _core.verify_greedy(parents, tokens, target_argmax))  # type: ignore[no-any-return]
    except TypeError:  # anything else is converted (or refused with a clear message) below
        pass
    except ValueError:
        if all(type(x) is np.ndarray and x.dtype == _I64 and x.flags.c_contiguous for x in (parents, tokens, target_argmax)):
            raise
    return _new_tuple(  # type: ignore[no-any-return]
        VerifyResult,
        _core.verify_greedy(
            as_array(parents, _I64, "parents", 1),
            as_array(tokens, _I64, "tokens", 1),
            as_array(target_argmax, _I64, "target_argmax", 1),
        ),
    )


def verify_greedy_batch(parents: Any, tokens: Any, target_argmax: Any, lengths: Any) -> List[VerifyResult]:
    """Greedy verification of B padded trees: arrays [B, T_max], ``lengths`` [B]."""
    rows = _core.verify_greedy_batch(
        as_array(parents, _I64, "parents", 2),
        as_array(tokens, _I64, "tokens", 2),
        as_array(target_argmax, _I64, "target_argmax", 2),
        as_array(lengths, _I64, "lengths", 1),
    )
    return [_result(r) for r in rows]


def verify_tree(
    parents: Any,
    tokens: Any,
    target_probs: Any,
    draft_probs: Any = None,
    *,
    seed: Optional[int] = None,
    replacement: bool = True,
) -> VerifyResult:
    """Lossless (exact) verification of one draft tree by rejection sampling.

    ``draft_probs=None`` (deterministic drafts: Token Recycling, n-gram, retrieval): at each
    visited node draw ``y ~ target_probs[node]``; descend into the lowest-index child carrying
    ``y``, else emit ``y`` and stop. Exact for any tree, duplicate siblings included.

    ``draft_probs`` given (the children of node ``i`` were drawn from ``draft_probs[i]``):
    SpecInfer's multi-draft rule; ``replacement=False`` is Sequoia's variant for children drawn
    without replacement (e.g. Gumbel-top-k), where a rejected token's draft probability is set
    to 0 and the draft row renormalised.

    Args:
        parents: int [T]; ``parents[0] == -1``, ``0 <= parents[i] < i``.
        tokens: int [T]; token of each node, in ``[0, V)`` (the root's is ignored).
        target_probs: float [T, V]; rows finite, >= 0, summing to 1 within 1e-4.
        draft_probs: float [T, V] (same dtype) or None.
        seed: 64-bit seed (None: fresh entropy); the result is a function of the seed.
        replacement: whether children were drawn with replacement.

    Returns:
        VerifyResult.

    Raises:
        ValueError: bad shapes or dtypes, an empty or unordered tree, a bad probability row.
            On the CPU path a row is checked in full when the walk reads it in full (to sample
            or to form a residual); an acceptance test checks only the two entries it reads.
        IndexError: a token outside ``[0, V)``.
    """
    s = as_seed(seed)
    if _on_device(target_probs, draft_probs):
        from tokenloom.verify.device import verify_tree_torch

        return verify_tree_torch(parents, tokens, target_probs, draft_probs, s, 0, replacement)
    target = as_float_array(target_probs, "target_probs", 2)
    draft = None if draft_probs is None else _same_dtype(as_float_array(draft_probs, "draft_probs", 2), target)
    return _result(
        _core.verify_tree(
            as_array(parents, _I64, "parents", 1),
            as_array(tokens, _I64, "tokens", 1),
            target,
            draft,
            s,
            bool(replacement),
        )
    )


def verify_tree_batch(
    parents: Any,
    tokens: Any,
    target_probs: Any,
    draft_probs: Any = None,
    lengths: Any = None,
    *,
    seed: Optional[int] = None,
    replacement: bool = True,
) -> List[VerifyResult]:
    """:func:`verify_tree` over B padded trees; tree ``b`` uses stream ``b`` of ``seed``.

    Args:
        parents, tokens: int [B, T_max].
        target_probs, draft_probs: float [B, T_max, V] (the batch axis may be a broadcast view).
        lengths: int [B], nodes used per tree (root included); default all T_max.
        seed, replacement: as in :func:`verify_tree`.

    Returns:
        list of B VerifyResult.

    Raises:
        ValueError / IndexError: as :func:`verify_tree`; a length above T_max is an IndexError.
    """
    s = as_seed(seed)
    if _on_device(target_probs, draft_probs):
        from tokenloom.verify.device import verify_tree_batch_torch

        return verify_tree_batch_torch(parents, tokens, target_probs, draft_probs, lengths, s, replacement)
    p = as_array(parents, _I64, "parents", 2)
    target = as_float_array(target_probs, "target_probs", 3)
    draft = None if draft_probs is None else _same_dtype(as_float_array(draft_probs, "draft_probs", 3), target)
    rows = _core.verify_tree_batch(
        p,
        as_array(tokens, _I64, "tokens", 2),
        target,
        _lengths(lengths, p.shape),
        draft,
        s,
        bool(replacement),
    )
    return [_result(r) for r in rows]


def verify_chain(draft_tokens: Any, draft_probs: Any, target_probs: Any, *, seed: Optional[int] = None) -> VerifyResult:
    """Chain speculative sampling with the bonus token (Leviathan / Chen; the semantics of
    FlashInfer's ``chain_speculative_sampling``).

    Step ``i`` accepts ``draft_tokens[i]`` with probability ``min(1, p_i(x) / q_i(x))``; at the
    first rejection it emits ``y ~ norm(max(0, p_i - q_i))``; if all are accepted it emits the
    bonus ``y ~ target_probs[n]``.

    Args:
        draft_tokens: int [n], in ``[0, V)``.
        draft_probs: float [n, V]; ``q_i``, from which draft token ``i`` was drawn.
        target_probs: float [n + 1, V] (same dtype); ``p_i``, row ``n`` is the bonus row.
        seed: 64-bit seed (None: fresh entropy).

    Returns:
        VerifyResult with ``path = [0, 1, .., k]`` (node ``i + 1`` carries draft token ``i``).

    Raises:
        ValueError: bad shapes or dtypes, a bad probability row. IndexError: a bad token.
    """
    s = as_seed(seed)
    if _on_device(draft_probs, target_probs):
        from tokenloom.verify.device import verify_chain_torch

        return verify_chain_torch(draft_tokens, draft_probs, target_probs, s, 0)
    target = as_float_array(target_probs, "target_probs", 2)
    draft = _same_dtype(as_float_array(draft_probs, "draft_probs", 2), target)
    return _result(_core.verify_chain(as_array(draft_tokens, _I64, "draft_tokens", 1), draft, target, s))


def verify_chain_batch(
    draft_tokens: Any, draft_probs: Any, target_probs: Any, lengths: Any = None, *, seed: Optional[int] = None
) -> List[VerifyResult]:
    """:func:`verify_chain` over B padded chains; chain ``b`` uses stream ``b`` of ``seed``.

    Args:
        draft_tokens: int [B, n_max]; draft_probs: float [B, n_max, V];
        target_probs: float [B, n_max + 1, V]; lengths: int [B] drafts per chain (default n_max).
    """
    s = as_seed(seed)
    if _on_device(draft_probs, target_probs):
        from tokenloom.verify.device import verify_chain_batch_torch

        return verify_chain_batch_torch(draft_tokens, draft_probs, target_probs, lengths, s)
    x = as_array(draft_tokens, _I64, "draft_tokens", 2)
    target = as_float_array(target_probs, "target_probs", 3)
    draft = _same_dtype(as_float_array(draft_probs, "draft_probs", 3), target)
    rows = _core.verify_chain_batch(x, draft, target, _lengths(lengths, x.shape), s)
    return [_result(r) for r in rows]


def _same_dtype(draft: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The draft in the target's dtype (the kernels read both with one element type)."""
    return draft if draft.dtype == target.dtype else draft.astype(target.dtype)


def _lengths(lengths: Any, shape: Any) -> np.ndarray:
    if lengths is None:
        return np.full(shape[0], shape[1], dtype=np.int64)
    return as_array(lengths, _I64, "lengths", 1)
