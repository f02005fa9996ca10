"""Shared helpers for "same tokens as HF greedy" tests."""

from __future__ import annotations

from tokenloom.eval.exactness import first_diff, hf_greedy, near_tie

__all__ = ["count_same_as_hf", "first_diff", "hf_greedy", "same_or_near_tie"]


def same_or_near_tie(model, ours, ref):
    """True when ``ours == ref``; False when the first difference is a floating-point near-tie of
    the reference's logits (top-2 gap < 1e-3, the two tokens being the top 2); fails otherwise."""
    j = first_diff(ours, ref)
    if j is None:
        assert len(ours) == len(ref), "one output is a prefix of the other: a stop-rule bug"
        return True
    tie, gap = near_tie(model, ref, ours[j], j)
    assert tie, (j, gap)
    return False


def count_same_as_hf(model, tok, prompts, n, **generate_kwargs):
    """For each chat prompt, ``tokenloom.generate(..., max_new_tokens=n, **generate_kwargs)``
    against HF greedy (stop token id 2); each pair must be equal or differ first at a near-tie
    (:func:`same_or_near_tie`). Returns (number equal, the last GenerateOutput)."""
    import tokenloom
    from tokenloom.integrations.hf.chat import chat_input_ids

    same, out = 0, None
    for prompt in prompts:
        ids = chat_input_ids(tok, prompt)
        ref = hf_greedy(model, ids, n, eos=2)[0].tolist()
        out = tokenloom.generate(model, ids, max_new_tokens=n, **generate_kwargs)
        same += same_or_near_tie(model, out.sequences[0].tolist(), ref)
    return same, out
