"""DySpec vs a fixed tree of the same budget vs a chain of the same depth, with the same
early-exit draft, for several draft depths (``draft_layers``) on Spec-Bench questions; greedy.

Mean accepted tokens (MAT) do not depend on machine load, so this sweep is what decides the
default ``draft_layers`` and tests the issue's MAT targets; tokens/s is reported too (ratios to
plain greedy of the same run). Writes a JSON and prints one table::

    python benches/experiments/dyspec_sweep.py --layers 12,18,24 -n 1 --max-new-tokens 64 \\
        --json benches/results/dyspec_sweep.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="12,18,24")
    ap.add_argument("--trees", default="dynamic,fixed,chain")
    ap.add_argument("-n", type=int, default=1, help="questions per category")
    ap.add_argument("--categories", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--budget", type=int, default=None)
    ap.add_argument("--max-depth", type=int, default=None)
    ap.add_argument("--draft-temperatures", default="1", help="dynamic trees only: draft temperatures to try")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    import tokenloom
    from tokenloom.eval.specbench import load_questions
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_default, stop_token_ids

    torch.set_num_threads(args.threads)
    model, tok = load_default()
    eos = stop_token_ids(model, tok)
    cats = args.categories.split(",") if args.categories else None
    questions = load_questions(args.n, cats)
    layers = [int(x) for x in args.layers.split(",")]
    trees = args.trees.split(",")
    kw: Dict[str, Any] = {}
    if args.budget is not None:
        kw["budget"] = args.budget
    if args.max_depth is not None:
        kw["max_depth"] = args.max_depth
    temps = [float(x) for x in args.draft_temperatures.split(",")]
    configs: List[Tuple[str, Any, Any, Any]] = [("greedy", None, None, None)]
    for n in layers:
        for t in trees:
            for temp in (temps if t == "dynamic" else [None]):
                configs.append(("dyspec", n, t, temp))
    rows: List[Dict[str, Any]] = []
    warm = chat_input_ids(tok, "Say hello.")
    def extra_of(method: str, n: Any, t: Any, temp: Any) -> Dict[str, Any]:
        if method == "greedy":
            return {}
        e = {"draft_layers": n, "tree": t, **kw}
        if temp is not None and temp != 1.0:
            e["draft_temperature"] = temp
        return e

    for method, n, t, temp in configs:  # warm-up (packing, caches)
        extra = extra_of(method, n, t, temp)
        tokenloom.generate(model, warm, method=method, max_new_tokens=4, eos_token_id=eos, **extra)
    bar = tqdm(total=len(questions) * len(configs), file=sys.stderr, desc="sweep")
    for q in questions:
        ids = chat_input_ids(tok, q["turns"][0])
        for method, n, t, temp in configs:
            extra = extra_of(method, n, t, temp)
            start = time.perf_counter()
            out = tokenloom.generate(model, ids, method=method, max_new_tokens=args.max_new_tokens, eos_token_id=eos, **extra)
            sec = time.perf_counter() - start
            rows.append({
                "question_id": q["question_id"], "category": q["category"], "method": method,
                "draft_layers": n, "tree": t, "draft_temperature": temp, "new_tokens": out.stats.new_tokens, "steps": out.stats.steps,
                "seconds": sec, "draft_seconds": out.stats.extra.get("draft_seconds"),
            })
            bar.update(1)
    bar.close()

    summary: Dict[str, Dict[str, float]] = {}
    for method, n, t, temp in configs:
        key = "greedy" if method == "greedy" else f"L{n}-{t}" + (f"-T{temp:g}" if temp not in (None, 1.0) else "")
        rs = [
            r for r in rows
            if r["method"] == method and r["draft_layers"] == n and r["tree"] == t and r["draft_temperature"] == temp
        ]
        tokens = sum(r["new_tokens"] for r in rs)
        # MAT over decode steps (prefill excluded) = tokens after the first / verify forwards.
        steps = sum(r["steps"] - 1 for r in rs)
        summary[key] = {
            "tokens": tokens,
            "mat": (tokens - len(rs)) / steps if steps else float("nan"),
            "tokens_per_s": tokens / sum(r["seconds"] for r in rs),
        }
    base = summary["greedy"]["tokens_per_s"]
    print(f"{'config':<22}{'MAT':>8}{'tok/s':>9}{'vs greedy':>11}")
    for key, s in summary.items():
        s["vs_greedy"] = s["tokens_per_s"] / base
        print(f"{key:<22}{s['mat']:>8.3f}{s['tokens_per_s']:>9.2f}{s['vs_greedy']:>10.2f}x")
    if args.json:
        meta = {"command": "python " + " ".join(sys.argv), "questions": len(questions), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "torch_threads": torch.get_num_threads()}
        Path(args.json).write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
