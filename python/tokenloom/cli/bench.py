"""``tokenloom bench``: the command-line front end of the Spec-Bench harness
(:mod:`tokenloom.eval.specbench`, which has the methods, the runners and the tables). Every
flag is checked while parsing (:mod:`tokenloom.cli.common`), before the model loads."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Union

from tokenloom.cli.common import add_dtype_arg, add_model_args, count, output_file, plot_file, some_of

__all__ = ["add_parser", "config_from_args", "run"]


def _categories() -> Any:
    from tokenloom.eval.specbench import categories

    return categories()


def _methods() -> Any:
    from tokenloom.eval.specbench import bench_methods

    return bench_methods()


def _is_peer(name: str) -> bool:
    from tokenloom.eval.peers import is_peer

    return is_peer(name)


def _workloads() -> Any:
    from tokenloom.eval.workloads import WORKLOADS

    return WORKLOADS


def add_parser(sub: Any) -> None:
    cats = some_of(_categories, "categories")
    methods = some_of(_methods, "methods", also=_is_peer)
    p = sub.add_parser("bench", help="Spec-Bench subset: tokens/s, mean accepted tokens, speedup vs HF greedy",
                       description="Spec-Bench subset: the methods run interleaved per question after a warm-up; "
                       "tokens/s, mean accepted tokens (MAT), speedup vs HF greedy, per category and overall.")
    p.add_argument("-n", type=count(1), default=2, help="questions per category (first turn only; >= 1, default 2)")
    p.add_argument("--categories", type=cats, default=None,
                   help=f"comma-separated, from: {', '.join(cats.choices())} (default: all)")  # type: ignore[attr-defined]
    p.add_argument(
        "--methods", type=methods, default=None,
        help=f"comma-separated, from: {', '.join(methods.choices())} "  # type: ignore[attr-defined]
        "(hf: HF greedy generate, hf-pld: HF prompt lookup, hf-packed: HF greedy on packed linears; "
        "or a budgeted peer <kind>-<nodes|auto> with kind in recycling, suffix, merged, sam, arctic "
        "(e.g. merged-16); default: plain decoding, hf, hf-pld, recycling, merged)",
    )
    p.add_argument("--workloads", type=some_of(_workloads, "workloads"), default=None,
                   help="comma-separated, from: specbench, multiturn, code-edit, repeat (default: specbench; "
                   "see tokenloom.eval.workloads)")
    p.add_argument("--max-new-tokens", type=count(1), default=128, help=">= 1, default 128")
    add_model_args(p)
    add_dtype_arg(p)
    p.add_argument("--tree", default=None, help="recycling template: auto (default), 2.2.2, 2.2.2-N or rank paths")
    p.add_argument("--draft-layers", type=count(1), default=None, help="layers of the DySpec early-exit draft (>= 1)")
    p.add_argument("--budget", type=count(1), default=None, help="DySpec draft nodes per tree (>= 1)")
    p.add_argument(
        "--pack", choices=("auto", "on", "off"), default="auto",
        help="packed oneDNN CPU linears for tokenloom's methods (default auto; see tokenloom.runtime.cpupack)",
    )
    p.add_argument("--threads", type=count(1), default=None, help="torch threads (>= 1; default: torch's)")
    p.add_argument("--repeat", type=count(1), default=1,
                   help="rounds over the questions (>= 1, default 1); > 1 adds the median and min-max over rounds")
    p.add_argument("--warm", type=count(0), default=0,
                   help="questions per category, after the measured ones, that every tokenloom method answers untimed "
                        "before each round, each in its own drafter state (a process that has served other requests; "
                        "default 0: a cold start)")
    p.add_argument("--saved-state", action="store_true",
                   help="start Token Recycling from the state saved by earlier runs (default: a fresh recycler per "
                   "round, so results do not depend on earlier runs)")
    p.add_argument("--json", type=output_file, default=None, help="write the raw results here")
    p.add_argument("--plot", type=plot_file, default=None, help="write a PNG of the speedups here (needs matplotlib)")
    p.add_argument("--batch", type=sizes, default=None,
                   help="comma-separated batch sizes (e.g. 1,4,8): instead of the per-category table, "
                   "left-padded batches of the questions through tokenloom's batched loop against HF batched "
                   "greedy and against B single calls (methods: tokenloom's, default plain,recycling,merged; "
                   "see tokenloom.eval.batchbench)")
    p.add_argument("--batch-budget", type=batch_budget, default="auto",
                   help="with --batch: draft nodes per batched step, auto (default: from the measured cost of a "
                   "B-row forward), an int >= 0 (at most that many; 0 = plain batched steps) or off (every row's "
                   "whole tree); see tokenloom.spec.batchbudget")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def batch_budget(text: str) -> Union[str, int, None]:
    """An argparse type: ``auto``, ``off`` (None) or an int >= 0 (``generate(batch_budget=)``)."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    return count(0)(text)


def sizes(text: str) -> List[int]:
    """An argparse type: comma-separated distinct integers >= 1 (batch sizes)."""
    parse = count(1)
    items = [parse(x.strip()) for x in text.split(",") if x.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected at least one batch size, e.g. 1,4,8")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"each batch size once, got {text!r}")
    return items


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~tokenloom.eval.specbench.BenchConfig` of parsed ``bench`` arguments."""
    from tokenloom.eval.specbench import BenchConfig, MethodOptions

    packs: Dict[str, Union[bool, str]] = {"auto": "auto", "on": True, "off": False}
    pack = packs[args.pack]
    return BenchConfig(
        methods=args.methods,
        n=args.n,
        categories=args.categories,
        max_new_tokens=args.max_new_tokens,
        model=args.model,
        options=MethodOptions(tree=args.tree, draft_layers=args.draft_layers, budget=args.budget, pack=pack,
                              persist=None if args.saved_state else False),
        threads=args.threads,
        json_path=args.json,
        plot_path=args.plot,
        progress=not args.no_progress,
        command="tokenloom " + " ".join(sys.argv[1:]),
        repeat=args.repeat,
        workloads=args.workloads,
        dtype=args.dtype,
        warm=args.warm,
    )


def run(args: argparse.Namespace) -> int:
    from tokenloom.eval.specbench import format_spread, format_table, run_bench_rounds

    if args.batch:
        return run_batches(args)

    table, spread = run_bench_rounds(config_from_args(args))
    print(format_table(table))
    if args.repeat > 1:
        print(format_spread(spread))
    return 0


def run_batches(args: argparse.Namespace) -> int:
    """``tokenloom bench --batch``: :func:`tokenloom.eval.batchbench.run_batch_bench` on the
    chat-templated questions; the methods are checked before the model loads."""
    import torch
    from tqdm import tqdm

    from tokenloom.eval.batchbench import DEFAULT_BATCH_METHODS, check_batches, format_batch_table, run_batch_bench
    from tokenloom.eval.specbench import MethodOptions, header, load_questions, run_meta
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_or_default, stop_token_ids

    methods = list(args.methods or DEFAULT_BATCH_METHODS)
    check_batches(args.batch, methods)
    if args.warm:
        raise ValueError("--warm: for the single-request bench only (not with --batch)")
    questions = load_questions(args.n, args.categories)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    options: MethodOptions = cfg.options
    model, tok = load_or_default(args.model, dtype=args.dtype)
    eos = stop_token_ids(model, tok)
    prompts = [chat_input_ids(tok, q["turns"][0])[0] for q in questions]
    print(header(run_meta(cfg, len(prompts))), file=sys.stderr)
    runs = sum(max(1, len(prompts) // b) * (1 + 2 * len(methods)) for b in args.batch)
    bar = tqdm(total=runs, desc="bench --batch", disable=args.no_progress, file=sys.stderr)
    results = run_batch_bench(
        model, prompts, args.batch, methods, args.max_new_tokens, eos,
        method_kwargs={m: {**_batch_kwargs(m, options), "batch_budget": args.batch_budget} for m in methods},
        pad=eos[0] if eos else 0,
        progress=lambda label: (bar.set_postfix_str(label), bar.update(1)),
    )
    bar.close()
    print(format_batch_table(results))
    return 0


def _batch_kwargs(method: str, options: Any) -> Dict[str, Any]:
    """The ``generate`` keywords of ``method`` in the batch bench: the bench options, and each
    request's output kept out of the cross-request cache (the same rows run batched and one at
    a time, which such a cache would otherwise answer from the other run)."""
    from dataclasses import replace

    from tokenloom.eval.specbench import method_kwargs

    if options.cache_output is None:
        options = replace(options, cache_output=False)
    return method_kwargs(method, options)
