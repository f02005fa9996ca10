"""Soak: RSS of one long-running process per method, packed linears on (``pack="auto"``).

Each method runs ``--calls`` generate calls in a process of its own (so each method's growth is
its own), on mixed requests: Spec-Bench questions cut to 10-400 characters (every prompt length
from ~35 to ~130 tokens, so prefill and tree shapes vary as in a server), 1-8 new tokens,
greedy and sampled calls alternating. RSS is read after the warm-up call (call 0) and after
calls 50, 250 and 500 (or the ``--calls`` given); the table gives the growth from call 50 to the
last, which should stay within +100 MB (issue 26), and the bytes of the cross-request suffix
cache at the end (state kept on purpose, capped at its ``max_bytes``, 64 MB by default). The drafters' on-disk state is off
(``TOKENLOOM_PERSIST=0``) so that nothing outside the process changes between methods.

    python benches/experiments/soak.py --calls 500 --jobs 2 --json benches/results/soak.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHECKPOINTS = (0, 50, 250, 500)


from tokenloom.runtime.machine import resident_mb as rss_mb  # noqa: E402


def soak_one(method: str, calls: int, threads: int) -> dict:
    """Run ``calls`` mixed calls of ``method`` here; ``{"method", "rss": {call: MB}, "seconds"}``."""
    import random

    import torch

    import tokenloom
    from tokenloom.eval.specbench import load_questions
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import load_default

    torch.set_num_threads(threads)
    model, tok = load_default()
    texts = [q["turns"][0] for q in load_questions(8)]
    rng = random.Random(0)
    kw = {"tokenizer": tok} if method == "cautious" else {}
    marks = sorted({c for c in CHECKPOINTS if c <= calls} | {calls})
    rss = {}
    t0 = time.perf_counter()
    for i in range(calls + 1):
        text = rng.choice(texts)
        text = text[: rng.randint(10, 400)]
        ids = chat_input_ids(tok, text)
        sampled = i % 2 == 1
        tokenloom.generate(
            model,
            ids,
            method=method,
            max_new_tokens=rng.randint(1, 8),
            temperature=0.8 if sampled else 0.0,
            seed=i if sampled else None,
            **kw,
        )
        if i in marks:
            rss[i] = round(rss_mb(), 1)
            print(f"{method}: call {i}: RSS {rss[i]:.0f} MB", file=sys.stderr, flush=True)
    state_mb = 0.0  # bounded state the method keeps on purpose: the cross-request suffix cache
    if method in ("suffix", "merged"):
        from tokenloom.runtime.model import logits_width
        from tokenloom.spec.suffix.store import default_suffix_cache

        state_mb = default_suffix_cache(logits_width(model), model=model).memory_bytes / 2**20
    return {"method": method, "calls": calls, "rss": rss, "state_mb": round(state_mb, 1), "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500, help="calls per method after the warm-up one (default 500)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: every tokenloom.methods() name but aliases)")
    ap.add_argument("--jobs", type=int, default=1, help="methods run side by side (each in its own process)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # worker: run one method, print JSON
    args = ap.parse_args()
    if args.calls < 1:
        ap.error("--calls must be >= 1")
    os.environ["TOKENLOOM_PERSIST"] = "0"
    if args.one:
        print(json.dumps(soak_one(args.one, args.calls, args.threads)))
        return
    import tokenloom

    methods = args.methods.split(",") if args.methods else [m for m in tokenloom.methods() if m != "greedy"]
    unknown = [m for m in methods if m not in tokenloom.methods()]
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {tokenloom.methods()}")
    cmd = [sys.executable, __file__, "--calls", str(args.calls), "--threads", str(args.threads), "--one"]
    pending, running, results, failed = list(methods), [], [], []
    while pending or running:
        while pending and len(running) < max(1, args.jobs):
            m = pending.pop(0)
            running.append((m, subprocess.Popen(cmd + [m], stdout=subprocess.PIPE, text=True)))
        m, p = running.pop(0)
        out, _ = p.communicate()
        if p.returncode != 0:
            failed.append(m)
            print(f"soak: method {m} failed with exit code {p.returncode}", file=sys.stderr)
            continue
        results.append(json.loads(out.strip().splitlines()[-1]))
    base = 50 if args.calls >= 50 else 0
    cols = [c for c in CHECKPOINTS if base < c < args.calls] + [args.calls]
    print(f"| method | call 0 (MB) | call {base} | " + " | ".join(f"call {c}" for c in cols) + f" | growth {base}->{args.calls} | suffix cache (MB) | seconds |")
    print("|---" * (len(cols) + 6) + "|")
    for r in sorted(results, key=lambda r: methods.index(r["method"])):
        rss = {int(k): v for k, v in r["rss"].items()}
        cells = " | ".join(f"{rss[c]:.0f}" for c in cols)
        print(f"| {r['method']} | {rss[0]:.0f} | {rss[base]:.0f} | {cells} | {rss[args.calls] - rss[base]:+.0f} | {r.get('state_mb', 0):.1f} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"calls": args.calls, "threads": args.threads, "results": results, "failed": failed}, f, indent=1)
    if failed:
        sys.exit(f"soak: {len(failed)} method(s) failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
