"""One verification policy for every speculative step: :class:`TreeVerifier` picks greedy,
deterministic-draft or sampled-draft verification from the request and the tree, and keeps the
target's tensors on their device (only node ids, and on an accelerator a few scalars, reach
the host)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tokenloom.verify.kernels import VerifyResult, verify_greedy, verify_tree

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tokenloom.request.config import DecodeConfig
    from tokenloom.spec.base import DraftTree

__all__ = ["TreeVerifier"]


class TreeVerifier:
    """Verifies draft trees against the target's logits for one request.

    * temperature 0: greedy matching of the target's argmax (:func:`verify_greedy`); the output
      is the target's greedy output whatever the draft;
    * temperature > 0 and a deterministic draft (``tree.draft_probs is None``): the lossless
      deterministic-draft rule (:func:`verify_tree` without draft probabilities);
    * temperature > 0 and a sampled draft: SpecInfer's multi-draft rule with the draft rows
      (Sequoia's without-replacement variant when ``tree.replacement`` is False).

    Sampled steps draw a 63-bit seed each from one generator seeded with ``cfg.seed`` (fresh
    entropy when None), so a seed fixes the whole run for a fixed sequence of trees.

    Args:
        cfg: the request (temperature and transforms, seed).
    """

    def __init__(self, cfg: "DecodeConfig"):
        self.cfg = cfg
        self._rng = np.random.default_rng(cfg.seed)

    def next_seed(self) -> int:
        """The next 63-bit seed of this request's generator (drafters that sample draw theirs
        here too, so one ``seed`` fixes a whole run)."""
        return int(self._rng.integers(0, 2**63 - 1))

    def probs(self, logits: "torch.Tensor") -> "torch.Tensor":
        """The target distribution [T, V] after the request's transforms, on the logits' device."""
        from tokenloom.sampling.sampler import probs_from_logits

        c = self.cfg
        return probs_from_logits(logits, c.temperature, c.top_k, c.top_p, c.min_p)

    def __call__(self, tree: "DraftTree", logits: "torch.Tensor", argmax: Optional[np.ndarray] = None) -> VerifyResult:
        """Verify ``tree`` against ``logits`` float [T, V] (row ``i``: the target after node ``i``).
        ``argmax``: the logits' argmax (int [T], on the host) when the caller has it already
        (a batch computes every row's at once); used by greedy verification only."""
        if self.cfg.greedy:
            from tokenloom.sampling.topk import argmax_ids

            ids = argmax_ids(logits) if argmax is None else argmax
            return verify_greedy(tree.parents, tree.tokens, ids)
        return verify_tree(
            tree.parents,
            tree.tokens,
            self.probs(logits),
            tree.draft_probs,
            seed=self.next_seed(),
            replacement=tree.replacement,
        )

    def __repr__(self) -> str:
        mode = "greedy" if self.cfg.greedy else f"sampled(T={self.cfg.temperature})"
        return f"TreeVerifier({mode})"
