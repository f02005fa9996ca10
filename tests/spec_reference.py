"""Shared references for speculative-decoding tests: seeded prompts, Token Recycling's
move-to-front rule in pure Python, and (from their one home, :mod:`tokenloom.eval.exactness`,
which the device check also runs) a pure-torch reference of the sampling transforms, the exact
joint law of the next tokens by enumeration, and a chi-square of a method's samples against it."""

from __future__ import annotations

from tokenloom.eval.exactness import exact_joint, joint_chi2, ref_probs_from_logits

__all__ = ["exact_joint", "joint_chi2", "move_to_front_reference", "prompt_ids", "ref_probs_from_logits"]


def move_to_front_reference(rows, tokens, successors, k):
    """Token Recycling's move-to-front on ``rows`` (dict token -> list of k candidates; a
    missing token is a row never written, with no candidates), in place: for every pair in
    order the successor goes to rank 0, the other candidates keep their order below it (copies
    of it dropped), and the row is padded with it to ``k``."""
    for t, s in zip(tokens, successors):
        old = rows.get(t, [])
        rows[t] = ([s] + [x for x in old if x != s] + [s] * k)[:k]


def prompt_ids(seed, n=12, vocab=49152):
    """A random prompt LongTensor [1, n] (ids >= 3, below the special tokens' range)."""
    import torch

    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))
