"""Shared references for speculative-decoding tests: seeded prompts, and (from their one home,
:mod:`tokenloom.eval.exactness`, which the device check also runs) a pure-torch reference of the
sampling transforms, the exact joint law of the next tokens by enumeration, and a chi-square of
a method's samples against it."""

from __future__ import annotations

from tokenloom.eval.exactness import exact_joint, joint_chi2, ref_probs_from_logits

__all__ = ["exact_joint", "joint_chi2", "prompt_ids", "ref_probs_from_logits"]


def prompt_ids(seed, n=12, vocab=49152):
    """A random prompt LongTensor [1, n] (ids >= 3, below the special tokens' range)."""
    import torch

    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))
