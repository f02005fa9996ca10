"""Token Recycling state (thin wrapper over the Rust ``_core.TokenRecycler``).

The recycler keeps an adjacency matrix ``A[vocab_size, k]`` (uint32) of candidate next tokens per
token. ``draft(root)`` expands a static template by BFS (node ``i`` gets ``A[token(parent(i)),
rank(i)]``); ``update(tokens, topk_ids)`` overwrites the row of every verified tree position with
the target's top-k after it (**last position wins among duplicated tokens**). Rows start at zero
and are never reset, so one recycler carries its "hot start" across requests;
``save``/``load`` carry it across processes.

Templates: ``"2.2.2"`` (the paper's 80-node tree, 81 tokens with the root), the nested
``"2.2.2-N"`` for N in :data:`NESTED_SIZES` (each a subtree-closed subset of every larger one),
or a list of rank paths such as ``[[0], [1], [0, 0]]``.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array, as_int

__all__ = [
    "NESTED_SIZES",
    "DraftTree",
    "TemplateSpec",
    "TokenRecycler",
    "default_recycler",
    "nested_template_order",
    "reset_default_recyclers",
    "template_names",
    "template_parents",
    "template_paths",
]

DraftTree = _core.DraftTree
TemplateSpec = Union[str, Sequence[Sequence[int]]]

#: Sizes (draft nodes, root excluded) of the nested templates ``"2.2.2-N"``.
NESTED_SIZES: Tuple[int, ...] = (1, 4, 8, 16, 24, 32, 48, 64, 80)


def _template_arg(template: TemplateSpec) -> Any:
    if isinstance(template, str):
        return template
    try:
        out = [[int(r) for r in path] for path in template]
        if all(isinstance(r, (int, np.integer)) for path in template for r in path):
            return out
        raise TypeError("non-integer rank")
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"template: expected a name (one of {template_names()}) or a list of rank paths "
            f"(list[list[int]]), got {template!r}"
        ) from e


def template_names() -> List[str]:
    """Names of the built-in templates: ``"2.2.2"`` and ``"2.2.2-N"``."""
    return list(_core.template_names())


def template_paths(template: TemplateSpec) -> List[List[int]]:
    """Validated rank paths of ``template`` in canonical order (node ``i + 1`` is path ``i``).

    Raises:
        ValueError: empty, duplicate, negative, not subtree-closed, or unknown name.
    """
    return [list(p) for p in _core.template_paths(_template_arg(template))]


def template_parents(template: TemplateSpec) -> np.ndarray:
    """Parent array int64 [T] of the template's tree (root included)."""
    return _core.template_parents(_template_arg(template))


def nested_template_order() -> List[List[int]]:
    """The 80 paths of "2.2.2" in nested order: ``"2.2.2-N"`` is the first N of them."""
    return [list(p) for p in _core.nested_template_order()]


class TokenRecycler:
    """The adjacency matrix [vocab_size, k] and its drafting template.

    Args:
        vocab_size: rows of the matrix (the model's vocabulary size).
        k: candidates kept per token (8 in the paper).
        template: a template name or a list of rank paths (see module docs).

    Raises:
        ValueError: ``vocab_size`` or ``k`` is 0, bad template, or a template rank >= k.
    """

    __slots__ = ("_r", "stats")

    def __init__(self, vocab_size: int, k: int = 8, template: TemplateSpec = "2.2.2"):
        self._r = _core.TokenRecycler(as_int(vocab_size, "vocab_size"), as_int(k, "k"), _template_arg(template))
        #: Acceptance statistics kept with the matrix (used by ``tree="auto"``), or None.
        self.stats: Any = None

    @classmethod
    def _wrap(cls, inner: Any) -> "TokenRecycler":
        obj = cls.__new__(cls)
        obj._r = inner
        obj.stats = None
        return obj

    @property
    def vocab_size(self) -> int:
        return int(self._r.vocab_size)

    @property
    def k(self) -> int:
        return int(self._r.k)

    @property
    def template(self) -> List[List[int]]:
        """The template's rank paths in canonical order."""
        return [list(p) for p in self._r.template]

    @property
    def tree_size(self) -> int:
        """Tokens per drafted tree, the root included."""
        return int(self._r.tree_size)

    def set_template(self, template: TemplateSpec) -> None:
        """Replace the drafting template (the matrix is kept)."""
        self._r.set_template(_template_arg(template))

    def draft(self, root_token: int) -> Any:
        """Draft the template's tree below ``root_token``.

        Returns:
            DraftTree: ``.tokens``, ``.parents``, ``.depths``, each int64 [T], root first.

        Raises:
            IndexError: ``root_token`` outside ``[0, vocab_size)``.
            TypeError: ``root_token`` is not an int (a float or a string is never truncated).
        """
        return self._r.draft(as_int(root_token, "root_token"))

    def propose(self, last_token: int, past_len: int, *, device: Any = "cpu", dtype: Any = None) -> Any:
        """Draft a tree below ``last_token`` and build the inputs of its forward (step API for
        hand-written loops, see :mod:`tokenloom.step`).

        Args:
            last_token: the newest token of the sequence (not yet in the cache): the root.
            past_len: entries in the caller's KV cache (every token before ``last_token``).
            device: where the model runs. dtype: the model's float dtype (mask), default float32.

        Returns:
            :class:`tokenloom.step.RecyclingStep` with ``input_ids`` [1, T], ``attention_mask``
            (1, 1, T, past_len + T), ``position_ids`` [1, T], ``tree``; then
            ``step.accept(logits) -> (tokens, keep)`` verifies and updates this recycler.

        Raises:
            IndexError: ``last_token`` outside ``[0, vocab_size)``. ValueError: ``past_len < 0``
            or a non-float ``dtype``.
        """
        import torch

        from tokenloom.spec.step import RecyclingStep

        if isinstance(past_len, bool) or not isinstance(past_len, (int, np.integer)) or past_len < 0:
            raise ValueError(f"past_len: expected an int >= 0 (cache entries), got {past_len!r}")
        if isinstance(last_token, bool) or not isinstance(last_token, (int, np.integer)):
            if not (hasattr(last_token, "numel") and last_token.numel() == 1 and not last_token.is_floating_point()):
                raise TypeError(f"last_token: expected an int token id, got {last_token!r}")
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a torch float dtype (the model's), got {dtype!r}")
        return RecyclingStep(self, self.draft(int(last_token)), int(past_len), device, dtype)

    def update(self, tokens: Any, topk_ids: Any) -> None:
        """Row ``tokens[i]`` := ``topk_ids[i]`` for every position in order (last one wins).

        Args:
            tokens: int [n] (numpy, torch or a sequence).
            topk_ids: int [n, k], best candidate first.

        Raises:
            ValueError: shapes; IndexError: ids outside ``[0, vocab_size)``.
        """
        self._r.update(as_array(tokens, np.int64, "tokens", 1), as_array(topk_ids, np.int64, "topk_ids", 2))

    def seed_from_prefill(self, tokens: Any, topk_ids: Any) -> None:
        """Seed rows from the prompt: row ``prompt[i]`` := top-k after position ``i`` (same rule
        as :meth:`update`)."""
        self._r.seed_from_prefill(
            as_array(tokens, np.int64, "tokens", 1), as_array(topk_ids, np.int64, "topk_ids", 2)
        )

    def ranks_of(self, tokens: Any, next_tokens: Any) -> np.ndarray:
        """int64 [n]: first rank of ``next_tokens[i]`` in row ``tokens[i]``, -1 when absent."""
        return self._r.ranks_of(
            as_array(tokens, np.int64, "tokens", 1), as_array(next_tokens, np.int64, "next_tokens", 1)
        )

    def adjacency(self) -> np.ndarray:
        """A copy of the matrix, uint32 [vocab_size, k]."""
        return self._r.adjacency()

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the matrix (not the template) to ``path`` (versioned binary, see ``_core``)."""
        self._r.save(os.fspath(path))

    @classmethod
    def load(
        cls,
        path: Union[str, "os.PathLike[str]"],
        vocab_size: Optional[int] = None,
        k: Optional[int] = None,
        template: TemplateSpec = "2.2.2",
    ) -> "TokenRecycler":
        """Read a matrix written by :meth:`save`.

        Raises:
            OSError: unreadable; ValueError: not a recycler file, bad version, truncated,
            corrupt, or ``vocab_size`` / ``k`` differ from the file's.
        """
        return cls._wrap(_core.TokenRecycler.load(os.fspath(path), vocab_size, k, _template_arg(template)))

    def __repr__(self) -> str:
        return f"TokenRecycler(vocab_size={self.vocab_size}, k={self.k}, tree_size={self.tree_size})"


_DEFAULTS: Dict[Tuple[int, int], TokenRecycler] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_recycler(vocab_size: int, k: int = 8) -> TokenRecycler:
    """The process-wide recycler for ``vocab_size`` (created on first use, then kept: hot start)."""
    with _DEFAULTS_LOCK:
        rec = _DEFAULTS.get((vocab_size, k))
        if rec is None:
            rec = _DEFAULTS[(vocab_size, k)] = TokenRecycler(vocab_size, k)
        return rec


def reset_default_recyclers() -> None:
    """Forget the process-wide recyclers (the next call starts cold)."""
    with _DEFAULTS_LOCK:
        _DEFAULTS.clear()
