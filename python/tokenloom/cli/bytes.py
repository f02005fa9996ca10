r"""``tokenloom bytes ...``: byte-level probabilities from the command line.

    tokenloom bytes next "def fibonac"          # top next bytes (exact)
    tokenloom bytes next -e 'caf\xc3'           # escapes: \xNN \n \t \r \0 \\ (raw bytes)
    tokenloom bytes generate "def fib" -n 40    # greedy bytes
    tokenloom bytes fim -n 20 --json out.json --plot fim.png   # HumanEval mid-token prompts

The prefix is taken byte for byte as the shell passed it (``os.fsencode``: bytes that are not
UTF-8 survive); ``-e`` / ``--escapes`` decodes backslash escapes in it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tokenloom.cli.common import add_model_args, count, load_model, output_file, plot_file, prefix_bytes, some_of

__all__ = ["add_parser", "run"]


def _fim_methods() -> Any:
    from tokenloom.eval.fim import METHODS

    return METHODS


def add_parser(sub: Any) -> None:
    methods = some_of(_fim_methods, "FIM methods")
    p = sub.add_parser("bytes", help="exact byte-level probabilities: next, generate, fim",
                       description="Exact byte-level probabilities: next (top next bytes), generate (greedy bytes), "
                       "fim (HumanEval mid-token completion).")
    p.add_argument("action", choices=["next", "generate", "fim"], help="next | generate | fim")
    p.add_argument("text", nargs="?", default="", help="next / generate: the byte prefix (as typed; see --escapes)")
    p.add_argument("-e", "--escapes", action="store_true", help="decode \\xNN \\n \\t \\r \\0 \\\\ in the prefix")
    add_model_args(p)
    p.add_argument("--all-covers", action="store_true", help="sum all covers instead of canonical ones")
    p.add_argument("-n", type=count(0), default=20, help="fim: number of problems (>= 1); generate: bytes (>= 0); default 20")
    p.add_argument("--seed", type=count(0), default=0, help="fim: seed of the cut positions (>= 0)")
    p.add_argument("--methods", type=methods, default=list(_fim_methods()),
                   help=f"fim: comma-separated, from: {', '.join(methods.choices())} (default: all)")  # type: ignore[attr-defined]
    p.add_argument("--json", type=output_file, default=None, help="fim: write results to this JSON file")
    p.add_argument("--plot", type=plot_file, default=None, help="fim: write a PNG bar chart (needs matplotlib)")
    p.add_argument("--top", type=count(1), default=10, help="next: how many bytes to show (>= 1)")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> bytes:
    """Check what involves several flags; returns the prefix bytes."""
    if args.action == "fim" and args.n < 1:
        raise ValueError(f"-n: fim needs >= 1 problems, got {args.n}")
    if args.action == "fim" and args.text:
        raise ValueError("fim takes no text (it cuts HumanEval solutions); give -n, --seed, --methods")
    return prefix_bytes(args.text, args.escapes)


def _bytes(args: argparse.Namespace, model: Any, tok: Any, prefix: bytes) -> None:
    import numpy as np

    from tokenloom.bytelevel.lm import ByteLM

    lm = ByteLM(model, tok, canonical=not args.all_covers)
    if args.action == "next":
        p = lm.next_byte_probs(prefix)
        for i in np.argsort(-p)[: args.top]:
            sym = "EOS" if i == 256 else repr(bytes([int(i)]))
            print(f"{sym:>8}  {p[i]:.6f}")
    else:
        out = lm.generate(prefix, args.n)
        sys.stdout.buffer.write(out)
        sys.stdout.buffer.write(b"\n")
        sys.stdout.flush()


def _fim(args: argparse.Namespace, model: Any, tok: Any) -> None:
    from tokenloom.eval import fim

    cuts = fim.make_cuts(fim.load_humaneval(), args.n, seed=args.seed)
    res = fim.run_fim(model, tok, cuts, methods=args.methods)
    print(fim.format_table(res))
    if args.json:
        fim.write_json(args.json, res, args.n, args.seed)
    if args.plot:
        fim.plot(res, args.plot, args.n, args.seed)


def run(args: argparse.Namespace) -> int:
    prefix = _check(args)
    model, tok = load_model(args)
    if args.action == "fim":
        _fim(args, model, tok)
    else:
        _bytes(args, model, tok, prefix)
    return 0
