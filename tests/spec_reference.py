"""Shared references for speculative-decoding tests: seeded prompts, a pure-torch reference of
the sampling transforms, the exact joint law of the next tokens by enumeration, and a
chi-square of a method's samples against it."""

from __future__ import annotations

import numpy as np


def prompt_ids(seed, n=12, vocab=49152):
    """A random prompt LongTensor [1, n] (ids >= 3, below the special tokens' range)."""
    import torch

    return torch.randint(3, vocab, (1, n), generator=torch.Generator().manual_seed(seed))


def ref_probs_from_logits(logits, temperature, top_k=None, top_p=None, min_p=None):
    import torch

    assert top_p is None and min_p is None
    x = logits.float() / temperature
    if top_k:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return torch.softmax(x, dim=-1)


def exact_joint(model, ids, temperature, top_k, depth):
    """Exact P(x1..x_depth) under top-k/temperature sampling, by enumeration."""
    import torch

    out = {(): 1.0}
    for _ in range(depth):
        nxt = {}
        for prefix, pr in out.items():
            seq = torch.cat([ids, torch.tensor([list(prefix)], dtype=torch.long)], dim=1)
            with torch.inference_mode():
                p = ref_probs_from_logits(model(input_ids=seq).logits[0, -1], temperature, top_k)
            for t in torch.nonzero(p > 0).flatten().tolist():
                nxt[prefix + (t,)] = pr * float(p[t])
        out = nxt
    return out


def joint_chi2(model, ids, temperature, top_k, depth, trials, run):
    """Chi-square p-value of ``trials`` samples of the next ``depth`` tokens against their exact
    joint law. ``run(i) -> (tokens, accepted)`` draws sample ``i`` (seeded by ``i``); returns
    ``(pvalue, number of runs where accepted is true)``. Rare cells (expected < 5) are pooled."""
    from scipy.stats import chisquare

    exact = exact_joint(model, ids, temperature, top_k, depth)
    counts = {key: 0 for key in exact}
    accepted = 0
    for i in range(trials):
        toks, acc = run(i)
        counts[tuple(toks)] += 1
        accepted += bool(acc)
    keys = sorted(exact, key=lambda k: -exact[k])
    f_exp = np.array([exact[k] for k in keys]) * trials
    f_obs = np.array([counts[k] for k in keys], dtype=float)
    big = f_exp >= 5
    f_obs = np.append(f_obs[big], f_obs[~big].sum())
    f_exp = np.append(f_exp[big], f_exp[~big].sum())
    if f_exp[-1] == 0:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    f_exp = f_exp * f_obs.sum() / f_exp.sum()
    return chisquare(f_obs, f_exp).pvalue, accepted
