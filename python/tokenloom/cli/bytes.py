"""``tokenloom bytes ...``: byte-level probabilities from the command line.

    tokenloom bytes next "def fibonac"          # top next bytes (exact)
    tokenloom bytes generate "def fib" -n 40    # greedy bytes
    tokenloom bytes fim -n 20 --json out.json --plot fim.png   # HumanEval mid-token prompts
"""

from __future__ import annotations

import argparse
import json
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


def _load(path: Any) -> Any:
    from tokenloom.integrations.hf import models

    return models.load(path) if path else models.load_default()


def run(args: argparse.Namespace) -> int:
    from tokenloom.bytelevel.lm import ByteLM

    model, tok = _load(args.model)
    if args.action in ("next", "generate"):
        lm = ByteLM(model, tok, canonical=not args.all_covers)
        prefix = args.text.encode()
        if args.action == "next":
            import numpy as np

            p = lm.next_byte_probs(prefix)
            for i in np.argsort(-p)[: args.top]:
                sym = "EOS" if i == 256 else repr(bytes([int(i)]))
                print(f"{sym:>8}  {p[i]:.6f}")
        else:
            sys.stdout.write(lm.generate(prefix, args.n).decode("utf-8", errors="replace") + "\n")
        return 0
    from tokenloom.eval.fim import load_humaneval, make_cuts, run_fim

    cuts = make_cuts(load_humaneval(), args.n, seed=args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    res = run_fim(model, tok, cuts, methods=methods)
    print(f"{'method':<8} {'n':>4} {'exact match':>12} {'mean loglik':>12} {'errors':>7}")
    for m, r in res.items():
        em = "-" if r["exact_match"] is None else f"{r['exact_match']:.3f}"
        ll = "-" if r["mean_loglik"] is None else f"{r['mean_loglik']:.3f}"
        print(f"{m:<8} {r['n']:>4} {em:>12} {ll:>12} {r['errors']:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"problems": args.n, "seed": args.seed, "results": res}, f, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        names = list(res)
        ax[0].bar(names, [res[m]["exact_match"] or 0 for m in names])
        ax[0].set_title("exact match, rest of line")
        lls = [m for m in names if res[m]["mean_loglik"] is not None]
        ax[1].bar(lls, [res[m]["mean_loglik"] for m in lls])
        ax[1].set_title("mean log-likelihood (nats)")
        fig.suptitle(f"HumanEval prompts cut mid-token (n={args.n}, seed={args.seed})")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return 0
