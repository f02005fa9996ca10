"""References of exactness, shared by the device check (:mod:`.devicecheck`) and the tests:
HF greedy, the first difference of two token sequences and whether it is a floating-point
near-tie of the reference, the exact joint law of the next tokens under temperature / top-k
sampling (by enumeration, with a pure-torch form of the transforms), and a chi-square of a
method's samples against it (scipy, imported when called)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["chi2_pvalue", "exact_joint", "first_diff", "hf_greedy", "joint_chi2", "near_tie", "ref_probs_from_logits"]

#: Largest top-2 logit gap a greedy difference may sit on to count as a floating-point near-tie.
TIE_GAP = 1e-3


def hf_greedy(model: Any, ids: Any, n: int, eos: Any = None) -> Any:
    """HF ``generate`` greedy reference, [1, len(ids) + new]."""
    import torch

    return model.generate(
        ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
        eos_token_id=eos, pad_token_id=0,
    )


def first_diff(a: Sequence[int], b: Sequence[int]) -> Optional[int]:
    """Index of the first differing position of two sequences, or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def near_tie(model: Any, ref: Sequence[int], other: int, j: int) -> Tuple[bool, float]:
    """Whether token ``j`` of the reference ``ref`` and ``other`` are the top two of the
    model's logits after ``ref[:j]`` with a gap below :data:`TIE_GAP`; and the gap."""
    import torch

    dev = next(model.parameters()).device
    with torch.inference_mode():
        top = model(input_ids=torch.tensor([list(ref[:j])], device=dev)).logits[0, -1].float().topk(2)
    gap = float(top.values[0] - top.values[1])
    return {int(ref[j]), int(other)} == set(top.indices.tolist()) and gap < TIE_GAP, gap


def ref_probs_from_logits(logits: Any, temperature: float, top_k: Optional[int] = None, top_p: Any = None, min_p: Any = None) -> Any:
    """Temperature then top-k in plain torch (the reference of tokenloom's transforms)."""
    import torch

    assert top_p is None and min_p is None
    x = logits.float() / temperature
    if top_k:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return torch.softmax(x, dim=-1)


def exact_joint(model: Any, ids: Any, temperature: float, top_k: Optional[int], depth: int) -> Dict[Tuple[int, ...], float]:
    """Exact P(x1..x_depth) under top-k/temperature sampling, by enumeration."""
    import torch

    out: Dict[Tuple[int, ...], float] = {(): 1.0}
    for _ in range(depth):
        nxt = {}
        for prefix, pr in out.items():
            seq = torch.cat([ids, torch.tensor([list(prefix)], dtype=torch.long, device=ids.device)], dim=1)
            with torch.inference_mode():
                p = ref_probs_from_logits(model(input_ids=seq).logits[0, -1], temperature, top_k)
            for t in torch.nonzero(p > 0).flatten().tolist():
                nxt[prefix + (t,)] = pr * float(p[t])
        out = nxt
    return out


def joint_chi2(
    model: Any, ids: Any, temperature: float, top_k: Optional[int], depth: int, trials: int,
    run: Callable[[int], Tuple[Sequence[int], Any]],
) -> Tuple[float, int]:
    """Chi-square p-value of ``trials`` samples of the next ``depth`` tokens against their exact
    joint law. ``run(i) -> (tokens, accepted)`` draws sample ``i`` (seeded by ``i``); returns
    ``(pvalue, number of runs where accepted is true)``. Rare cells (expected < 5) are pooled."""
    exact = exact_joint(model, ids, temperature, top_k, depth)
    counts = {key: 0 for key in exact}
    accepted = 0
    for i in range(trials):
        toks, acc = run(i)
        counts[tuple(toks)] += 1
        accepted += bool(acc)
    return chi2_pvalue(exact, counts), accepted


def chi2_pvalue(exact: Dict[Tuple[int, ...], float], counts: Dict[Tuple[int, ...], int]) -> float:
    """Chi-square p-value of observed ``counts`` against the law ``exact`` (keys absent from
    ``counts`` were never seen); cells expected fewer than 5 times are pooled into one."""
    from scipy.stats import chisquare

    trials = sum(counts.values())
    keys = sorted(exact, key=lambda k: -exact[k])
    f_exp = np.array([exact[k] for k in keys]) * trials
    f_obs = np.array([counts.get(k, 0) for k in keys], dtype=float)
    big = f_exp >= 5
    f_obs = np.append(f_obs[big], f_obs[~big].sum())
    f_exp = np.append(f_exp[big], f_exp[~big].sum())
    if f_exp[-1] == 0:
        f_obs, f_exp = f_obs[:-1], f_exp[:-1]
    f_exp = f_exp * f_obs.sum() / f_exp.sum()
    return float(chisquare(f_obs, f_exp).pvalue)
