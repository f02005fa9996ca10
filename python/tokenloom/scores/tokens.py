"""Per-token statistics of a causal LM over given texts, from one forward per window:
the log-probability, the rank and the next-token distribution's entropy and log-prob spread.

Every target token ``ids[t]`` (``t >= 1``) is scored once, from ``logits`` after ``ids[:t]``
(the first token has no prediction: prepend a BOS id to score it). Texts longer than
``window`` tokens are scored with a sliding window of ``stride`` (the standard strided
perplexity): window ``[b, b + window)`` starts at ``b = 0, stride, 2 * stride, ...`` and scores
only the targets no earlier window scored, so every target after the first window sees at
least ``window - stride`` tokens of context. Windows of all texts are batched (right padding
with an attention mask), ``batch_size`` windows per forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

from tokenloom._arrays import as_array, as_count

__all__ = ["TokenStats", "check_window", "row_stats", "token_stats", "tokenize", "windows"]


@dataclass
class TokenStats:
    """Per-token statistics of one text (``n`` tokens, ``n - 1`` scored targets).

    Attributes:
        ids: int64 [n], the text's tokens.
        logprobs: float64 [n - 1], ``log p(ids[t] | ids[:t])`` for ``t = 1..n-1`` (nats).
        entropy: float64 [n - 1], entropy of the next-token distribution before ``ids[t]``
            (nats); ``-entropy`` is the mean of ``log p(z)`` over ``z ~ p`` (Min-K%++'s mu).
        logp_std: float64 [n - 1], the standard deviation of ``log p(z)`` over ``z ~ p``
            (Min-K%++'s sigma).
        ranks: int64 [n - 1], 1 + the number of tokens with a strictly larger logit than
            ``ids[t]`` (1 = the argmax; ties count in the target's favour).
    """

    ids: np.ndarray
    logprobs: np.ndarray
    entropy: np.ndarray
    logp_std: np.ndarray
    ranks: np.ndarray

    @property
    def targets(self) -> np.ndarray:
        """int64 [n - 1]: the scored tokens ``ids[1:]``."""
        return self.ids[1:]

    def __len__(self) -> int:
        return int(self.logprobs.shape[0])


def row_stats(logits: Any, targets: Any) -> Tuple[Any, Any, Any, Any]:
    """Statistics of ``N`` next-token distributions at their target tokens.

    Args:
        logits: float torch tensor [N, V].
        targets: int64 torch tensor [N], ids in [0, V).

    Returns:
        ``(logprobs, entropy, logp_std, ranks)``, torch tensors [N] (float32, float32,
        float32, int64) on the logits' device.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    # 0 * -inf would be NaN for masked (-inf) logits: those tokens contribute 0.
    plogp = torch.where(p > 0, p * logp, torch.zeros_like(p))
    mu = plogp.sum(-1)
    second = torch.where(p > 0, p * logp * logp, torch.zeros_like(p)).sum(-1)
    var = (second - mu * mu).clamp_min(0.0)
    tgt = targets.view(-1, 1)
    lp = logp.gather(1, tgt).squeeze(1)
    ranks = (logits > logits.gather(1, tgt)).sum(-1) + 1
    return lp, -mu, var.sqrt(), ranks


def windows(n: int, window: int, stride: int) -> List[Tuple[int, int, int]]:
    """The windows of a text of ``n`` tokens: ``(begin, end, first)`` with the forward over
    ``ids[begin:end]`` scoring targets ``first..end-1``. The targets ``1..n-1`` are covered
    exactly once, in order."""
    out: List[Tuple[int, int, int]] = []
    done = 1
    b = 0
    while done < n:
        e = min(b + window, n)
        if e > done:
            out.append((b, e, done))
            done = e
        b += stride
    return out


def _sequences(inputs: Any, vocab: int) -> List[np.ndarray]:
    if hasattr(inputs, "dim") or isinstance(inputs, np.ndarray):
        if inputs.ndim == 1:
            inputs = [inputs]
        elif inputs.ndim != 2:
            raise ValueError(f"inputs: expected a [B, n] array or a list of 1-D id sequences, got shape {tuple(inputs.shape)}")
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise TypeError(f"inputs: expected a list of token-id sequences, got {type(inputs).__name__}")
    seqs = []
    for i, x in enumerate(inputs):
        if isinstance(x, (str, bytes)):
            raise TypeError(f"inputs[{i}]: expected token ids, got {type(x).__name__} (tokenize texts first)")
        a = as_array(x, np.int64, f"inputs[{i}]", 1)
        if a.size < 2:
            raise ValueError(f"inputs[{i}]: expected at least 2 tokens (the first is context only), got {a.size}")
        if a.min() < 0 or a.max() >= vocab:
            bad = int(a.min()) if a.min() < 0 else int(a.max())
            raise IndexError(f"inputs[{i}]: token id {bad} is outside the model's vocabulary [0, {vocab})")
        seqs.append(a)
    if not seqs:
        raise ValueError("inputs: expected at least one sequence, got none")
    return seqs


def check_window(window: Any, stride: Any) -> Tuple[int, int]:
    """``(window, stride)`` validated: ``window >= 2``, ``1 <= stride <= window - 1``
    (default ``window // 2``)."""
    w = as_count(window, "window", 2)
    s = w // 2 if stride is None else as_count(stride, "stride", 1)
    if s > w - 1:
        raise ValueError(f"stride: expected <= window - 1 = {w - 1} (a target at a window start would have no context), got {s}")
    return w, s


def token_stats(
    model: Any,
    inputs: Any,
    *,
    window: int = 512,
    stride: Any = None,
    batch_size: int = 4,
    progress: bool = False,
) -> List[TokenStats]:
    """Per-token statistics of ``model`` over every sequence of ``inputs``.

    Args:
        model: a Hugging Face causal LM.
        inputs: a list of 1-D token-id sequences (lists, numpy arrays, tensors; lengths may
            differ, each >= 2), or a 2-D array / tensor [B, n] (one row per text).
        window: tokens per forward (>= 2); texts longer than this slide.
        stride: window shift (``1 <= stride <= window - 1``, default ``window // 2``).
        batch_size: windows per forward (>= 1). Peak memory is about
            ``batch_size * window * V * 4`` bytes of logits.
        progress: show a progress bar over forwards.

    Returns:
        list[TokenStats], one per sequence, in order.

    Raises:
        ValueError: a sequence of fewer than 2 tokens, bad sizes.
        IndexError: an id outside the model's vocabulary.
        TypeError: texts instead of ids, or not a sequence.
    """
    import torch

    from tokenloom.runtime.model import logits_width, model_dtype_device

    w, s = check_window(window, stride)
    bs = as_count(batch_size, "batch_size", 1)
    seqs = _sequences(inputs, logits_width(model))
    _, device = model_dtype_device(model)
    jobs = [(i, b, e, f) for i, a in enumerate(seqs) for (b, e, f) in windows(a.size, w, s)]
    jobs.sort(key=lambda j: j[2] - j[1], reverse=True)  # similar lengths share a batch
    out = [np.empty((4, a.size - 1), dtype=np.float64) for a in seqs]
    batches = [jobs[k : k + bs] for k in range(0, len(jobs), bs)]
    bar = _bar(len(batches), progress)
    with torch.inference_mode():
        for batch in batches:
            length = batch[0][2] - batch[0][1]
            ids = torch.zeros((len(batch), length), dtype=torch.long)
            att = torch.zeros((len(batch), length), dtype=torch.long)
            for r, (i, b, e, _) in enumerate(batch):
                ids[r, : e - b] = torch.from_numpy(seqs[i][b:e])
                att[r, : e - b] = 1
            logits = model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False).logits
            for r, (i, b, e, f) in enumerate(batch):
                rows = logits[r, f - 1 - b : e - 1 - b]
                tgt = torch.from_numpy(seqs[i][f:e]).to(rows.device)
                stats = row_stats(rows, tgt)
                for k, x in enumerate(stats):
                    out[i][k, f - 1 : e - 1] = x.double().cpu().numpy()
            del logits
            bar.update(1)
    bar.close()
    return [
        TokenStats(ids=a, logprobs=o[0].copy(), entropy=o[1].copy(), logp_std=o[2].copy(), ranks=o[3].astype(np.int64))
        for a, o in zip(seqs, out)
    ]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="scoring", unit="forward")


def tokenize(tokenizer: Any, texts: Sequence[str]) -> List[np.ndarray]:
    """Token ids of ``texts`` with the tokenizer's defaults (special tokens included).

    Raises:
        TypeError: a text that is not a str.
    """
    out = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}]: expected a str, got {type(t).__name__}")
        out.append(np.asarray(tokenizer(t)["input_ids"], dtype=np.int64))
    return out
