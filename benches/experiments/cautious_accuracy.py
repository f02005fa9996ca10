"""Cautious decoding (CNTP) vs plain sampling vs greedy on HumanEval next-line completion
(tokenloom.eval.nextline) with the embedded SmolLM2-135M: exact match with Wilson 95%
intervals, the paired difference to plain sampling (same seed per task), and the cost per
generated token (seconds and model forwards), methods interleaved per task.

    python benches/experiments/cautious_accuracy.py -n 60 --temperature 0.8 --top-p 0.95 \\
        --json benches/results/cautious_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--max-trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="keep only the prompt's last tokens (0: all); cheaper prefills")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--from-partial", default=None, help="summarise the rows of a stopped run's .partial file")
    args = ap.parse_args()
    if args.from_partial:
        saved = json.loads(Path(args.from_partial).read_text())
        summarize(saved["rows"], saved["totals"], args, saved.get("uptime_before", ""))
        return 0

    import torch
    from tqdm import tqdm

    import tokenloom
    from tokenloom.decoding.cautious import CautiousRecord
    from tokenloom.eval.nextline import exact_match, make_line_tasks, wilson
    from tokenloom.integrations.hf.models import load_default

    torch.set_num_threads(args.threads)
    model, tok = load_default()
    tasks = make_line_tasks(args.n, args.seed)
    methods = ("greedy", "plain", "cautious")
    rows: List[Dict[str, Any]] = []
    totals = {m: {"seconds": 0.0, "tokens": 0, "forwards": 0} for m in methods}
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for i, t in enumerate(tqdm(tasks, desc="tasks")):
        ids = tok(t.prompt, return_tensors="pt").input_ids
        if args.prompt_tokens > 0:
            ids = ids[:, -args.prompt_tokens :]
        row: Dict[str, Any] = {"task_id": t.task_id}
        for m in methods:
            kw: Dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, eos_token_id=2)
            rec = CautiousRecord()
            if m != "greedy":
                kw.update(temperature=args.temperature, top_p=args.top_p, seed=args.seed * 1000 + i)
            if m == "cautious":
                kw.update(method="cautious", tokenizer=tok, max_trials=args.max_trials, record=rec)
            t0 = time.perf_counter()
            out = tokenloom.generate(model, ids, **kw)
            dt = time.perf_counter() - t0
            new = out.sequences.shape[1] - ids.shape[1]
            totals[m]["seconds"] += dt
            totals[m]["tokens"] += new
            totals[m]["forwards"] += rec.forwards if m == "cautious" else new
            row[m] = bool(exact_match(tok.decode(out.sequences[0, ids.shape[1]:]), t))
            if m == "cautious":
                row["triggered"] = rec.triggered
                row["mean_trials"] = rec.as_dict()["mean_trials"]
        rows.append(row)
        if args.json:  # checkpoint: a crash later still leaves the raw rows
            Path(args.json + ".partial").write_text(json.dumps({"rows": rows, "totals": totals, "uptime_before": uptime0}))
    summarize(rows, totals, args, uptime0)
    return 0


def summarize(rows: List[Dict[str, Any]], totals: Dict[str, Any], args: Any, uptime0: str) -> None:
    from tokenloom.eval.nextline import wilson

    methods = ("greedy", "plain", "cautious")
    n = len(rows)
    acc = {m: sum(r[m] for r in rows) for m in methods}
    both = {
        "cautious_only": sum(r["cautious"] and not r["plain"] for r in rows),
        "plain_only": sum(r["plain"] and not r["cautious"] for r in rows),
    }
    rng = np.random.default_rng(0)
    d = np.array([int(r["cautious"]) - int(r["plain"]) for r in rows])
    boot = [d[rng.integers(0, n, n)].mean() for _ in range(2000)]
    result = {
        "n": n, "temperature": args.temperature, "top_p": args.top_p, "max_trials": args.max_trials,
        "exact": {m: [acc[m], acc[m] / n, list(wilson(acc[m], n))] for m in methods},
        "paired_cautious_minus_plain": {"mean": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))], **both},
        "cost": {m: {**v, "seconds_per_token": v["seconds"] / max(v["tokens"], 1), "forwards_per_token": v["forwards"] / max(v["tokens"], 1)} for m, v in totals.items()},
        "triggered_steps": sum(r["triggered"] for r in rows),
        "rows": rows,
        "uptime_before": uptime0, "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    for m in methods:
        e = result["exact"][m]
        c = result["cost"][m]
        print(f"{m:>9}: exact {e[0]}/{n} = {e[1]:.3f} [{e[2][0]:.3f}, {e[2][1]:.3f}]  {c['seconds_per_token']*1000:.0f} ms/token  {c['forwards_per_token']:.2f} forwards/token")
    p = result["paired_cautious_minus_plain"]
    print(f"cautious - plain: {p['mean']:+.3f} [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] (only cautious {both['cautious_only']}, only plain {both['plain_only']})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
