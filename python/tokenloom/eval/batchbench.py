"""Batch benchmark (``tokenloom bench --batch 1,4,8``): for each batch size B, Spec-Bench prompts
in groups of B, left-padded, decoded by HF's batched greedy ``model.generate`` on the padded
batch (the anchor), by each tokenloom method on the same batch (``tokenloom.generate`` with the
``attention_mask``) and by the same tokenloom method one row at a time (B calls at batch 1).

Reported per (B, method): new tokens per second over all groups, the speedup over HF batched
greedy, the speedup of the batched call over its B single calls, the rows' mean accepted tokens
per step (``MAT``, bonus token included) and whether every row gave HF's batched tokens. The
runs alternate per group (the order rotates) after a warm-up; ratios from one run are what to
compare.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

__all__ = ["BatchResult", "check_batches", "format_batch_table", "left_pad", "run_batch_bench"]

#: Methods of ``tokenloom bench --batch`` when ``--methods`` is not given.
DEFAULT_BATCH_METHODS = ("plain", "recycling", "merged")


@dataclass
class BatchResult:
    """One (batch size, method) over every group: ``tokens`` new tokens (rows' own, up to
    their stop token), ``seconds`` batched, ``single_seconds`` the same rows one at a time
    (0 for ``hf``), ``steps`` the rows' target steps, ``same_as_hf`` whether every row gave HF's
    batched greedy tokens."""

    batch: int
    method: str
    tokens: int = 0
    seconds: float = 0.0
    single_seconds: float = 0.0
    steps: int = 0
    same_as_hf: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def check_batches(batches: Sequence[int], methods: Sequence[str]) -> None:
    """Refuse batch sizes below 1 and names that are not ``tokenloom.generate`` methods with a
    batch form (``plain`` and the speculative methods).

    Raises:
        ValueError: no batch size, a size below 1, an unknown or unbatched method.
    """
    from tokenloom.decoding.batch import batch_factory
    from tokenloom.decoding.methods import resolve_method

    if not batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batches):
        raise ValueError(f"batch sizes: expected integers >= 1, got {list(batches)}")
    if not methods:
        raise ValueError("methods: expected at least one tokenloom method")
    for m in methods:
        batch_factory(m, resolve_method(m), {})


def left_pad(rows: Sequence[Any], pad: int) -> Tuple[Any, Any]:
    """``(input_ids, attention_mask)`` LongTensors [B, max len] of 1-D id tensors ``rows``,
    left-padded with ``pad``."""
    import torch

    n = max(int(r.numel()) for r in rows)
    ids = torch.full((len(rows), n), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, n - r.numel() :] = r
        mask[b, n - r.numel() :] = 1
    return ids, mask


def _cut(row: List[int], eos: Sequence[int]) -> List[int]:
    """A row's new tokens up to its first stop token (included)."""
    for j, t in enumerate(row):
        if t in eos:
            return row[: j + 1]
    return row


def _hf(model: Any, ids: Any, mask: Any, n: int, eos: List[int], pad: int) -> List[List[int]]:
    import torch

    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=n, eos_token_id=eos,
                             pad_token_id=pad)
    return [_cut(r, eos) for r in out[:, ids.shape[1] :].tolist()]


def _ours(model: Any, ids: Any, mask: Any, n: int, eos: List[int], method: str, kw: Dict[str, Any]) -> Tuple[List[List[int]], int]:
    from tokenloom.decoding.generate import generate

    out = generate(model, ids, attention_mask=mask, method=method, max_new_tokens=n, eos_token_id=eos, **kw)
    m = out.attention_mask[:, ids.shape[1] :]
    rows = [seq[: int(k.sum())] for seq, k in zip(out.sequences[:, ids.shape[1] :].tolist(), m)]
    steps = sum(r.steps for r in out.stats.rows) if out.stats.rows else out.stats.steps
    return rows, steps


def _singles(model: Any, rows: Sequence[Any], n: int, eos: List[int], method: str, kw: Dict[str, Any]) -> None:
    from tokenloom.decoding.generate import generate

    for r in rows:
        generate(model, r.view(1, -1), method=method, max_new_tokens=n, eos_token_id=eos, **kw)


def run_batch_bench(
    model: Any,
    prompts: Sequence[Any],
    batches: Sequence[int],
    methods: Sequence[str],
    max_new_tokens: int,
    eos: List[int],
    *,
    method_kwargs: Dict[str, Dict[str, Any]] = {},  # noqa: B006 - read only
    pad: int = 0,
    progress: Any = None,
) -> List[BatchResult]:
    """Run the batch bench.

    Args:
        model: an HF causal LM; prompts: 1-D LongTensors (one prompt each; groups of B are
            taken in order, cycling when fewer than B).
        batches: batch sizes; methods: tokenloom method names (``plain`` and speculative ones).
        max_new_tokens: per row; eos: stop ids; pad: the pad id of the left padding.
        method_kwargs: extra ``generate`` keywords per method.
        progress: optional callable ``progress(label)`` called after each timed run.

    Returns:
        One :class:`BatchResult` per (batch size, ``"hf"`` or method).
    """
    from tokenloom.spec.persist import separate_states

    check_batches(batches, methods)
    out: List[BatchResult] = []
    # Each method keeps its own process-wide drafter states per batch size, its batched runs
    # apart from its one-at-a-time runs and the warm-up apart from both: no timed run drafts
    # from rows another run wrote from the same prompts.
    own: Dict[Any, Any] = {}
    for b in batches:
        groups = max(1, len(prompts) // b)
        res = {m: BatchResult(b, m) for m in ["hf", *methods]}
        for g in range(groups):
            rows = [prompts[(g * b + i) % len(prompts)] for i in range(b)]
            ids, mask = left_pad(rows, pad)
            if g == 0:  # warm-up of this shape: untimed
                _hf(model, ids, mask, 8, eos, pad)
                for m in methods:
                    with separate_states(own, (m, "warm-up", b)):
                        _ours(model, ids, mask, 8, eos, m, method_kwargs.get(m, {}))
            names = ["hf", *methods]
            shift = g % len(names)
            for m in names[shift:] + names[:shift]:
                r = res[m]
                start = time.perf_counter()
                if m == "hf":
                    got = _hf(model, ids, mask, max_new_tokens, eos, pad)
                    steps = sum(len(x) for x in got)  # one token per row per forward
                else:
                    with separate_states(own, (m, "batch", b)):
                        got, steps = _ours(model, ids, mask, max_new_tokens, eos, m, method_kwargs.get(m, {}))
                r.seconds += time.perf_counter() - start
                r.tokens += sum(len(x) for x in got)
                r.steps += steps
                r.extra.setdefault("rows", []).extend(got)
                if progress is not None:
                    progress(f"B={b} {m}")
            for m in methods:
                with separate_states(own, (m, "single", b)):
                    start = time.perf_counter()
                    _singles(model, rows, max_new_tokens, eos, m, method_kwargs.get(m, {}))
                res[m].single_seconds += time.perf_counter() - start
                if progress is not None:
                    progress(f"B={b} {m} x1")
        hf_rows = res["hf"].extra.pop("rows")
        for m in methods:
            res[m].same_as_hf = res[m].extra.pop("rows") == hf_rows
        out.extend(res.values())
    return out


def format_batch_table(results: Sequence[BatchResult]) -> str:
    """A text table: batch, method, tokens/s, speedup vs HF batched greedy, batched vs B single
    calls, MAT (rows' new tokens per target step), same tokens as HF."""
    hf = {r.batch: r.tokens_per_second for r in results if r.method == "hf"}
    lines = [f"{'batch':>5}  {'method':<12} {'tokens/s':>9} {'vs HF':>7} {'vs B x 1':>9} {'MAT':>5}  same as HF"]
    for r in results:
        vs_hf = r.tokens_per_second / hf[r.batch] if hf.get(r.batch) else 0.0
        single = f"{r.single_seconds / r.seconds:8.2f}x" if r.single_seconds and r.seconds else f"{'-':>9}"
        mat = f"{r.tokens / r.steps:5.2f}" if r.steps else f"{'-':>5}"
        same = "-" if r.method == "hf" else ("yes" if r.same_as_hf else "NO")
        lines.append(f"{r.batch:>5}  {r.method:<12} {r.tokens_per_second:9.1f} {vs_hf:6.2f}x {single} {mat}  {same}")
    return "\n".join(lines)
