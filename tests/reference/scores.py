"""NumPy / pure-Python references of the papers' formulas for tokenloom.scores, shared by its
tests and benchmarks: per-token statistics from full logits, Min-K%, Min-K%++ and DC-PDD."""

from __future__ import annotations

import math

import numpy as np


def ref_rows(logits: np.ndarray, targets: np.ndarray):
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    logp = x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))
    p = np.exp(logp)
    plogp = np.where(p > 0, p * np.where(np.isfinite(logp), logp, 0), 0)
    mu = plogp.sum(-1)
    var = (np.where(p > 0, p * np.where(np.isfinite(logp), logp, 0) ** 2, 0)).sum(-1) - mu**2
    lp = logp[np.arange(len(targets)), targets]
    ranks = 1 + (logits > logits[np.arange(len(targets)), targets][:, None]).sum(-1)
    return lp, -mu, np.sqrt(np.maximum(var, 0)), ranks


def ref_min_k(lp, k):
    n = max(1, int(len(lp) * k))
    return float(np.mean(np.sort(lp)[:n]))


def ref_min_k_pp(lp, logits_rows, k):
    out = []
    for row, l in zip(logits_rows, lp):
        x = row.astype(np.float64)
        logp = x - np.log(np.exp(x - x.max()).sum()) - x.max()
        p = np.exp(logp)
        mu = (p * logp).sum()
        sigma = math.sqrt((p * (logp - mu) ** 2).sum())
        out.append((l - mu) / sigma)
    return ref_min_k(np.array(out), k)


def ref_dc_pdd(targets, lp, counts, a):
    freq = (counts + 1) / (counts.sum() + len(counts))
    seen, terms = set(), []
    for t, l in zip(targets, lp):
        if t in seen:
            continue
        seen.add(t)
        terms.append(min(math.exp(l) * math.log(1 / freq[t]), a))
    return float(np.mean(terms))
