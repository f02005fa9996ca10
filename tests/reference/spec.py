"""Shared references for speculative-decoding tests: seeded prompts, Token Recycling's
move-to-front rule in pure Python, and (from their one home, :mod:`tokenloom.eval.exactness`,
which the device check also runs) a pure-torch reference of the sampling transforms, the exact
joint law of the next tokens by enumeration, and a chi-square of a method's samples against it."""

from __future__ import annotations

import numpy as np

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


def committed(proposal, truth):
    """What greedy verification commits: the longest prefix of ``proposal`` that ``truth``
    (the target's continuation) starts with, then the target's own token."""
    a = 0
    while a < len(proposal) and proposal[a] == truth[a]:
        a += 1
    return truth[: a + 1]


def drive_reordered(p, seqs, period, orders, leaves, after_step=None):
    """Run proposer ``p`` one step per entry of ``orders`` (the requests of that step's rows, in
    row order) on periodic requests: ``seqs[r]`` the history of request ``r`` (grown in place by
    what each step commits), ``period[r]`` its true continuation cycle. ``leaves[step]``: the
    request that leaves after that step; ``after_step(order)`` runs after every step.

    Returns:
        dict: each request's last proposal."""
    sampled, proposals = {}, {}
    for step, order in enumerate(orders):
        histories, samp = [], []
        for r in order:
            if r in sampled:
                seqs[r] = seqs[r] + sampled[r]
            histories.append(seqs[r])
            samp.append(sampled.get(r, [seqs[r][-1]]))
        b = Batch(histories)
        out = p.propose(samp, b.lengths, b.tokens)
        assert len(out) == len(order)
        for r, chain in zip(order, out):
            proposals[r] = chain
            n = len(seqs[r])
            sampled[r] = committed(chain, [period[r][(n + j) % len(period[r])] for j in range(5)])
        if step in leaves:
            sampled.pop(leaves[step])
        if after_step is not None:
            after_step(order)
    return proposals


PROMPTS = [
    "Explain speculative decoding in two sentences.",
    "Write a Python function that returns the n-th Fibonacci number.",
    "List five fruits and their colours.",
    "Summarise: The quick brown fox jumps over the lazy dog. The dog sleeps. The fox runs away.",
]


class Batch:
    """vLLM's arrays for a batch: token_ids_cpu [rows, max_len], num_tokens_no_spec [rows]."""

    def __init__(self, histories, max_len=64):
        self.tokens = np.zeros((len(histories), max_len), dtype=np.int32)
        self.lengths = np.zeros(len(histories), dtype=np.int32)
        for i, h in enumerate(histories):
            self.tokens[i, : len(h)] = h
            self.lengths[i] = len(h)
