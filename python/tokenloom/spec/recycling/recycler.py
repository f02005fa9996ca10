"""Token Recycling state (thin wrapper over the Rust ``_core.TokenRecycler``).

The recycler keeps an adjacency matrix ``A[vocab_size, k]`` (uint32) of candidate next tokens per
token. ``draft(root)`` expands a static template by BFS (node ``i`` gets ``A[token(parent(i)),
rank(i)]``); ``update(tokens, topk_ids)`` overwrites the row of every verified tree position with
the target's top-k after it (**last position wins among duplicated tokens**). Rows start at zero
and are never reset, so one recycler carries its "hot start" across requests;
``save``/``load`` (or ``to_bytes``/``from_bytes``) carry it across processes, and the per-model
default recycler of ``generate(method="recycling")`` is persisted in the user cache directory
(:mod:`tokenloom.spec.persist`; ``persist=False`` or ``TOKENLOOM_PERSIST=0`` opts out).

Templates: see :mod:`tokenloom.spec.templates`. ``draft(root, template=...)`` drafts with a
given compiled template, so each drafter owns its template and the recycler shares only the
matrix. The matrix is locked inside the Rust object: one recycler may serve several threads.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Union

import numpy as np

from tokenloom import _core
from tokenloom._arrays import as_array, as_int
from tokenloom.spec.base import DraftTree
from tokenloom.spec.persist import PerModelStates
from tokenloom.spec.recycling.drafter import RecyclingDrafter
from tokenloom.spec.step import TreeStep
from tokenloom.spec.templates import Template, TemplateSpec, compile_template, template_arg

__all__ = ["STATE_VERSION", "DraftTree", "TokenRecycler", "default_recycler", "recycler_changed", "reset_default_recyclers", "state_name"]


class TokenRecycler:
    """The adjacency matrix [vocab_size, k] and its drafting template.

    Args:
        vocab_size: rows of the matrix (the model's vocabulary size).
        k: candidates kept per token (8 in the paper).
        template: a template name or a list of rank paths (see module docs).

    Raises:
        ValueError: ``vocab_size`` or ``k`` out of range (``1 <= vocab_size <= 2**24``,
            ``vocab_size * k <= 2**28``), bad template, or a template rank >= k.
        TypeError: ``vocab_size`` or ``k`` is not an int.
    """

    __slots__ = ("_r", "__weakref__")

    def __init__(self, vocab_size: int, k: int = 8, template: TemplateSpec = "2.2.2"):
        # By value: a float or a string is a TypeError, a size out of range a ValueError.
        self._r = _core.TokenRecycler(as_int(vocab_size, "vocab_size"), as_int(k, "k"), template_arg(template))

    @classmethod
    def _wrap(cls, inner: Any) -> "TokenRecycler":
        obj = cls.__new__(cls)
        obj._r = inner
        return obj

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
        """The template's rank paths in canonical order."""
        return [list(p) for p in self._r.template]

    @property
    def tree_size(self) -> int:
        """Tokens per drafted tree, the root included."""
        return int(self._r.tree_size)

    def set_template(self, template: TemplateSpec) -> None:
        """Replace the drafting template (the matrix is kept)."""
        self._r.set_template(template_arg(template))

    def draft(self, root_token: int, template: Union[None, TemplateSpec, Template] = None) -> DraftTree:
        """Draft a tree below ``root_token`` with ``template`` (default: the recycler's own).

        Args:
            root_token: the newest token (an int id).
            template: a compiled :class:`~tokenloom.spec.templates.Template` (fastest), a name
                or rank paths; None uses the recycler's own template.

        Returns:
            DraftTree: ``.tokens``, ``.parents``, ``.depths``, each int64 [T], root first
            (a deterministic draft).

        Raises:
            TypeError: ``root_token`` not an int. IndexError: outside ``[0, vocab_size)``.
            ValueError: a template rank >= k.
        """
        root = as_int(root_token, "root_token")
        t = None if template is None else compile_template(template)
        d = self._r.draft(root, t)
        return DraftTree(d.tokens, d.parents, d.depths)

    def propose(self, last_token: int, past_len: int, *, device: Any = "cpu", dtype: Any = None) -> TreeStep:
        """Step API for hand-written loops (:mod:`tokenloom.spec.step`): draft a tree below
        ``last_token`` with the recycler's own template and build the inputs of its forward.
        Same as ``TreeStep.propose(RecyclingDrafter(self, tree=self.template), ...)``.

        Args:
            last_token: the newest token of the sequence (not yet in the cache): the root.
            past_len: entries in the caller's KV cache (every token before ``last_token``).
            device: where the model runs. dtype: the model's float dtype (mask), default float32.

        Returns:
            :class:`~tokenloom.spec.step.TreeStep` with ``input_ids`` [1, T], ``attention_mask``
            (1, 1, T, past_len + T), ``position_ids`` [1, T], ``tree``; then
            ``step.accept(logits) -> (tokens, keep)`` verifies and updates this recycler.

        Raises:
            TypeError: ``last_token`` not an int. IndexError: outside ``[0, vocab_size)``.
            ValueError: ``past_len < 0`` or a non-float ``dtype``.
        """
        drafter = RecyclingDrafter(self, tree=self.template, seed_prefill=False)
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
        """The matrix (not the template) as bytes, in the format of :meth:`save`."""
        return self._r.to_bytes()

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        vocab_size: Optional[int] = None,
        k: Optional[int] = None,
        template: TemplateSpec = "2.2.2",
    ) -> "TokenRecycler":
        """A recycler from :meth:`to_bytes` output (checked like :meth:`load`).

        Raises:
            TypeError: ``data`` is not bytes. ValueError: not recycler data, bad version,
            truncated, corrupt, or ``vocab_size`` / ``k`` differ from the data's.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        return cls._wrap(_core.TokenRecycler.from_bytes(bytes(data), vocab_size, k, template_arg(template)))

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
        return cls._wrap(_core.TokenRecycler.load(os.fspath(path), vocab_size, k, template_arg(template)))

    def __repr__(self) -> str:
        return f"TokenRecycler(vocab_size={self.vocab_size}, k={self.k}, tree_size={self.tree_size})"


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
