"""``tokenloom bench``: a Spec-Bench subset (first turn of ``-n`` questions per category) with
several decoding methods on one model, in one process, with a table per category and overall.

Methods are looked up in :data:`BENCH_METHODS` (``greedy``, ``hf``, ``hf-pld``, ``recycling``
built in; add more with :func:`register_bench_method`); any other name registered with
:func:`tokenloom.register_method` is run through :func:`tokenloom.generate`. Methods run
interleaved per question (the order rotates), so machine drift hits all of them alike; ratios
from one run are what to compare. "MAT" is mean accepted tokens per target forward (bonus token
included; plain decoding = 1.00), counted with a forward hook for every method.

The question set is Spec-Bench's ``question.jsonl`` (Apache-2.0, see ``data/spec_bench/LICENSE``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["BENCH_METHODS", "RunResult", "add_parser", "load_questions", "register_bench_method", "run"]

DATA = Path(__file__).parent.parent / "data" / "spec_bench" / "question.jsonl"


@dataclass
class RunResult:
    question_id: int
    category: str
    method: str
    new_tokens: int
    seconds: float
    forwards: int
    same_as_hf: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict)


# fn(model, input_ids, max_new_tokens, eos_ids) -> (new token ids, extra dict)
BenchFn = Callable[[Any, Any, int, List[int]], Tuple[List[int], Dict[str, Any]]]
BENCH_METHODS: Dict[str, BenchFn] = {}
# Stats of ``generate``'s ``stats.extra`` kept in the JSON results.
BENCH_EXTRA_KEYS = (
    "tree_sizes", "accepted_hist", "draft_forwards", "builder_seconds", "draft_seconds", "verify_seconds",
    "draft_forward_seconds", "builder_per_draft_forward", "draft",
)


def register_bench_method(name: str) -> Callable[[BenchFn], BenchFn]:
    """Register ``fn(model, input_ids, max_new_tokens, eos_ids) -> (new_ids, extra)``."""

    def deco(fn: BenchFn) -> BenchFn:
        BENCH_METHODS[name] = fn
        return fn

    return deco


def _tokenloom_method(name: str, **kwargs: Any) -> BenchFn:
    def fn(model: Any, ids: Any, n: int, eos: List[int]) -> Tuple[List[int], Dict[str, Any]]:
        from tokenloom.decoding.generate import generate

        out = generate(model, ids, method=name, max_new_tokens=n, eos_token_id=eos, **kwargs)
        extra = {k: v for k, v in out.stats.extra.items() if k in BENCH_EXTRA_KEYS}
        return out.sequences[0, ids.shape[1]:].tolist(), extra

    return fn


def _hf(prompt_lookup: Optional[int], pack: bool = False) -> BenchFn:
    def fn(model: Any, ids: Any, n: int, eos: List[int]) -> Tuple[List[int], Dict[str, Any]]:
        import torch

        from tokenloom.runtime.cpupack import packed_linears

        kwargs: Dict[str, Any] = {}
        if prompt_lookup:
            kwargs["prompt_lookup_num_tokens"] = prompt_lookup
        with torch.inference_mode(), packed_linears(model, "auto" if pack else False):
            out = model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                eos_token_id=eos, pad_token_id=eos[0] if eos else 0, **kwargs,
            )
        return out[0, ids.shape[1]:].tolist(), {}

    return fn


register_bench_method("greedy")(_tokenloom_method("greedy"))
register_bench_method("recycling")(_tokenloom_method("recycling"))
register_bench_method("hf")(_hf(None))
register_bench_method("hf-pld")(_hf(10))
# HF greedy with tokenloom's packed CPU linears (tokenloom.cpupack): the anchor that isolates
# what speculative decoding adds on top of the faster layers.
register_bench_method("hf-packed")(_hf(None, pack=True))
# DySpec vs a fixed tree of the same node budget vs a chain of the same depth: the same loop,
# the same (default early-exit) draft and the same budget / depth / k.
_DYSPEC_TREES = {"dyspec": "dynamic", "dyspec-fixed": "fixed", "dyspec-chain": "chain"}
for _name, _tree in _DYSPEC_TREES.items():
    register_bench_method(_name)(_tokenloom_method("dyspec", tree=_tree))


def _resolve(name: str, args: argparse.Namespace) -> BenchFn:
    """The bench function of ``name`` with the command line's method options applied
    (``--tree`` for recycling, ``--draft-layers`` / ``--budget`` for the DySpec trio,
    ``--pack`` for every tokenloom method)."""
    pack = {"auto": "auto", "on": True, "off": False}[args.pack]
    kw: Dict[str, Any] = {} if pack == "auto" else {"pack": pack}
    if name == "recycling":
        return _tokenloom_method("recycling", tree=args.tree, **kw)
    if name in _DYSPEC_TREES:
        if args.draft_layers is not None:
            kw["draft_layers"] = args.draft_layers
        if args.budget is not None:
            kw["budget"] = args.budget
        return _tokenloom_method("dyspec", tree=_DYSPEC_TREES[name], **kw)
    if name == "greedy":
        return _tokenloom_method("greedy", **kw)
    if name in BENCH_METHODS:
        return BENCH_METHODS[name]
    from tokenloom.decoding.generate import methods

    if name in methods():
        return _tokenloom_method(name, **kw)
    raise ValueError(f"unknown bench method {name!r}; expected one of {sorted(set(BENCH_METHODS) | set(methods()))}")


def load_questions(n_per_category: int, categories: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """The first ``n_per_category`` questions of each category, interleaved round-robin over
    the categories (so that a partial run covers every category)."""
    qs = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    per: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for q in qs:
        c = q["category"]
        if (not categories or c in categories) and len(per[c]) < n_per_category:
            per[c].append(q)
    out = []
    for i in range(n_per_category):
        out.extend(per[c][i] for c in sorted(per) if i < len(per[c]))
    return out


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="Spec-Bench subset: tokens/s, mean accepted tokens, speedup vs HF greedy")
    p.add_argument("-n", type=int, default=2, help="questions per category (first turn only; default 2)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all 13)")
    p.add_argument("--methods", default="greedy,hf,hf-pld,recycling", help="comma-separated methods")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--model", default=None, help="a local .gguf file or HF model directory (default: embedded)")
    p.add_argument("--tree", default="auto", help="recycling template (default auto)")
    p.add_argument("--draft-layers", type=int, default=None, help="layers of the DySpec early-exit draft")
    p.add_argument("--budget", type=int, default=None, help="DySpec draft nodes per tree")
    p.add_argument(
        "--pack", choices=("auto", "on", "off"), default="auto",
        help="packed oneDNN CPU linears for tokenloom's methods (default auto; see tokenloom.cpupack)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _count_forwards(model: Any) -> Tuple[Any, List[int]]:
    counter = [0]

    def hook(*_: Any) -> None:
        counter[0] += 1

    return model.register_forward_pre_hook(hook), counter


def summarise(results: List[RunResult], methods: Sequence[str]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{category or "overall": {method: {tokens, seconds, tokens_per_s, mat, speedup}}}."""
    groups: Dict[str, List[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.category].append(r)
        groups["overall"].append(r)
    table: Dict[str, Dict[str, Dict[str, float]]] = {}
    for cat, rs in groups.items():
        row: Dict[str, Dict[str, float]] = {}
        for m in methods:
            mr = [r for r in rs if r.method == m]
            if not mr:
                continue
            tok = sum(r.new_tokens for r in mr)
            sec = sum(r.seconds for r in mr)
            fwd = sum(r.forwards for r in mr)
            same = [r.same_as_hf for r in mr if r.same_as_hf is not None]
            row[m] = {
                "tokens": tok, "seconds": sec, "tokens_per_s": tok / sec if sec else 0.0,
                "mat": tok / fwd if fwd else 0.0,
                "same_as_hf": (sum(same) / len(same)) if same else float("nan"),
            }
        base = row.get("hf", {}).get("tokens_per_s")
        for m in row:
            row[m]["speedup"] = row[m]["tokens_per_s"] / base if base else float("nan")
        table[cat] = row
    return table


def format_table(table: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    lines = []
    cats = sorted(c for c in table if c != "overall") + ["overall"]
    for cat in cats:
        if cat not in table:
            continue
        lines.append(f"\n== {cat} ==")
        lines.append(f"{'method':<12} {'tokens':>7} {'tok/s':>8} {'MAT':>6} {'speedup':>8} {'same':>6}")
        for m, v in table[cat].items():
            lines.append(
                f"{m:<12} {int(v['tokens']):>7} {v['tokens_per_s']:>8.2f} {v['mat']:>6.2f} "
                f"{v['speedup']:>7.2f}x {v['same_as_hf']:>6.2f}"
            )
    return "\n".join(lines)


def plot(table: Dict[str, Dict[str, Dict[str, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = sorted(c for c in table if c != "overall") + ["overall"]
    methods = list(table["overall"])
    fig, ax = plt.subplots(figsize=(max(8, len(cats) * 0.9), 4))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = [table[c].get(m, {}).get("speedup", 0.0) for c in cats]
        ax.bar([j + i * w for j in range(len(cats))], ys, width=w, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cats))])
    ax.set_xticklabels(cats, rotation=30, ha="right")
    ax.set_ylabel("speedup vs HF greedy (tokens/s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default
    from tokenloom.integrations.hf.models import stop_token_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.n < 1:
        raise ValueError(f"-n: expected >= 1, got {args.n}")
    fns = {m: _resolve(m, args) for m in methods}
    cats = [c.strip() for c in args.categories.split(",")] if args.categories else None
    questions = load_questions(args.n, cats)
    if not questions:
        raise ValueError(f"no questions for categories {cats}")
    print(f"[tokenloom] loading {'model ' + args.model if args.model else 'embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr)
    model, tok = load_or_default(args.model)
    eos = stop_token_ids(model, tok)
    handle, counter = _count_forwards(model)
    results: List[RunResult] = []
    meta = _meta(args, len(questions))
    try:
        warm = chat_input_ids(tok, "Say hello.")
        for m in tqdm(methods, desc="warm-up", disable=args.no_progress, file=sys.stderr):
            fns[m](model, warm, 8, eos)
        bar = tqdm(total=len(questions) * len(methods), desc="bench", disable=args.no_progress, file=sys.stderr)
        for qi, q in enumerate(questions):
            ids = chat_input_ids(tok, q["turns"][0])
            order = methods[qi % len(methods):] + methods[: qi % len(methods)]
            outs: Dict[str, List[int]] = {}
            for m in order:
                counter[0] = 0
                start = time.perf_counter()
                new, extra = fns[m](model, ids, args.max_new_tokens, eos)
                sec = time.perf_counter() - start
                outs[m] = new
                results.append(RunResult(q["question_id"], q["category"], m, len(new), sec, counter[0], None, extra))
                bar.set_postfix_str(f"{q['category']}/{m}")
                bar.update(1)
            if "hf" in outs:
                for r in results[-len(methods):]:
                    r.same_as_hf = outs[r.method] == outs["hf"]
            if args.json:  # after every question, so an interrupted run still leaves its data
                _write_json(args.json, meta, summarise(results, methods), results)
        bar.close()
    finally:
        handle.remove()
    table = summarise(results, methods)
    print(format_table(table))
    if args.json:
        _write_json(args.json, meta, table, results)
    if args.plot:
        plot(table, args.plot)
    return 0


def _write_json(path: str, meta: Dict[str, Any], table: Any, results: List[RunResult]) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "summary": table, "results": [asdict(r) for r in results]}, indent=1))
    tmp.replace(path)


def _meta(args: argparse.Namespace, n_questions: int) -> Dict[str, Any]:
    import os

    import torch

    return {
        "command": "tokenloom " + " ".join(sys.argv[1:]) if sys.argv else "",
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}".strip(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model or "embedded SmolLM2-135M-Instruct (fp32)",
        "max_new_tokens": args.max_new_tokens,
        "questions": n_questions,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
