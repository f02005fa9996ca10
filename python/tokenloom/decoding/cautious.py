"""Cautious Next Token Prediction (CNTP, arXiv 2507.03038): ``generate(method="cautious")``.

At every step the next-token distribution ``p`` (after the request's sampling transforms) is
checked: with entropy ``H(p)`` (nats),

    N = int(min_trials + (max_trials - min_trials) * clamp((H - low) / (high - low), 0, 1))

trials are sampled (fewer when the model is confident; ``N == 1`` is one plain sampling step).
Each trial samples from that step on until it emits a punctuation token of the tokenizer (the
first token of each of ``. , \\n ? ! : ; ) ] }``), a stop token or the token budget, and the
trial with the lowest perplexity ``exp(-mean log p(token))`` over its own tokens is kept (ties:
the earliest trial). Defaults as in the paper's reference code: ``entropy_threshold_low=0.01``,
``entropy_threshold_high=1.5``, ``max_trials=10``, ``min_trials=1``.

The trials share the prompt and their common prefixes: all live trials advance in ONE forward
per step, a tree of their distinct newest tokens over the shared cache (each row sees the
prefix and its own ancestors' cache slots: :func:`tokenloom.runtime.treeattn.prefix_tree_mask`).
Trials that drew the same tokens so far share one tree node (and its forward row). After the
choice the cache keeps the prefix and the chosen trial's slots
(:func:`tokenloom.runtime.kvcache.keep_slots`).

Sampling is seeded through :class:`tokenloom.Sampler` exactly as ``method="plain"`` samples:
when no step triggers (``N == 1`` everywhere, e.g. at temperature 0), the output is plain
sampling's, token for token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from tokenloom._arrays import as_count, as_ids
from tokenloom.request.config import DecodeConfig
from tokenloom.request.sink import TokenSink
from tokenloom.device import is_accelerator
from tokenloom.runtime.compat import cache_arg

__all__ = [
    "PUNCTUATION",
    "CautiousRecord",
    "decode_cautious",
    "entropy",
    "punctuation_ids",
    "select_trial",
    "trial_count",
]

#: The punctuation marks that end a trial (the reference code's list).
PUNCTUATION = (".", ",", "\n", "?", "!", ":", ";", ")", "]", "}")


@dataclass
class CautiousRecord:
    """What a cautious run did (pass one as ``record=`` to fill it).

    Attributes:
        forwards: model forwards (prefill included).
        rows: tokens fed through those forwards (prefill excluded).
        triggered: steps that ran more than one trial.
        trials: trial count of every triggered step.
        chosen_lengths: tokens of the kept trial at every triggered step.
        keep_trials: also keep every trial (``steps``: one dict per triggered step with the
            ``offset`` in the output, the trials' ``tokens`` and ``logprobs`` and the ``chosen``
            index), for inspection and tests.
    """

    forwards: int = 0
    rows: int = 0
    triggered: int = 0
    trials: List[int] = field(default_factory=list)
    chosen_lengths: List[int] = field(default_factory=list)
    keep_trials: bool = False
    steps: List[Dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "forwards": self.forwards,
            "rows": self.rows,
            "triggered": self.triggered,
            "mean_trials": float(np.mean(self.trials)) if self.trials else 0.0,
        }


def punctuation_ids(tokenizer: Any, marks: Iterable[str] = PUNCTUATION) -> FrozenSet[int]:
    """The first token id of each mark's encoding (no special tokens), as the reference does."""
    out = set()
    for m in marks:
        ids = tokenizer.encode(m, add_special_tokens=False)
        if ids:
            out.add(int(ids[0]))
    return frozenset(out)


def entropy(probs: np.ndarray) -> float:
    """Entropy in nats of one probability row (zeros contribute nothing)."""
    p = probs[probs > 0]
    return float(-(p * np.log(p)).sum())


def trial_count(h: float, low: float, high: float, min_trials: int, max_trials: int) -> int:
    """``int(min_trials + (max_trials - min_trials) * clamp((h - low) / (high - low), 0, 1))``."""
    x = min(max((h - low) / (high - low), 0.0), 1.0)
    return int(min_trials + (max_trials - min_trials) * x)


def select_trial(logprobs: Sequence[Sequence[float]]) -> int:
    """Index of the trial with the lowest perplexity ``exp(-mean log p)`` (the earliest on ties).

    Raises:
        ValueError: no trial, or an empty trial.
    """
    if not logprobs:
        raise ValueError("select_trial: expected at least one trial")
    best, best_nll = -1, math.inf
    for i, lp in enumerate(logprobs):
        if not len(lp):
            raise ValueError(f"select_trial: trial {i} has no token")
        nll = -float(np.mean(lp))
        if nll < best_nll:
            best, best_nll = i, nll
    return best if best >= 0 else 0


def _check(
    low: Any, high: Any, min_trials: Any, max_trials: Any, max_trial_tokens: Any
) -> Tuple[float, float, int, int, Optional[int]]:
    for name, v in (("entropy_threshold_low", low), ("entropy_threshold_high", high)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
    if not high > low:
        raise ValueError(f"entropy_threshold_high: expected > entropy_threshold_low = {low}, got {high}")
    lo = as_count(min_trials, "min_trials", 1)
    hi = as_count(max_trials, "max_trials", lo)
    cap = None if max_trial_tokens is None else as_count(max_trial_tokens, "max_trial_tokens", 1)
    return float(low), float(high), lo, hi, cap


def _stop_ids(punctuation: Any, vocab_size: int) -> FrozenSet[int]:
    """The punctuation ids as ints in ``[0, vocab_size)`` (floats refused, never truncated)."""
    if isinstance(punctuation, (str, bytes)) or not hasattr(punctuation, "__iter__"):
        raise TypeError(f"punctuation: expected token ids (an iterable of ints), got {type(punctuation).__name__}")
    return frozenset(as_ids(list(punctuation), "punctuation", vocab_size).tolist())


def _probs(sampler: Any, logits: Any) -> np.ndarray:
    """The sampler's distribution of every row of ``logits`` [B, V], float64 numpy (host rows)."""
    p = sampler.probs(logits)
    return p.double().cpu().numpy() if hasattr(p, "detach") else np.asarray(p, dtype=np.float64)


def _entropy_of(sampler: Any, logits: Any) -> float:
    """Entropy (nats) of the sampler's distribution of ``logits`` [1, V]; on an accelerator
    computed there (one number crosses to the host)."""
    if is_accelerator(logits):
        import torch

        return float(torch.special.entr(sampler.probs(logits)[0].double()).sum())
    return entropy(_probs(sampler, logits)[0])


def _logps(sampler: Any, rows: Any, tokens: List[int]) -> List[float]:
    """``log p_i(tokens[i])`` of the sampler's distribution of row ``i`` of ``rows`` [B, V]
    (one row [1, V]: of that row for every token); on an accelerator gathered there (only these
    numbers cross to the host)."""
    shape = (1, -1) if rows.shape[0] == 1 else (-1, 1)
    if is_accelerator(rows):
        import torch

        idx = torch.tensor(tokens, dtype=torch.long, device=rows.device).view(*shape)
        picked = sampler.probs(rows).gather(1, idx).double().cpu().numpy().reshape(-1)
    else:
        p = _probs(sampler, rows)
        picked = p[0, tokens] if shape[0] == 1 else p[np.arange(len(tokens)), tokens]
    return [math.log(x) for x in picked.tolist()]


class _Tree:
    """Trial nodes over the shared cache: node ``(token, parent)`` with its cache slot once fed."""

    def __init__(self) -> None:
        self.token: List[int] = []
        self.parent: List[int] = []
        self.slot: List[int] = []  # -1 until forwarded
        self.children: Dict[Tuple[int, int], int] = {}

    def child(self, parent: int, token: int) -> int:
        key = (parent, token)
        n = self.children.get(key)
        if n is None:
            n = len(self.token)
            self.token.append(token)
            self.parent.append(parent)
            self.slot.append(-1)
            self.children[key] = n
        return n

    def ancestors(self, n: int) -> List[int]:
        out = []
        while n >= 0:
            out.append(n)
            n = self.parent[n]
        return out[::-1]


def _forward_nodes(model: Any, cache: Any, tree: _Tree, nodes: List[int], prefix_len: int, past: int) -> Any:
    """One tree forward of ``nodes`` (their ancestors already cached in ``cache``, a
    ``DynamicCache`` that grows in place); returns logits [q, V]."""
    from tokenloom.runtime.model import model_dtype_device
    from tokenloom.runtime.slots import slot_forward
    from tokenloom.runtime.treeattn import prefix_tree_mask

    dtype, device = model_dtype_device(model)
    visible = [[tree.slot[a] for a in tree.ancestors(n)[:-1]] for n in nodes]
    mask = prefix_tree_mask(prefix_len, past, visible, dtype, device)
    positions = [prefix_len + len(v) for v in visible]
    logits, _ = slot_forward(model, cache, [tree.token[n] for n in nodes], positions, mask, device)
    for j, n in enumerate(nodes):
        tree.slot[n] = past + j
    return logits.float()


def _run_trials(
    model: Any, cache: Any, logits: Any, n: int, sampler: Any, cfg: DecodeConfig, stop: FrozenSet[int],
    budget: int, record: CautiousRecord,
) -> List[int]:
    """Run ``n`` trials from the distribution of ``logits`` [1, V]; returns the kept trial's
    tokens and leaves the cache holding the prefix plus the kept tokens but the last."""
    from tokenloom.runtime.kvcache import cache_length, keep_slots

    prefix_len = cache_length(cache)
    tree = _Tree()
    rows = logits.expand(n, -1)
    first = sampler(rows).tolist()
    lp0 = _logps(sampler, logits, first)
    trials = [[tree.child(-1, t)] for t in first]
    logps = [[x] for x in lp0]
    live = [i for i, t in enumerate(first) if t not in stop and 1 < budget]
    while live:
        pending = sorted({trials[i][-1] for i in live})
        past = cache_length(cache)
        node_logits = _forward_nodes(model, cache, tree, pending, prefix_len, past)
        record.forwards += 1
        record.rows += len(pending)
        row_of = {node: j for j, node in enumerate(pending)}
        rows = node_logits[[row_of[trials[i][-1]] for i in live]]
        draws = sampler(rows).tolist()
        lp = _logps(sampler, rows, draws)
        still = []
        for k, (i, t) in enumerate(zip(live, draws)):
            trials[i].append(tree.child(trials[i][-1], t))
            logps[i].append(lp[k])
            if t not in stop and len(trials[i]) < budget:
                still.append(i)
        live = still
    best = select_trial(logps)
    chosen = trials[best]
    keep_slots(cache, list(range(prefix_len)) + [tree.slot[n] for n in chosen[:-1]])
    record.triggered += 1
    record.trials.append(n)
    record.chosen_lengths.append(len(chosen))
    if record.keep_trials:
        record.steps.append(
            {"tokens": [[tree.token[x] for x in t] for t in trials], "logprobs": logps, "chosen": best}
        )
    return [tree.token[node] for node in chosen]


def decode_cautious(
    model: Any,
    input_ids: Any,
    cfg: DecodeConfig,
    sink: TokenSink,
    *,
    tokenizer: Any = None,
    punctuation: Optional[Iterable[int]] = None,
    entropy_threshold_low: float = 0.01,
    entropy_threshold_high: float = 1.5,
    max_trials: int = 10,
    min_trials: int = 1,
    max_trial_tokens: Optional[int] = None,
    record: Optional[CautiousRecord] = None,
) -> None:
    """CNTP decoding (see the module docstring).

    Args:
        tokenizer: gives the punctuation ids (:func:`punctuation_ids`); or pass
            ``punctuation`` (token ids) directly. One of the two is required.
        entropy_threshold_low, entropy_threshold_high: the entropy range (nats) mapped to
            ``min_trials .. max_trials``.
        max_trials, min_trials: the trial counts (``1 <= min_trials <= max_trials``).
        max_trial_tokens: cap on a trial's length (default: the remaining token budget).
        record: a :class:`CautiousRecord` to fill (forwards, rows, triggered steps).

    Raises:
        ValueError: no tokenizer nor punctuation, bad thresholds or counts, punctuation ids
            that are not ints. IndexError: a punctuation id outside the model's vocabulary.
        TypeError: ``record`` is not a CautiousRecord, ``punctuation`` not an iterable of ids.
    """
    import torch
    from transformers import DynamicCache

    from tokenloom.decoding.plain import next_token_chooser
    from tokenloom.runtime.model import logits_width
    from tokenloom.sampling.sampler import Sampler

    low, high, lo, hi, cap = _check(
        entropy_threshold_low, entropy_threshold_high, min_trials, max_trials, max_trial_tokens
    )
    if record is not None and not isinstance(record, CautiousRecord):
        raise TypeError(f"record: expected a CautiousRecord or None, got {type(record).__name__}")
    if punctuation is None:
        if tokenizer is None:
            raise ValueError("method 'cautious': pass tokenizer= (or punctuation= token ids) to find the punctuation tokens")
        punctuation = punctuation_ids(tokenizer)
    stop = _stop_ids(punctuation, logits_width(model)) | cfg.eos_token_ids
    record = CautiousRecord() if record is None else record
    if sink.done:  # nothing to generate: the arguments are checked, no model work
        return
    sampler = None if cfg.greedy else Sampler(cfg.temperature, cfg.top_k, cfg.top_p, cfg.min_p, cfg.seed)
    choose = next_token_chooser(cfg) if sampler is None else None
    cache = DynamicCache()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
    record.forwards += 1
    logits = out.logits[:, -1, :].float()
    while True:
        n = 1
        if sampler is not None:
            n = trial_count(_entropy_of(sampler, logits), low, high, lo, hi)
        if n <= 1:
            tokens = [choose(logits) if sampler is None else int(sampler(logits)[0])]
        else:
            budget = cfg.max_new_tokens - len(sink.tokens)
            tokens = _run_trials(model, cache, logits, n, sampler, cfg, stop, min(budget, cap or budget), record)
            if record.keep_trials:
                record.steps[-1]["offset"] = len(sink.tokens)
        if sink.emit(tokens):
            return
        step = torch.tensor([[tokens[-1]]], dtype=torch.long, device=input_ids.device)
        out = model(input_ids=step, use_cache=True, **cache_arg(model, cache))
        record.forwards += 1
        record.rows += 1
        logits = out.logits[:, -1, :].float()
