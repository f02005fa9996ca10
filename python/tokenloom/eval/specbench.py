"""Spec-Bench harness: the first turn of ``n`` questions per category, several decoding methods
on one model, in one process, with a table per category and overall.

A bench method is ``fn(model, input_ids, max_new_tokens, eos_ids) -> (new token ids, extra)``.
Names resolve in this order (:func:`resolve`):

1. :data:`BENCH_METHODS`: the Hugging Face anchors (``hf``: HF greedy ``generate``; ``hf-pld``:
   HF prompt lookup; ``hf-packed``: HF greedy on tokenloom's packed CPU linears) and anything
   added with :func:`register_bench_method`;
2. :data:`VARIANTS`: a tokenloom method with fixed keywords (``dyspec`` / ``dyspec-fixed`` /
   ``dyspec-chain``: the same DySpec loop, draft and budget with a dynamic tree, a fixed tree
   and a chain);
3. every name :func:`tokenloom.methods` returns, run through :func:`tokenloom.generate`.

Methods run interleaved per question (the order rotates), so machine drift hits all of them
alike; ratios from one run are what to compare. "MAT" is mean accepted tokens per target
forward (bonus token included; plain decoding = 1.00), counted with a forward hook for every
method, the prefill included.

The question set is Spec-Bench's ``question.jsonl`` (Apache-2.0, see ``data/spec_bench/LICENSE``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from tokenloom.eval.workloads import build_workloads, check_workloads
from tokenloom.integrations.hf.models import check_dtype
from tokenloom.runtime.machine import BUSY_LOAD_PER_CPU, describe, machine_info, machine_load

__all__ = [
    "BENCH_METHODS",
    "BenchConfig",
    "ForwardCounter",
    "MethodOptions",
    "RunResult",
    "HF_ANCHORS",
    "VARIANTS",
    "bench_methods",
    "best_anchor",
    "categories",
    "check_config",
    "count_forwards",
    "default_methods",
    "format_spread",
    "format_table",
    "header",
    "load_questions",
    "machine_load",
    "plot",
    "plot_context",
    "register_bench_method",
    "resolve",
    "round_spread",
    "run_bench",
    "run_bench_rounds",
    "summarise",
    "table_anchor",
    "write_json",
]

DATA = Path(__file__).parent.parent / "data" / "spec_bench" / "question.jsonl"

# fn(model, input_ids, max_new_tokens, eos_ids) -> (new token ids, extra dict)
BenchFn = Callable[[Any, Any, int, List[int]], Tuple[List[int], Dict[str, Any]]]
# Table = {category or "overall": {method: {tokens, seconds, tokens_per_s, mat, same_as_hf, speedup}}}
Table = Dict[str, Dict[str, Dict[str, float]]]

# Stats of ``generate``'s ``stats.extra`` kept in the JSON results.
BENCH_EXTRA_KEYS = (
    "tree_sizes", "accepted_hist", "draft_forwards", "builder_seconds", "draft_seconds", "verify_seconds",
    "draft_forward_seconds", "builder_per_draft_forward", "draft",
)


@dataclass
class RunResult:
    """One method on one question."""

    question_id: int
    category: str
    method: str
    new_tokens: int
    seconds: float
    forwards: int
    same_as_hf: Optional[bool] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    round: int = 0
    workload: str = "specbench"


@dataclass(frozen=True)
class MethodOptions:
    """Command-line options of tokenloom's methods; each reaches only the methods named in
    :data:`OPTION_KEYS` (``pack`` reaches every tokenloom method). ``None`` / ``"auto"``: the
    method's default. ``persist`` (recycling, suffix, merged): False (default) starts from a fresh recycler and
    saves nothing, so a run does not depend on earlier runs; None / True use the state saved
    in the user cache (:mod:`tokenloom.spec.persist`). ``cache_output`` (suffix, merged): False
    keeps each request's output out of the cross-request cache (``--compare`` times the same
    prompt several times, which such a cache would otherwise answer from the earlier rounds)."""

    tree: Optional[str] = None
    draft_layers: Optional[int] = None
    budget: Optional[int] = None
    pack: Union[bool, str] = "auto"
    persist: Optional[bool] = False
    cache_output: Optional[bool] = None


# Which MethodOptions field is passed to which tokenloom method (as a generate keyword).
OPTION_KEYS: Dict[str, Tuple[str, ...]] = {
    "recycling": ("tree", "persist"),
    "suffix": ("persist", "cache_output"),
    "merged": ("persist", "cache_output"),
    "dyspec": ("draft_layers", "budget"),
}


def tokenloom_method(name: str, **kwargs: Any) -> BenchFn:
    """The bench function running ``tokenloom.generate(method=name, **kwargs)``."""

    def fn(model: Any, ids: Any, n: int, eos: List[int]) -> Tuple[List[int], Dict[str, Any]]:
        from tokenloom.decoding.generate import generate

        out = generate(model, ids, method=name, max_new_tokens=n, eos_token_id=eos, **kwargs)
        extra = {k: v for k, v in out.stats.extra.items() if k in BENCH_EXTRA_KEYS}
        return out.sequences[0, ids.shape[1]:].tolist(), extra

    return fn


def hf_method(prompt_lookup: Optional[int] = None, pack: bool = False) -> BenchFn:
    """The bench function running HF ``model.generate`` greedily (with prompt lookup of
    ``prompt_lookup`` tokens; inside :func:`tokenloom.runtime.cpupack.packed_linears` when
    ``pack``)."""

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


#: The HF configurations a tokenloom method is measured against, with what they are: the
#: fastest of those that ran (:func:`best_anchor`) is the anchor every table names.
HF_ANCHORS: Dict[str, str] = {
    "hf": "HF greedy as loaded",
    "hf-packed": "HF greedy on packed linears",
    "hf-pld": "HF prompt lookup",
    "hf-pld-packed": "HF prompt lookup on packed linears",
}

BENCH_METHODS: Dict[str, BenchFn] = {
    "hf": hf_method(),
    "hf-pld": hf_method(prompt_lookup=10),
    # HF greedy on tokenloom's packed CPU linears: the anchor that isolates what speculative
    # decoding adds on top of the faster layers.
    "hf-packed": hf_method(pack=True),
    # HF prompt lookup on the same packed linears (the fair prompt-lookup anchor).
    "hf-pld-packed": hf_method(prompt_lookup=10, pack=True),
}

# DySpec vs a fixed tree of the same node budget vs a chain of the same depth: the same loop,
# the same (default early-exit) draft and the same budget / depth / k.
VARIANTS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    "dyspec": ("dyspec", {"tree": "dynamic"}),
    "dyspec-fixed": ("dyspec", {"tree": "fixed"}),
    "dyspec-chain": ("dyspec", {"tree": "chain"}),
}


def register_bench_method(name: str) -> Callable[[BenchFn], BenchFn]:
    """Register ``fn(model, input_ids, max_new_tokens, eos_ids) -> (new_ids, extra)`` as the
    bench method ``name`` (it takes precedence over tokenloom's methods of that name)."""

    def deco(fn: BenchFn) -> BenchFn:
        BENCH_METHODS[name] = fn
        return fn

    return deco


def _generate_methods() -> List[str]:
    from tokenloom.decoding.generate import methods

    return list(methods())


def bench_methods() -> List[str]:
    """Every name :func:`resolve` accepts (``<peer>-<budget>`` stands for the budgeted peers of
    :mod:`tokenloom.eval.peers`, e.g. ``merged-16``)."""
    from tokenloom.eval.peers import PEER_KINDS

    tl = _generate_methods()
    variants = [v for v, (base, _) in VARIANTS.items() if base in tl]
    return sorted(set(BENCH_METHODS) | set(variants) | set(tl) | {f"{k}-<budget>" for k in PEER_KINDS})


def default_methods() -> List[str]:
    """Plain decoding (``plain`` when registered, else ``greedy``), the HF anchors ``hf``,
    ``hf-packed`` and ``hf-pld`` (the best of them is the anchor, :func:`best_anchor`), and
    ``recycling`` and ``merged`` when registered."""
    tl = _generate_methods()
    plain = "plain" if "plain" in tl else "greedy"
    return [m for m in (plain, "hf", "hf-packed", "hf-pld", "recycling", "merged") if m in tl or m in BENCH_METHODS]


def best_anchor(rates: Dict[str, float]) -> Optional[str]:
    """The fastest of :data:`HF_ANCHORS` in ``{method: tokens/s}`` (None when none ran)."""
    ran = [(v, m) for m, v in rates.items() if m in HF_ANCHORS and v == v and v > 0]
    return max(ran)[1] if ran else None


def method_kwargs(method: str, options: MethodOptions) -> Dict[str, Any]:
    """The ``generate`` keywords of ``options`` that reach the tokenloom method ``method``."""
    kw: Dict[str, Any] = {}
    if options.pack != "auto":
        kw["pack"] = options.pack
    for key in OPTION_KEYS.get(method, ()):
        value = getattr(options, key)
        if value is not None and not (key == "persist" and value is True):
            kw[key] = value
    return kw


def resolve(name: str, options: MethodOptions = MethodOptions()) -> BenchFn:
    """The bench function of ``name`` with ``options`` applied (see the module docstring).

    Raises:
        ValueError: an unknown name (the message lists :func:`bench_methods`).
    """
    if name in BENCH_METHODS:
        return BENCH_METHODS[name]
    from tokenloom.eval.peers import peer_method

    peer = peer_method(name)
    if peer is not None:
        return peer
    tl = _generate_methods()
    if name in VARIANTS and VARIANTS[name][0] in tl:
        base, fixed = VARIANTS[name]
    elif name in tl:
        base, fixed = name, {}
    else:
        raise ValueError(f"unknown bench method {name!r}; expected one of {bench_methods()}")
    return tokenloom_method(base, **{**method_kwargs(base, options), **fixed})


def _all_questions() -> List[Dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]


def categories() -> List[str]:
    """The 13 Spec-Bench categories, sorted."""
    return sorted({q["category"] for q in _all_questions()})


def _check_categories(cats: Optional[Sequence[str]]) -> None:
    if cats is None:
        return
    valid = categories()
    unknown = [c for c in cats if c not in valid]
    if unknown or not cats:
        raise ValueError(f"categories: unknown {unknown or 'empty list'}; expected some of {valid}")


def load_questions(n_per_category: int, categories: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """The first ``n_per_category`` questions of each category (all categories when
    ``categories`` is None), interleaved round-robin over the categories, so that a partial
    run covers every category.

    Raises:
        ValueError: ``n_per_category < 1`` or an unknown category (the message lists the valid ones).
    """
    if n_per_category < 1:
        raise ValueError(f"n_per_category: expected >= 1, got {n_per_category}")
    _check_categories(categories)
    per: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    for q in _all_questions():
        c = q["category"]
        if (not categories or c in categories) and len(per[c]) < n_per_category:
            per[c].append(q)
    out: List[Dict[str, Any]] = []
    for i in range(n_per_category):
        out.extend(per[c][i] for c in sorted(per) if i < len(per[c]))
    return out


@dataclass
class BenchConfig:
    """One ``tokenloom bench`` run. ``methods=None``: :func:`default_methods`;
    ``categories=None``: all 13; ``threads=None``: torch's default; ``model=None``: the
    embedded SmolLM2-135M-Instruct; ``dtype``: the weights' dtype after loading (one of
    :data:`~tokenloom.integrations.hf.models.DTYPES`; every method and anchor runs in it);
    ``repeat``: rounds over the whole question set (each
    round starts from a fresh recycler unless ``options.persist``), summarised by the median
    and spread of the per-round results (:func:`round_spread`). ``warm``: questions per
    category, after the measured ones (never measured), that every tokenloom method answers
    untimed at the start of each round, each in its own drafter state (the user's with
    ``options.persist``): the measured questions
    then meet a recycler / suffix cache that has learnt from other requests, as in a running
    process (0: a cold start every round)."""

    methods: Optional[Sequence[str]] = None
    n: int = 2
    categories: Optional[Sequence[str]] = None
    max_new_tokens: int = 128
    model: Optional[str] = None
    options: MethodOptions = field(default_factory=MethodOptions)
    threads: Optional[int] = None
    json_path: Optional[str] = None
    plot_path: Optional[str] = None
    progress: bool = True
    command: str = ""
    repeat: int = 1
    workloads: Optional[Sequence[str]] = None
    dtype: str = "float32"
    warm: int = 0


def _check_positive(name: str, value: Optional[int]) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def _check_output(name: str, path: Optional[str]) -> None:
    if path is None:
        return
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{name}: the directory {str(parent)!r} of {path!r} does not exist")


def check_config(cfg: BenchConfig) -> Dict[str, BenchFn]:
    """Everything that can be checked without the model; returns ``{method: bench fn}``.

    Raises:
        ValueError: no or unknown methods, a method twice, unknown categories, workloads or dtype, ``n`` /
            ``max_new_tokens`` / ``threads`` / ``repeat`` / ``draft_layers`` / ``budget`` below 1,
            ``warm`` below 0,
            ``plot_path`` without matplotlib.
        FileNotFoundError: the directory of ``json_path`` or ``plot_path`` does not exist.
    """
    methods = list(cfg.methods) if cfg.methods is not None else default_methods()
    if not methods:
        raise ValueError(f"methods: expected at least one of {bench_methods()}, got none")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise ValueError(f"methods: each method once, got {dup} more than once")
    _check_positive("n", cfg.n)
    _check_positive("max_new_tokens", cfg.max_new_tokens)
    _check_positive("threads", cfg.threads)
    _check_positive("repeat", cfg.repeat)
    if not isinstance(cfg.warm, int) or isinstance(cfg.warm, bool) or cfg.warm < 0:
        raise ValueError(f"warm: expected an int >= 0, got {cfg.warm!r}")
    _check_positive("draft_layers", cfg.options.draft_layers)
    _check_positive("budget", cfg.options.budget)
    _check_categories(cfg.categories)
    _check_output("json_path", cfg.json_path)
    _check_output("plot_path", cfg.plot_path)
    check_workloads(cfg.workloads)
    check_dtype(cfg.dtype)
    if cfg.plot_path and importlib.util.find_spec("matplotlib") is None:
        raise ValueError("plot_path: needs matplotlib, which is not installed: pip install 'tokenloom[plot]' (or: pip install matplotlib)")
    return {m: resolve(m, cfg.options) for m in methods}


class ForwardCounter:
    """Forwards of one model since :meth:`reset`: its module calls (counted by the pre-hook
    :func:`count_forwards` installs) plus tokenloom's lean step forwards, which do not call the
    module (:func:`~tokenloom.runtime.leanforward.lean_forwards`)."""

    def __init__(self, model: Any):
        self.model = model
        self.calls = 0
        self._lean = self._lean_now()

    def _lean_now(self) -> int:
        from tokenloom.runtime.leanforward import lean_forwards

        return lean_forwards(self.model)

    def reset(self) -> None:
        self.calls = 0
        self._lean = self._lean_now()

    @property
    def value(self) -> int:
        return self.calls + self._lean_now() - self._lean


def count_forwards(model: Any) -> Tuple[Any, ForwardCounter]:
    """Count the forwards of ``model``: ``(handle of the pre-hook, counter)``; remove the handle
    when done."""
    from tokenloom.runtime.leanforward import COUNTING_HOOK

    counter = ForwardCounter(model)

    def hook(*_: Any) -> None:
        counter.calls += 1

    setattr(hook, COUNTING_HOOK, True)  # the lean step forward still runs (and counts itself)
    return model.register_forward_pre_hook(hook), counter


def summarise(results: List[RunResult], methods: Sequence[str]) -> Table:
    """{category or "overall": {method: {tokens, seconds, tokens_per_s, mat, same_as_hf,
    speedup, vs_anchor}}}; ``speedup`` is tokens/s over ``hf``'s (``hf-packed``'s without
    ``hf``; NaN without either); ``vs_anchor`` over the anchor's, the HF configuration fastest
    overall (:func:`best_anchor`; NaN when no HF configuration ran), in every category."""
    groups: Dict[str, List[RunResult]] = defaultdict(list)
    workloads = {r.workload for r in results}
    for r in results:
        groups[r.category].append(r)
        groups["overall"].append(r)
        if len(workloads) > 1:
            groups[f"overall/{r.workload}"].append(r)
    table: Table = {}
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
        base = row.get("hf", row.get("hf-packed", {})).get("tokens_per_s")
        for m in row:
            row[m]["speedup"] = row[m]["tokens_per_s"] / base if base else float("nan")
        table[cat] = row
    anchor = table_anchor(table)
    for row in table.values():
        ref = row.get(anchor, {}).get("tokens_per_s") if anchor else None
        for m in row:
            row[m]["vs_anchor"] = row[m]["tokens_per_s"] / ref if ref else float("nan")
    return table


def table_anchor(table: Table) -> Optional[str]:
    """The anchor of a :func:`summarise` table: the HF configuration fastest overall."""
    return best_anchor({m: v["tokens_per_s"] for m, v in table.get("overall", {}).items()})


def round_spread(results: List[RunResult], methods: Sequence[str]) -> Dict[str, Dict[str, float]]:
    """Per method, over the rounds of a repeated run: the median, min and max of the overall
    tokens/s, of the speedup over ``hf`` (NaN without ``hf``) and over each round's anchor
    (``vs_anchor``), and ``rounds``."""
    import statistics

    rounds = sorted({r.round for r in results})
    per: Dict[str, Dict[str, List[float]]] = {m: {"tps": [], "speedup": [], "vs_anchor": []} for m in methods}
    for k in rounds:
        overall = summarise([r for r in results if r.round == k], methods).get("overall", {})
        for m in methods:
            if m in overall:
                per[m]["tps"].append(overall[m]["tokens_per_s"])
                per[m]["speedup"].append(overall[m]["speedup"])
                per[m]["vs_anchor"].append(overall[m]["vs_anchor"])
    out: Dict[str, Dict[str, float]] = {}
    for m, v in per.items():
        if not v["tps"]:
            continue
        row = {"rounds": float(len(v["tps"]))}
        for key, xs in v.items():
            row[f"{key}_median"] = statistics.median(xs)
            row[f"{key}_min"], row[f"{key}_max"] = min(xs), max(xs)
        out[m] = row
    return out


def format_spread(spread: Dict[str, Dict[str, float]]) -> str:
    """The :func:`round_spread` block: median [min-max] over the rounds."""
    if not spread:
        return ""
    n = int(next(iter(spread.values()))["rounds"])
    lines = [f"\n== over {n} rounds: median [min-max] =="]
    lines.append(f"{'method':<14} {'tok/s':>22} {'speedup vs hf':>22} {'vs anchor':>22}")
    for m, v in spread.items():
        line = (f"{m:<14} {v['tps_median']:>8.2f} [{v['tps_min']:.2f}-{v['tps_max']:.2f}]".ljust(38)
                + f"{v['speedup_median']:>8.2f}x [{v['speedup_min']:.2f}-{v['speedup_max']:.2f}]".ljust(25))
        if "vs_anchor_median" in v:
            line += f"{v['vs_anchor_median']:>8.2f}x [{v['vs_anchor_min']:.2f}-{v['vs_anchor_max']:.2f}]"
        lines.append(line.rstrip())
    return "\n".join(lines)


def _ordered_categories(table: Table) -> List[str]:
    tail = sorted(c for c in table if c.startswith("overall/")) + (["overall"] if "overall" in table else [])
    return sorted(c for c in table if not c.startswith("overall")) + tail


def format_table(table: Table) -> str:
    """The summary as text: one block per category, then ``overall``, then the anchor line
    (``speedup``: over HF greedy as loaded; ``vs anchor``: over the fastest HF configuration)."""
    lines = []
    for cat in _ordered_categories(table):
        lines.append(f"\n== {cat} ==")
        lines.append(f"{'method':<14} {'tokens':>7} {'tok/s':>8} {'MAT':>6} {'speedup':>8} {'vs anchor':>9} {'same':>6}")
        for m, v in table[cat].items():
            lines.append(
                f"{m:<14} {int(v['tokens']):>7} {v['tokens_per_s']:>8.2f} {v['mat']:>6.2f} "
                f"{v['speedup']:>7.2f}x {v.get('vs_anchor', float('nan')):>8.2f}x {v['same_as_hf']:>6.2f}"
            )
    anchor = table_anchor(table)
    if anchor:
        lines.append(f"\nanchor: {anchor} ({HF_ANCHORS[anchor]}), the fastest HF configuration of this run "
                     f"(of {', '.join(m for m in table.get('overall', {}) if m in HF_ANCHORS)})")
    return "\n".join(lines)


def plot_context(meta: Dict[str, Any]) -> str:
    """One line saying what a plot shows: model, questions, tokens, threads, rounds, load."""
    load = meta.get("load_before") or {}
    parts = [
        str(meta.get("model", "")),
        f"{meta.get('questions', '?')} questions (n={meta.get('n', '?')} per category)",
        f"max {meta.get('max_new_tokens', '?')} new tokens",
        f"{meta.get('torch_threads', '?')} threads",
        f"{meta.get('repeat', 1)} round(s)",
    ]
    if load:
        parts.append(f"load {load.get('load1', float('nan')):.2f} on {load.get('cpus', '?')} CPUs")
    return ", ".join(p for p in parts if p)


def plot(table: Table, path: str, context: str = "") -> None:
    """A PNG bar chart of the speedups over HF greedy (``hf-packed`` when ``hf`` did not run), per
    category and overall, titled with
    ``context`` (:func:`plot_context`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = _ordered_categories(table)
    methods = list(table["overall"])
    fig, ax = plt.subplots(figsize=(max(8, len(cats) * 0.9), 4))
    w = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        ys = [table[c].get(m, {}).get("speedup", 0.0) for c in cats]
        ax.bar([j + i * w for j in range(len(cats))], ys, width=w, label=m)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(cats))])
    ax.set_xticklabels(cats, rotation=30, ha="right")
    base = "HF greedy" if "hf" in methods else "HF greedy on packed linears (hf-packed)"
    ax.set_ylabel(f"speedup vs {base} (tokens/s)", fontsize=8 if "hf" not in methods else None)
    if context:
        ax.set_title(context, fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_json(path: str, meta: Dict[str, Any], table: Table, results: List[RunResult]) -> None:
    """``{"meta", "summary", "results"}`` to ``path``, atomically (written beside, then renamed)."""
    from tokenloom.spec.persist import atomic_write

    doc = {"meta": meta, "summary": table, "results": [asdict(r) for r in results]}
    atomic_write(path, json.dumps(doc, indent=1).encode())


def run_meta(cfg: BenchConfig, n_questions: int) -> Dict[str, Any]:
    """What the JSON records about the run: command, machine, torch, model, sizes, time."""
    import torch

    return {
        "command": cfg.command,
        "machine": " ".join(x for x in (platform.machine(), platform.processor(), f"cpus={os.cpu_count()}") if x),
        "cpu": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": f"{cfg.model or 'embedded SmolLM2-135M-Instruct'} ({cfg.dtype})",
        "dtype": cfg.dtype,
        "max_new_tokens": cfg.max_new_tokens,
        "questions": n_questions,
        "n": cfg.n,
        "repeat": cfg.repeat,
        "persist": cfg.options.persist,
        "warm": cfg.warm,
        "load_before": machine_load(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def header(meta: Dict[str, Any]) -> str:
    """The run's header line (model, sizes, threads, machine load), with a warning line when the
    machine is busy."""
    load = meta["load_before"]
    line = (f"[tokenloom] bench: {meta['model']}; {meta['questions']} questions x {meta['repeat']} round(s), "
            f"max {meta['max_new_tokens']} new tokens, {meta['torch_threads']} torch threads; "
            f"load average {load['load1']:.2f} {load['load5']:.2f} {load['load15']:.2f} on {load['cpus']} CPUs")
    if meta.get("warm"):
        line += f"; each tokenloom method warmed on {meta['warm']} other question(s) per category per round"
    cpu = meta.get("cpu")
    if cpu:
        line += f"\n[tokenloom] machine: {describe(cpu)}"
    if load["busy"]:
        line += ("\n[tokenloom] warning: the machine is busy (load >= "
                 f"{BUSY_LOAD_PER_CPU:g} per CPU): timings are noisy; compare ratios, use --repeat, rerun when idle")
    return line


def _first_answer(model: Any, max_new_tokens: int, eos: List[int]) -> Callable[[Any], List[int]]:
    """The model's greedy answer to a prompt (untimed; the multi-turn workload's first turns)."""

    def answer(ids: Any) -> List[int]:
        from tokenloom.decoding.generate import generate

        out = generate(model, ids, method="plain", max_new_tokens=max_new_tokens, eos_token_id=eos)
        return out.sequences[0, ids.shape[1]:].tolist()

    return answer


def run_bench(cfg: BenchConfig) -> Table:
    """Run the bench (checked first with :func:`check_config`, before the model loads), write
    ``json_path`` after every question and ``plot_path`` at the end; returns the summary (over
    every round; :func:`round_spread` of the results gives the per-round median and spread).
    The header (:func:`header`: model, sizes, threads, machine load) goes to stderr first."""
    table, _ = run_bench_rounds(cfg)
    return table


def run_bench_rounds(cfg: BenchConfig) -> Tuple[Table, Dict[str, Dict[str, float]]]:
    """:func:`run_bench`, returning ``(summary, round_spread)``."""
    fns = check_config(cfg)
    methods = list(fns)
    workloads = check_workloads(cfg.workloads)
    questions = load_questions(cfg.n, cfg.categories)
    measured = {q["question_id"] for q in questions}
    warm_questions = (
        [q for q in load_questions(cfg.n + cfg.warm, cfg.categories) if q["question_id"] not in measured] if cfg.warm else []
    )

    import torch
    from tqdm import tqdm

    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default, stop_token_ids
    from tokenloom.eval.peers import reset_peer_states
    from tokenloom.spec.persist import separate_states
    from tokenloom.spec.recycling.recycler import reset_default_recyclers
    from tokenloom.spec.suffix.store import reset_default_suffix_caches

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    print(f"[tokenloom] loading {'model ' + cfg.model if cfg.model else 'the embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr)
    model, tok = load_or_default(cfg.model, dtype=cfg.dtype)
    eos = stop_token_ids(model, tok)
    items = build_workloads(workloads, cfg.n, tok, questions, _all_questions(), _first_answer(model, cfg.max_new_tokens, eos))
    handle, counter = count_forwards(model)
    results: List[RunResult] = []
    meta = run_meta(cfg, len(items))
    meta["workloads"] = workloads
    print(header(meta), file=sys.stderr)
    quiet = not cfg.progress
    # Without persistence each method keeps its own process-wide drafter states (recycler,
    # suffix cache): interleaved on the same question, a method must not draft from the rows
    # another method just wrote from that question's answer. With persistence: the user's.
    own: Dict[Any, Any] = {}

    def states(m: str) -> Any:
        return separate_states(own, m) if cfg.options.persist is False else contextlib.nullcontext()

    try:
        warm = chat_input_ids(tok, "Say hello.")
        for m in tqdm(methods, desc="warm-up", disable=quiet, file=sys.stderr):
            with states(m):
                fns[m](model, warm, 8, eos)
        warm_ids = [chat_input_ids(tok, q["turns"][0]) for q in warm_questions]
        learners = [m for m in methods if m not in HF_ANCHORS] if warm_ids else []
        bar = tqdm(total=len(items) * len(methods) * cfg.repeat, desc="bench", disable=quiet, file=sys.stderr)
        for rnd in range(cfg.repeat):
            if cfg.options.persist is False:
                # every round starts from the same (fresh) drafter state: an independent repeat
                own.clear()
                reset_default_recyclers()
                reset_default_suffix_caches()
                reset_peer_states()
            for m in learners:  # untimed: each drafter learns from other requests first
                bar.set_postfix_str(f"warming {m}")
                with states(m):
                    for ids in warm_ids:
                        fns[m](model, ids, cfg.max_new_tokens, eos)
            for qi, q in enumerate(items):
                ids = q["ids"]
                shift = (qi + rnd) % len(methods)
                order = methods[shift:] + methods[:shift]
                outs: Dict[str, List[int]] = {}
                for m in order:
                    with states(m):
                        counter.reset()
                        start = time.perf_counter()
                        new, extra = fns[m](model, ids, cfg.max_new_tokens, eos)
                        sec = time.perf_counter() - start
                    outs[m] = new
                    results.append(RunResult(q["question_id"], q["category"], m, len(new), sec, counter.value, None, extra,
                                             round=rnd, workload=q["workload"]))
                    bar.set_postfix_str(f"{q['category']}/{m}")
                    bar.update(1)
                if "hf" in outs:
                    for r in results[-len(methods):]:
                        r.same_as_hf = outs[r.method] == outs["hf"]
                if cfg.json_path:  # after every question, so an interrupted run still leaves its data
                    write_json(cfg.json_path, meta, summarise(results, methods), results)
        bar.close()
    finally:
        handle.remove()
    meta["load_after"] = machine_load()
    table = summarise(results, methods)
    spread = round_spread(results, methods)
    meta["anchor"] = table_anchor(table)
    if cfg.json_path:
        write_json(cfg.json_path, {**meta, "rounds": spread}, table, results)
    if cfg.plot_path:
        plot(table, cfg.plot_path, plot_context(meta))
    return table, spread
