"""Token Recycling state (thin wrapper over the Rust ``_core.TokenRecycler``): the matrix.

The recycler keeps an adjacency matrix ``A[vocab_size, k]`` (uint32) of candidate next tokens per
token, and Token Recycling's rules on it, all in the Rust core: ``draft(root, template)``
expands a template by BFS (node ``i`` gets ``A[token(parent(i)), rank(i)]``);
``update(tokens, topk_ids)`` overwrites the row of every verified tree position with the
target's top-k after it (**last position wins among duplicated tokens**);
``move_to_front(tokens, successors)`` is the rule when only the committed tokens are known (the
chain form, :mod:`tokenloom.spec.recycling.chains`). Rows start at zero and are never reset, so
one recycler carries its "hot start" across requests; ``save``/``load`` (or
``to_bytes``/``from_bytes``) carry it across processes, and the per-model default recycler of
``generate(method="recycling")`` is persisted in the user cache directory
(:mod:`tokenloom.spec.persist`; ``persist=False`` or ``TOKENLOOM_PERSIST=0`` opts out).

Templates (:mod:`tokenloom.spec.templates`) belong to the drafters
(:class:`~tokenloom.spec.recycling.drafter.RecyclingDrafter` owns its ``tree``); the step API
takes a drafter (:meth:`tokenloom.spec.step.TreeStep.propose`). The recycler's own template
(``template=``, ``.template``, ``.set_template``, ``.tree_size``, ``draft(root)`` without a
template) and ``recycler.propose(...)`` still work, with a DeprecationWarning. The matrix is
locked inside the Rust object: one recycler may serve several threads.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, List, Optional, Union

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array, as_int
from tokenloom.spec.base import DraftTree
from tokenloom.spec.persist import PerModelStates
from tokenloom.spec.templates import Template, TemplateSpec, compile_template, template_arg

__all__ = ["STATE_VERSION", "DraftTree", "TokenRecycler", "default_recycler", "recycler_changed", "reset_default_recyclers", "state_name"]

#: The template the recycler drafted with before templates moved to the drafters ("2.2.2"
#: when k >= 8), kept for the deprecated template API only.
LEGACY_TEMPLATE = "2.2.2"


def _deprecated(what: str, instead: str) -> None:
    warnings.warn(f"TokenRecycler: {what} is deprecated (templates belong to the drafter); {instead}", DeprecationWarning, stacklevel=3)


def _legacy_template(k: int) -> Any:
    """The recycler's own template when none is given (the deprecated template API drafts with
    it): "2.2.2" when its ranks fit ``k``, else the one-node chain."""
    return LEGACY_TEMPLATE if k >= 8 else [[0]]


class TokenRecycler:
    """The adjacency matrix [vocab_size, k] and Token Recycling's update rules on it.

    Args:
        vocab_size: rows of the matrix (the model's vocabulary size).
        k: candidates kept per token (8 in the paper).
        template: deprecated: the template belongs to the drafter
            (``RecyclingDrafter(recycler, tree=...)``) or to :meth:`draft`.

    Raises:
        ValueError: ``vocab_size`` or ``k`` out of range (``1 <= vocab_size <= 2**24``,
            ``vocab_size * k <= 2**28``), bad template, or a template rank >= k.
        TypeError: ``vocab_size`` or ``k`` is not an int.
    """

    __slots__ = ("_r", "__weakref__")

    def __init__(self, vocab_size: int, k: int = 8, template: Optional[TemplateSpec] = None):
        # By value: a float or a string is a TypeError, a size out of range a ValueError.
        vocab_size, k = as_int(vocab_size, "vocab_size"), as_int(k, "k")
        if template is None:
            template = _legacy_template(k)
        else:
            _deprecated("TokenRecycler(template=...)", "pass the template to the drafter (RecyclingDrafter(recycler, tree=...)) or to draft(root, template)")
        self._r = _core.TokenRecycler(vocab_size, k, template_arg(template))

    @classmethod
    def _wrap(cls, inner: Any) -> "TokenRecycler":
        obj = cls.__new__(cls)
        obj._r = inner
        return obj

    @classmethod
    def _wrap_loaded(cls, load: Any, template: Optional[TemplateSpec]) -> "TokenRecycler":
        """A recycler from ``load(template)`` (the core's load / from_bytes)."""
        if template is not None:
            _deprecated("load / from_bytes(template=...)", "pass the template to the drafter or to draft(root, template)")
            return cls._wrap(load(template_arg(template)))
        inner = load([[0]])
        if inner.k >= 8:
            inner.set_template(LEGACY_TEMPLATE)
        return cls._wrap(inner)

    @property
    def vocab_size(self) -> int:
        return int(self._r.vocab_size)

    @property
    def k(self) -> int:
        return int(self._r.k)

    @property
    def core(self) -> Any:
        """The ``_core.TokenRecycler`` under this recycler (for kernels that read it directly)."""
        return self._r

    @property
    def template(self) -> List[List[int]]:
        """Deprecated: the recycler's own template's rank paths in canonical order."""
        _deprecated("recycler.template", "the drafter owns its template (RecyclingDrafter.template)")
        return [list(p) for p in self._r.template]

    @property
    def tree_size(self) -> int:
        """Deprecated: tokens per tree of the recycler's own template, the root included."""
        _deprecated("recycler.tree_size", "use the drafter's template (RecyclingDrafter.template.size)")
        return int(self._r.tree_size)

    def set_template(self, template: TemplateSpec) -> None:
        """Deprecated: replace the recycler's own template (the matrix is kept)."""
        _deprecated("recycler.set_template(...)", "pass the template to the drafter (RecyclingDrafter(recycler, tree=...))")
        self._r.set_template(template_arg(template))

    def draft(self, root_token: int, template: Union[None, TemplateSpec, Template] = None) -> DraftTree:
        """Draft the tree of ``template`` below ``root_token`` (one gather per node, in the core).

        Args:
            root_token: the newest token (an int id).
            template: a compiled :class:`~tokenloom.spec.templates.Template` (fastest), a name
                or rank paths. None (deprecated) uses the recycler's own template.

        Returns:
            DraftTree: ``.tokens``, ``.parents``, ``.depths``, each int64 [T], root first
            (a deterministic draft).

        Raises:
            TypeError: ``root_token`` not an int. IndexError: outside ``[0, vocab_size)``.
            ValueError: a template rank >= k.
        """
        root = as_int(root_token, "root_token")
        if template is None:
            _deprecated("draft(root) without a template", "pass one: draft(root, template)")
        t = None if template is None else compile_template(template)
        d = self._r.draft(root, t)
        return DraftTree(d.tokens, d.parents, d.depths)

    def propose(self, last_token: int, past_len: int, *, device: Any = "cpu", dtype: Any = None) -> Any:
        """Deprecated: the step API takes a drafter,
        ``TreeStep.propose(RecyclingDrafter(recycler, tree=...), last_token, past_len, ...)``
        (:mod:`tokenloom.spec.step`). This drafts with the recycler's own template."""
        _deprecated(
            "recycler.propose(...)",
            "use TreeStep.propose(RecyclingDrafter(recycler, tree=..., seed_prefill=False), last_token, past_len, ...)",
        )
        from tokenloom.spec.recycling.drafter import RecyclingDrafter  # the deprecated path only
        from tokenloom.spec.step import TreeStep

        drafter = RecyclingDrafter(self, tree=[list(p) for p in self._r.template], seed_prefill=False)
        return TreeStep.propose(drafter, last_token, past_len, device=device, dtype=dtype)

    def update(self, tokens: Any, topk_ids: Any) -> None:
        """Row ``tokens[i]`` := ``topk_ids[i]`` for every position in order (last one wins).

        Args:
            tokens: int [n] (numpy, torch or a sequence).
            topk_ids: int [n, k], best candidate first.

        Raises:
            ValueError: shapes; IndexError: ids outside ``[0, vocab_size)``.
        """
        self._r.update(as_array(tokens, np.int64, "tokens", 1), as_array(topk_ids, np.int64, "topk_ids", 2))

    def move_to_front(self, tokens: Any, successors: Any, *, empty: Any = None) -> None:
        """Move-to-front, the update rule from committed tokens alone (no top-k): for every pair
        ``i`` in order, ``successors[i]`` moves to rank 0 of row ``tokens[i]``, the row's other
        candidates keep their order below it (copies of it are dropped) and the row is padded
        with it to ``k``. Rows in ``empty`` start with no candidates (rows never written: a new
        row becomes ``[s] * k``). Every id is checked before any row is written.

        Args:
            tokens: int [n]. successors: int [n], the token that followed each.
            empty: int [m] rows read as empty at their first pair (None: none).

        Raises:
            ValueError: lengths differ, not 1-D, non-integer ids. IndexError: an id outside
            ``[0, vocab_size)``.
        """
        self._r.move_to_front(
            as_array(tokens, np.int64, "tokens", 1),
            as_array(successors, np.int64, "successors", 1),
            None if empty is None else as_array(empty, np.int64, "empty", 1),
        )

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

    def rows(self, tokens: Any) -> np.ndarray:
        """uint32 [n, k]: the rows of ``tokens`` (int [n]), best candidate first.

        Raises:
            IndexError: an id outside ``[0, vocab_size)``.
        """
        return self._r.rows(as_array(tokens, np.int64, "tokens", 1))

    def check_vocab(self, vocab_size: int) -> None:
        """Check that this recycler fits a model's vocabulary ``[0, vocab_size)``: a row for
        every id, and no candidate past it (run when a drafter binds the recycler to a model: a
        candidate past the vocabulary would fail inside the model's embedding).

        Raises:
            ValueError: fewer rows than ``vocab_size``, or a row of an id below it holding a
                candidate >= ``vocab_size``.
        """
        if self.vocab_size < vocab_size:
            raise ValueError(f"recycler: vocab_size {self.vocab_size} is smaller than the model's {vocab_size}")
        if self.vocab_size > vocab_size:  # equal: the matrix holds only ids below it already
            rows = self.adjacency()[:vocab_size]
            top = int(rows.max()) if rows.size else 0
            if top >= vocab_size:
                raise ValueError(f"recycler: holds candidate id {top}, outside the model's vocabulary [0, {vocab_size})")

    def adjacency(self) -> np.ndarray:
        """A copy of the matrix, uint32 [vocab_size, k]."""
        return self._r.adjacency()

    def to_bytes(self) -> bytes:
        """The matrix as bytes, in the format of :meth:`save`."""
        return self._r.to_bytes()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        vocab_size: Optional[int] = None,
        k: Optional[int] = None,
        template: Optional[TemplateSpec] = None,
    ) -> "TokenRecycler":
        """A recycler from :meth:`to_bytes` output (checked like :meth:`load`; ``template``
        deprecated).

        Raises:
            TypeError: ``data`` is not bytes. ValueError: not recycler data, bad version,
            truncated, corrupt, or ``vocab_size`` / ``k`` differ from the data's.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        return cls._wrap_loaded(lambda t: _core.TokenRecycler.from_bytes(bytes(data), vocab_size, k, t), template)

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the matrix to ``path`` (versioned binary, see ``_core``)."""
        self._r.save(os.fspath(path))

    @classmethod
    def load(
        cls,
        path: Union[str, "os.PathLike[str]"],
        vocab_size: Optional[int] = None,
        k: Optional[int] = None,
        template: Optional[TemplateSpec] = None,
    ) -> "TokenRecycler":
        """Read a matrix written by :meth:`save` (``template`` deprecated).

        Raises:
            OSError: unreadable; ValueError: not a recycler file, bad version, truncated,
            corrupt, or ``vocab_size`` / ``k`` differ from the file's.
        """
        path = os.fspath(path)
        return cls._wrap_loaded(lambda t: _core.TokenRecycler.load(path, vocab_size, k, t), template)

    def __repr__(self) -> str:
        return f"TokenRecycler(vocab_size={self.vocab_size}, k={self.k})"


#: Version of the persisted matrix (the payload is :meth:`TokenRecycler.to_bytes`, which carries
#: its own format version too).
STATE_VERSION = 1

_DEFAULTS = PerModelStates()


def state_name(k: int) -> str:
    """The name the default recycler's matrix is persisted under (:mod:`tokenloom.spec.persist`)."""
    return f"recycler-k{k}"


def default_recycler(vocab_size: int, k: int = 8, *, model: Any = None, persist: Optional[bool] = None) -> TokenRecycler:
    """The process-wide recycler (created on first use, then kept: hot start across calls).

    With ``model`` there is one recycler per model (:func:`tokenloom.spec.persist.model_key`),
    and, when persistence is on (``persist=True``, or None and ``TOKENLOOM_PERSIST`` not 0), it
    starts from the matrix the last process saved for that model (hot start across processes;
    a corrupted or outdated file gives one warning and a cold start). Without ``model``: one
    recycler per ``vocab_size``, never persisted.

    Raises:
        TypeError: ``persist`` is not None or a bool.
    """
    return _DEFAULTS.get(model, (vocab_size, k), state_name(k), STATE_VERSION, persist,
                         lambda: TokenRecycler(vocab_size, k),
                         lambda b: TokenRecycler.from_bytes(b, vocab_size, k))


def recycler_changed(recycler: TokenRecycler, model: Any, persist: Optional[bool] = None) -> None:
    """After a request on ``default_recycler(..., model=model)``: save its matrix (throttled,
    atomic; see :class:`~tokenloom.spec.persist.StateSaver`) when persistence is on. A no-op for
    any other recycler."""
    _DEFAULTS.changed(recycler, model, state_name(recycler.k), persist)


def reset_default_recyclers() -> None:
    """Forget the process-wide recyclers (the next call starts from the saved state, or cold)."""
    _DEFAULTS.reset()
