"""Step API of Token Recycling, for people who own their decoding loop (serving engines,
research code): ``recycler.propose(...)`` drafts a tree and builds the model inputs of ONE tree
forward; ``step.accept(logits)`` verifies, updates the recycler and says which cache entries to
keep. The model call and the cache stay in the caller's hands.

Greedy loop over an HF model with a ``DynamicCache`` already holding ``past`` tokens (the
prompt after a prefill) and ``last`` the newest token, not yet in the cache::

    step = recycler.propose(last, past, device=model.device, dtype=model.dtype)
    logits = model(input_ids=step.input_ids, attention_mask=step.attention_mask,
                   position_ids=step.position_ids, past_key_values=cache).logits
    new_tokens, keep = step.accept(logits)              # keep: LongTensor [past + len(new)]
    for layer in cache.layers:                          # or treeattn.compact_cache(cache, past, step.path)
        layer.keys, layer.values = layer.keys.index_select(2, keep), layer.values.index_select(2, keep)
    past, last = past + len(new_tokens), new_tokens[-1]

Invariant after a step: the cache holds ``past + len(new_tokens)`` entries, one per token of the
sequence except the newest (``new_tokens[-1]``), which is the next root.

Verification reuses :func:`tokenloom.verify_greedy` (temperature 0) and the lossless
deterministic-draft rule :func:`tokenloom.verify_tree` on :func:`tokenloom.probs_from_logits`
(temperature > 0); masks and positions come from :mod:`tokenloom.treeattn`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.spec.recycling.recycler import TokenRecycler

__all__ = ["RecyclingStep"]


class RecyclingStep:
    """One drafted tree and the model inputs of its forward (made by
    :meth:`tokenloom.TokenRecycler.propose`).

    Attributes:
        tree: the :class:`~tokenloom.DraftTree` (``tokens``, ``parents``, ``depths``: int64 [T]).
        past_len: cache entries before the tree.
        input_ids: LongTensor [1, T], the node tokens (root first).
        attention_mask: additive float mask (1, 1, T, past_len + T), 0 = see, dtype min = hide.
        position_ids: LongTensor [1, T], ``past_len + depth``.
        path: after :meth:`accept`, the accepted node indices (int64 [n], starting with 0), the
            argument :func:`tokenloom.treeattn.compact_cache` takes.
    """

    __slots__ = ("recycler", "tree", "past_len", "input_ids", "attention_mask", "position_ids", "path", "_done")

    def __init__(self, recycler: "TokenRecycler", tree: Any, past_len: int, device: Any, dtype: Any):
        import torch

        from tokenloom.runtime.treeattn import tree_attention_mask, tree_position_ids

        self.recycler = recycler
        self.tree = tree
        self.past_len = past_len
        dev = torch.device(device)
        self.input_ids = torch.from_numpy(tree.tokens).to(dev).view(1, -1)
        self.attention_mask = tree_attention_mask(tree.parents, past_len, dtype, dev)
        self.position_ids = tree_position_ids(tree.depths, past_len, dev)
        self.path: Optional[np.ndarray] = None
        self._done = False

    @property
    def size(self) -> int:
        """T, the tree's tokens (root included)."""
        return int(self.tree.tokens.shape[0])

    def __repr__(self) -> str:
        return f"RecyclingStep(T={self.size}, past_len={self.past_len}, accepted={self.path is not None})"

    def _logits_2d(self, logits: Any) -> "torch.Tensor":
        import torch

        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"logits: expected a torch.Tensor [T, V] or [1, T, V], got {type(logits).__name__}")
        if not logits.is_floating_point():
            raise ValueError(f"logits: expected a float tensor, got dtype {logits.dtype}")
        t = self.size
        if logits.dim() == 3 and logits.shape[0] == 1:
            logits = logits[0]
        if logits.dim() != 2 or logits.shape[0] != t:
            raise ValueError(
                f"logits: expected shape [{t}, V] or [1, {t}, V] (one row per tree node), got {list(logits.shape)}"
            )
        v = int(logits.shape[1])
        if v < self.recycler.k or v > self.recycler.vocab_size:
            raise ValueError(
                f"logits: vocabulary axis of {v} outside [k={self.recycler.k}, "
                f"recycler vocab_size={self.recycler.vocab_size}]"
            )
        if bool(torch.isnan(logits).any()) or bool(torch.isposinf(logits).any()):
            raise ValueError("logits: NaN or +inf values (the model's output is broken)")
        return logits

    def accept(
        self,
        logits: Any,
        *,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
    ) -> Tuple[List[int], "torch.Tensor"]:
        """Verify the tree against the model's logits, update the recycler, say what to keep.

        Args:
            logits: float [T, V] or [1, T, V] (torch, CPU or accelerator): row ``i`` is the
                model's output after node ``i``.
            temperature: 0 (default) = greedy argmax matching; > 0 = lossless sampling (the
                output law is exactly that of sampling token by token with the same transforms).
            top_k, top_p, min_p: sampling transforms (see :func:`tokenloom.probs_from_logits`).
            seed: 64-bit seed of the verifier's draws (None: fresh entropy).

        Returns:
            ``(tokens, keep)``: ``tokens`` the emitted ids (list of n >= 1 ints: the accepted
            draft tokens, then the target's token); ``keep`` a LongTensor [past_len + n] on the
            logits' device, the absolute cache positions to keep in order (the prefix
            ``0..past_len-1``, then ``past_len + path``), for ``index_select`` along the
            sequence axis. ``self.path`` holds the accepted node indices.

        Raises:
            TypeError: logits not a tensor. ValueError: wrong shape or dtype, NaN / +inf
            logits, a bad sampling parameter. RuntimeError: the step was already accepted.
        """
        import torch

        from tokenloom.verify.kernels import verify_greedy, verify_tree

        if self._done:
            raise RuntimeError("accept: this step was already accepted; call recycler.propose(...) again")
        x = self._logits_2d(logits)
        if not (temperature >= 0.0):
            raise ValueError(f"temperature: expected >= 0, got {temperature!r}")
        tree = self.tree
        if temperature == 0.0:
            res = verify_greedy(tree.parents, tree.tokens, x.argmax(-1).cpu())
        else:
            from tokenloom.sampling.sampler import probs_from_logits

            probs = probs_from_logits(x.float(), temperature, top_k, top_p, min_p)
            res = verify_tree(tree.parents, tree.tokens, probs, None, seed=seed)
        topk = x.topk(self.recycler.k, dim=-1).indices.cpu()
        self.recycler.update(tree.tokens, topk)
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
