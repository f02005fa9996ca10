"""``tokenloom bytes ...``: byte-level probabilities from the command line.

    tokenloom bytes next "def fibonac"          # top next bytes (exact)
    tokenloom bytes generate "def fib" -n 40    # greedy bytes
    tokenloom bytes fim -n 20 --json out.json --plot fim.png   # HumanEval mid-token prompts
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bytes", help="exact byte-level probabilities: next, generate, fim")
    p.add_argument("action", choices=["next", "generate", "fim"])
    p.add_argument("text", nargs="?", default="", help="the byte prefix (UTF-8 text; next / generate)")
    p.add_argument("--model", default=None, help="a local .gguf file or HF model directory (default: embedded)")
    p.add_argument("--all-covers", action="store_true", help="sum all covers instead of canonical ones")
    p.add_argument("-n", type=int, default=20, help="fim: number of problems; generate: bytes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default="token,heal,byte", help="fim: comma-separated methods")
    p.add_argument("--json", default=None, help="fim: write results to this JSON file")
    p.add_argument("--plot", default=None, help="fim: write a PNG bar chart")
    p.add_argument("--top", type=int, default=10, help="next: how many bytes to show")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> Any:
    """Check what needs no model; returns the FIM methods (None for next / generate)."""
    if args.action == "fim":
        from tokenloom.eval.fim import check_methods

        if args.n < 1:
            raise ValueError(f"-n: expected >= 1 problems, got {args.n}")
        return check_methods([m.strip() for m in args.methods.split(",") if m.strip()])
    if args.action == "generate" and args.n < 0:
        raise ValueError(f"-n: expected >= 0 bytes, got {args.n}")
    if args.action == "next" and args.top < 1:
        raise ValueError(f"--top: expected >= 1, got {args.top}")
    return None


def _bytes(args: argparse.Namespace, model: Any, tok: Any) -> None:
    import numpy as np

    from tokenloom.bytelevel.lm import ByteLM

    lm = ByteLM(model, tok, canonical=not args.all_covers)
    prefix = args.text.encode()
    if args.action == "next":
        p = lm.next_byte_probs(prefix)
        for i in np.argsort(-p)[: args.top]:
            sym = "EOS" if i == 256 else repr(bytes([int(i)]))
            print(f"{sym:>8}  {p[i]:.6f}")
    else:
        sys.stdout.write(lm.generate(prefix, args.n).decode("utf-8", errors="replace") + "\n")


def _fim(args: argparse.Namespace, model: Any, tok: Any, methods: Any) -> None:
    from tokenloom.eval import fim

    cuts = fim.make_cuts(fim.load_humaneval(), args.n, seed=args.seed)
    res = fim.run_fim(model, tok, cuts, methods=methods)
    print(fim.format_table(res))
    if args.json:
        fim.write_json(args.json, res, args.n, args.seed)
    if args.plot:
        fim.plot(res, args.plot, args.n, args.seed)


def run(args: argparse.Namespace) -> int:
    from tokenloom.integrations.hf.models import load_or_default

    methods = _check(args)
    model, tok = load_or_default(args.model)
    if args.action == "fim":
        _fim(args, model, tok, methods)
    else:
        _bytes(args, model, tok)
    return 0
