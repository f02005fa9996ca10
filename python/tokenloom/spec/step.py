"""Step API for people who own their decoding loop (serving engines, research code): a drafter
proposes a tree and :class:`TreeStep` builds the model inputs of ONE tree forward;
``step.verify(logits)`` verifies (the same :class:`~tokenloom.verify.policy.TreeVerifier` as
:func:`tokenloom.generate`), lets the drafter learn and says which cache entries to keep. The
model call and the cache stay in the caller's hands.

Greedy loop over an HF model with a ``DynamicCache`` already holding ``past`` tokens (the
prompt after a prefill) and ``last`` the newest token, not yet in the cache::

    drafter = RecyclingDrafter(recycler, tree="2.2.2-16")   # once; any Drafter works
    step = TreeStep.propose(drafter, last, past, device=model.device, dtype=model.dtype)
    logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                   position_ids=step.position_ids, **cache_arg(model, cache)).logits
    new_tokens, keep = step.verify(logits)              # keep: LongTensor [past + len(new)]
    for layer in cache.layers:                          # or kvcache.compact_cache(cache, past, step.path)
        layer.keys, layer.values = layer.keys.index_select(2, keep), layer.values.index_select(2, keep)
    past, last = past + len(new_tokens), new_tokens[-1]

A model with grouped-query attention (fewer key/value heads than query heads) runs a masked
step faster inside ``with tokenloom.runtime.gqa.grouped_attention():`` (keys and values are not
copied per query head; the same logits up to rounding), as tokenloom's own loop does. Inside it,
``tokenloom.runtime.leanforward.step_logits(model, cache, step.input_ids, step.position_ids,
step.attention_mask)`` gives the same logits as the ``model(...)`` call above, bit for bit,
without transformers' module machinery where that applies (its own Llama; else it calls the
model).

Invariant after a step: the cache holds ``past + len(new_tokens)`` entries, one per token of the
sequence except the newest (``new_tokens[-1]``), which is the next root.

:class:`BatchTreeStep` is the same over B rows of one cache (one drafter per row, every row's
tree in one forward); the cache's per-row windows are described in
:mod:`tokenloom.runtime.kvcache` (``examples/batch_loop.py``)::

    step = BatchTreeStep.propose(drafters, lasts, starts, ends, past, device=..., dtype=...)
    logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                   position_ids=step.position_ids, **cache_arg(model, cache)).logits
    new_tokens = step.accept(logits)                    # one list per row
    ends = compact_rows(cache, past, ends, step.paths)  # each row keeps its accepted path
    past = cache_length(cache)
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom._arrays import as_int
from tokenloom.spec.base import DraftTree, Drafter

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["BatchTreeStep", "TreeStep"]


class TreeStep:
    """One drafted tree and the model inputs of its forward.

    Attributes:
        drafter: the drafter that proposed it (it learns in :meth:`verify`).
        tree: the :class:`~tokenloom.spec.base.DraftTree` (``tokens``, ``parents``,
            ``depths``: int64 [T]).
        past_len: cache entries before the tree.
        input_ids: LongTensor [1, T], the node tokens (root first).
        attention_mask: additive float mask (1, 1, T, past_len + T), 0 = see, dtype min = hide.
        position_ids: LongTensor [1, T], ``past_len + depth``.
        path: after :meth:`verify`, the accepted node indices (int64 [n], starting with 0), the
            argument :func:`tokenloom.runtime.kvcache.compact_cache` takes.
    """

    __slots__ = ("drafter", "tree", "past_len", "input_ids", "attention_mask", "position_ids", "path", "_done")

    def __init__(self, drafter: Drafter, tree: DraftTree, past_len: int, device: Any, dtype: Any):
        import torch

        from tokenloom.runtime.treeattn import tree_attention_mask, tree_position_ids

        self.drafter = drafter
        self.tree = tree
        self.past_len = past_len
        dev = torch.device(device)
        self.input_ids = torch.from_numpy(tree.tokens).to(dev).view(1, -1)
        self.attention_mask = tree_attention_mask(tree.parents, past_len, dtype, dev)
        self.position_ids = tree_position_ids(tree.depths, past_len, dev)
        self.path: Optional[np.ndarray] = None
        self._done = False

    @classmethod
    def propose(cls, drafter: Drafter, last_token: int, past_len: int, *, device: Any = "cpu", dtype: Any = None) -> "TreeStep":
        """``drafter.propose(last_token, past_len)`` and the inputs of its forward.

        Raises:
            TypeError: ``last_token`` not an int. ValueError: ``past_len < 0``, a non-float
            ``dtype``. IndexError: ``last_token`` outside the drafter's vocabulary.
        """
        import torch

        if isinstance(past_len, bool) or not isinstance(past_len, (int, np.integer)) or past_len < 0:
            raise ValueError(f"past_len: expected an int >= 0 (cache entries), got {past_len!r}")
        last = as_int(last_token, "last_token")
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a torch float dtype (the model's), got {dtype!r}")
        tree = drafter.propose(last, int(past_len))
        return cls(drafter, tree, int(past_len), device, dtype)

    @property
    def size(self) -> int:
        """T, the tree's tokens (root included)."""
        return self.tree.size

    def __repr__(self) -> str:
        return f"TreeStep(T={self.size}, past_len={self.past_len}, accepted={self.path is not None})"

    def _logits_2d(self, logits: Any) -> "torch.Tensor":
        import torch

        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits: expected a torch.Tensor [T, V] or [1, T, V], got {type(logits).__name__}")
        t = self.size
        if logits.dim() == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.dim() != 2 or logits.shape[0] != t:
            raise ValueError(
                f"logits: expected shape [{t}, V] or [1, {t}, V] (one row per tree node), got {list(logits.shape)}"
            )
        return _check_logits(logits, self.drafter)

    def accept(self, logits: Any, **kwargs: Any) -> Tuple[List[int], "torch.Tensor"]:
        """Deprecated name of :meth:`verify` (``accept`` is the :class:`~tokenloom.spec.base.Drafter`'s)."""
        warnings.warn("TreeStep.accept is deprecated: use TreeStep.verify (same arguments)", DeprecationWarning, stacklevel=2)
        return self.verify(logits, **kwargs)

    def verify(
        self,
        logits: Any,
        *,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> Tuple[List[int], "torch.Tensor"]:
        """Verify the tree against the model's logits, let the drafter learn, say what to keep.

        Args:
            logits: float [T, V] or [1, T, V] (torch, CPU or accelerator): row ``i`` is the
                model's output after node ``i``.
            temperature: 0 (default) = greedy argmax matching; > 0 = lossless sampling (the
                output law is exactly that of sampling token by token with the same transforms).
            top_k, top_p, min_p: sampling transforms (see :func:`tokenloom.probs_from_logits`).
            seed: seed of this step's verification draws (None: fresh entropy).

        Returns:
            ``(tokens, keep)``: ``tokens`` the emitted ids (list of n >= 1 ints: the accepted
            draft tokens, then the target's token); ``keep`` a LongTensor [past_len + n] on the
            logits' device, the absolute cache positions to keep in order (the prefix
            ``0..past_len-1``, then ``past_len + path``), for ``index_select`` along the
            sequence axis. ``self.path`` holds the accepted node indices.

        Raises:
            TypeError: logits not a tensor. ValueError: wrong shape or dtype, NaN / +inf
            logits, a bad sampling parameter. RuntimeError: the step was already verified.
        """
        import torch

        from tokenloom.verify.policy import TreeVerifier

        if self._done:
            raise RuntimeError("verify: this step was already verified; propose a new step")
        x = self._logits_2d(logits)
        cfg = _step_config(temperature, top_k, top_p, min_p, seed)
        res = TreeVerifier(cfg)(self.tree, x)
        self.drafter.accept(self.tree, res, x)
        self._done = True
        path = np.asarray(res.path, dtype=np.int64)
        self.path = path
        keep = torch.cat(
            [
                torch.arange(self.past_len, dtype=torch.long, device=x.device),
                torch.from_numpy(path).to(x.device) + self.past_len,
            ]
        )
        return [int(t) for t in np.asarray(res.tokens)], keep


def _check_logits(logits: "torch.Tensor", drafter: Any) -> "torch.Tensor":
    """``logits`` float [T, V] checked against the drafter's vocabulary; NaN / +inf refused."""
    import torch

    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor, got dtype {logits.dtype}")
    v = int(logits.shape[1])
    k = getattr(drafter, "k", 1)
    vocab = getattr(getattr(drafter, "recycler", None), "vocab_size", None)
    if v < k or (vocab is not None and v > vocab):
        raise ValueError(f"logits: vocabulary axis of {v} outside [k={k}, drafter vocab_size={vocab}]")
    if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
        raise ValueError("logits: NaN or +inf values (the model's output is broken)")
    return logits


def _step_config(temperature: Any, top_k: Any, top_p: Any, min_p: Any, seed: Any) -> Any:
    """The validated request of one step's verification (no token budget, no stop tokens)."""
    from tokenloom.request.config import make_config

    return make_config(
        max_new_tokens=0, eos_token_ids=(), temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed
    )


class BatchTreeStep:
    """B rows' drafted trees and the model inputs of their ONE forward over a cache of B rows,
    row ``b``'s valid entries being the slots ``[starts[b], ends[b])`` (left padding before,
    stale entries after; see :mod:`tokenloom.runtime.kvcache`).

    Attributes:
        drafters: one per row (each learns in :meth:`verify`); trees: their DraftTrees.
        past_len: the cache's slots before the step (``S``).
        input_ids: LongTensor [B, T] (T the widest tree; padding nodes repeat the row's root).
        attention_mask: additive float mask (B, 1, T, past_len + T)
            (:func:`tokenloom.runtime.treeattn.batch_tree_mask`).
        position_ids: LongTensor [B, T], ``ends[b] - starts[b] + depth``.
        paths: after :meth:`verify`, each row's accepted node indices (int64, from 0): the
            ``paths`` argument of :func:`tokenloom.runtime.kvcache.compact_rows`.
    """

    def __init__(self, drafters: Sequence[Drafter], trees: Sequence[DraftTree], starts: Sequence[int], ends: Sequence[int],
                 past_len: int, device: Any, dtype: Any):
        from tokenloom.runtime.treeattn import batch_tree_inputs

        self.drafters = list(drafters)
        self.trees = list(trees)
        self.past_len = past_len
        self.input_ids, self.attention_mask, self.position_ids = batch_tree_inputs(
            [t.tokens for t in trees], [t.parents for t in trees], [t.depths for t in trees],
            starts, ends, past_len, dtype, device,
        )
        self.paths: Optional[List[np.ndarray]] = None

    @classmethod
    def propose(
        cls, drafters: Sequence[Drafter], last_tokens: Sequence[int], starts: Sequence[int], ends: Sequence[int],
        past_len: int, *, device: Any = "cpu", dtype: Any = None,
    ) -> "BatchTreeStep":
        """Each row's ``drafter.propose(last_token, ends[b] - starts[b])`` and the inputs of
        their forward.

        Raises:
            ValueError: rows of different counts, no row, windows outside ``[0, past_len]``,
                a non-float ``dtype``. TypeError: a last token that is not an int.
        """
        import torch

        from tokenloom.spec.base import check_tree

        past = as_int(past_len, "past_len")
        if not (len(drafters) == len(last_tokens) == len(starts) == len(ends)) or not drafters:
            raise ValueError(
                f"expected one drafter, last token, start and end per row (at least one row), got "
                f"{len(drafters)}, {len(last_tokens)}, {len(starts)}, {len(ends)}"
            )
        dtype = torch.float32 if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype: expected a torch float dtype (the model's), got {dtype!r}")
        st = [as_int(x, "starts") for x in starts]
        en = [as_int(x, "ends") for x in ends]
        bad = [b for b in range(len(st)) if not (0 <= st[b] <= en[b] <= past)]
        if bad:
            raise ValueError(f"row {bad[0]}: expected 0 <= starts <= ends <= past_len={past}, got [{st[bad[0]]}, {en[bad[0]]})")
        trees = []
        for d, last, s0, e0 in zip(drafters, last_tokens, st, en):
            tree = d.propose(as_int(last, "last_tokens"), e0 - s0)
            msg = check_tree(tree)
            if msg:
                raise TypeError(msg)
            trees.append(tree)
        return cls(drafters, trees, st, en, past, device, dtype)

    @property
    def rows(self) -> int:
        """B, the rows of the step."""
        return len(self.trees)

    def __repr__(self) -> str:
        return f"BatchTreeStep(B={self.rows}, T={int(self.input_ids.shape[1])}, past_len={self.past_len})"

    def verify(
        self,
        logits: Any,
        *,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seeds: Optional[Sequence[Optional[int]]] = None,
    ) -> List[List[int]]:
        """Verify every row's tree against its logits, let each drafter learn.

        Args:
            logits: float [B, T, V] (the model's output of this step's forward).
            temperature, top_k, top_p, min_p: as in :meth:`TreeStep.verify` (every row).
            seeds: one seed per row for this step's verification draws (None: fresh entropy).

        Returns:
            Each row's emitted ids (n_b >= 1: accepted draft tokens, then the target's token);
            ``self.paths`` holds the accepted node indices for
            :func:`tokenloom.runtime.kvcache.compact_rows`.

        Raises:
            TypeError: logits not a tensor. ValueError: wrong shape or dtype, NaN / +inf,
            a bad sampling parameter, seeds of another count. RuntimeError: verified already.
        """
        import torch

        from tokenloom.verify.policy import TreeVerifier

        if self.paths is not None:
            raise RuntimeError("verify: this step was already verified; propose a new step")
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits: expected a torch.Tensor [B, T, V], got {type(logits).__name__}")
        want = (self.rows, int(self.input_ids.shape[1]))
        if logits.dim() != 3 or tuple(logits.shape[:2]) != want:
            raise ValueError(f"logits: expected shape [{want[0]}, {want[1]}, V] (one row per tree node), got {list(logits.shape)}")
        seeds = [None] * self.rows if seeds is None else list(seeds)
        if len(seeds) != self.rows:
            raise ValueError(f"seeds: expected one per row ({self.rows}), got {len(seeds)}")
        cfgs = [_step_config(temperature, top_k, top_p, min_p, s) for s in seeds]
        rows = [_check_logits(logits[b, : t.size], d) for b, (t, d) in enumerate(zip(self.trees, self.drafters))]
        out, paths = [], []
        for cfg, tree, drafter, x in zip(cfgs, self.trees, self.drafters, rows):
            res = TreeVerifier(cfg)(tree, x)
            drafter.accept(tree, res, x)
            paths.append(np.asarray(res.path, dtype=np.int64))
            out.append([int(t) for t in np.asarray(res.tokens)])
        self.paths = paths
        return out
