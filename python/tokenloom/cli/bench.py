"""``tokenloom bench``: the command-line front end of the Spec-Bench harness
(:mod:`tokenloom.eval.specbench`, which has the methods, the runners and the tables)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Union

__all__ = ["add_parser", "config_from_args", "run"]


def _csv(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="Spec-Bench subset: tokens/s, mean accepted tokens, speedup vs HF greedy")
    p.add_argument("-n", type=int, default=2, help="questions per category (first turn only; default 2)")
    p.add_argument("--categories", default=None, help="comma-separated categories (default: all 13)")
    p.add_argument(
        "--methods", default=None,
        help="comma-separated methods: HF anchors (hf, hf-pld, hf-packed), dyspec-fixed / dyspec-chain, "
        "or any tokenloom.methods() name (default: plain decoding, hf, hf-pld, recycling)",
    )
    p.add_argument(
        "--workloads", default=None,
        help="comma-separated workloads among specbench, multiturn, code-edit, repeat (default: specbench; "
        "see tokenloom.eval.workloads)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--model", default=None, help="a local .gguf file or HF model directory (default: embedded)")
    p.add_argument("--tree", default=None, help="recycling template (default: recycling's, auto)")
    p.add_argument("--draft-layers", type=int, default=None, help="layers of the DySpec early-exit draft")
    p.add_argument("--budget", type=int, default=None, help="DySpec draft nodes per tree")
    p.add_argument(
        "--pack", choices=("auto", "on", "off"), default="auto",
        help="packed oneDNN CPU linears for tokenloom's methods (default auto; see tokenloom.runtime.cpupack)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None, help="write the raw results here")
    p.add_argument("--plot", default=None, help="write a PNG of the speedups here")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~tokenloom.eval.specbench.BenchConfig` of parsed ``bench`` arguments."""
    from tokenloom.eval.specbench import BenchConfig, MethodOptions

    packs: Dict[str, Union[bool, str]] = {"auto": "auto", "on": True, "off": False}
    pack = packs[args.pack]
    return BenchConfig(
        methods=_csv(args.methods),
        n=args.n,
        categories=_csv(args.categories),
        max_new_tokens=args.max_new_tokens,
        model=args.model,
        options=MethodOptions(tree=args.tree, draft_layers=args.draft_layers, budget=args.budget, pack=pack),
        threads=args.threads,
        json_path=args.json,
        plot_path=args.plot,
        progress=not args.no_progress,
        command="tokenloom " + " ".join(sys.argv[1:]),
        workloads=_csv(args.workloads),
    )


def run(args: argparse.Namespace) -> int:
    from tokenloom.eval.specbench import format_table, run_bench

    print(format_table(run_bench(config_from_args(args))))
    return 0
