"""Shared check of what every tree-verify forward received (recorded by a forward pre-hook)."""

from __future__ import annotations

from tokenloom.runtime.compat import cache_arg


def record_forward_inputs(model):
    """Register a pre-hook recording (cache length, input_ids, position_ids, attention_mask) of
    each forward; returns (calls, handle)."""
    calls = []

    def hook(module, args, kwargs):
        (cache,) = cache_arg(module, None)  # the cache keyword of this transformers line
        calls.append((kwargs[cache].get_seq_length(), kwargs["input_ids"].clone(),
                      kwargs.get("position_ids"), kwargs.get("attention_mask")))

    return calls, model.register_forward_pre_hook(hook, with_kwargs=True)


def check_tree_steps(calls, seq, n_prompt, steps):
    """The first forward is the prefill; each later one starts from a cache holding exactly the
    tokens before its root, has a (1, 1, T, past + T) mask, and puts node i at past + depth(i)
    (depth read back from the mask). Returns the cache length before the last forward."""
    assert calls[0][0] == 0 and calls[0][1].shape[1] == n_prompt  # prefill
    assert len(calls) == steps
    prev = n_prompt
    for past, inp, pos, mask in calls[1:]:
        assert past >= prev
        prev = past
        assert inp[0, 0].item() == seq[past], "root = the first token not in the cache"
        t = inp.shape[1]
        assert mask.shape == (1, 1, t, past + t)
        depths = (mask[0, 0, :, past:] == 0).sum(-1) - 1
        assert pos[0].tolist() == (past + depths).tolist()
    return prev
