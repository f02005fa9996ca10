"""Batch soak: RSS over ~200 batched steps at B = 4 on the embedded model (issue 24: memory per
step stays flat, no growth from per-row trees or padding).

Four chat prompts of different lengths, left-padded, one ``tokenloom.generate`` call per
(method, ``batch_budget``) with no stop token and room for ``3 x --steps`` tokens, stopped
after its ``--steps``-th batched step. Each batched forward is watched
(:func:`tokenloom.runtime.treeattn.batch_tree_forward` wrapped): RSS, the cache's slots and the
forward's width are read every ``--every`` steps. Reported per run: RSS at step 20 and at the
last step, its growth, the cache slots at the last step against the prompt plus the tokens
the steps could emit, the widest forward. The
KV cache itself grows by design (one slot per token of the longest row: 4 rows x 30 layers x
2 x 3 x 64 float32 = ~184 KB per token for SmolLM2-135M); growth beyond it would be a leak.

    python benches/experiments/batch_soak.py --steps 200 --budgets auto,off
"""

from __future__ import annotations

import argparse
import json
import sys
import time

PROMPTS = (
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a compiler turns source code into machine code.",
    "List and describe twenty animals that live in the ocean.",
    "Describe the history of the printing press, century by century.",
)


from tokenloom.runtime.machine import resident_mb as rss_mb  # noqa: E402


class _Enough(Exception):
    """The wanted steps are done."""


def soak(model, tok, method: str, budget, steps: int, every: int) -> dict:
    import tokenloom
    from tokenloom.eval.batchbench import left_pad
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.runtime import treeattn
    from tokenloom.runtime.kvcache import cache_length

    ids, mask = left_pad([chat_input_ids(tok, p)[0] for p in PROMPTS], 0)
    marks = []
    forward = treeattn.batch_tree_forward

    def watch(m, cache, tokens, *args, **kw):
        step = len(marks)
        if step == steps:
            marks[-1]["rss"] = round(rss_mb(), 1)
            raise _Enough
        marks.append({"step": step, "slots": cache_length(cache), "width": max(len(t) for t in tokens)})
        if step % every == 0:
            marks[-1]["rss"] = round(rss_mb(), 1)
        return forward(m, cache, tokens, *args, **kw)

    treeattn.batch_tree_forward = watch
    try:
        t0 = time.perf_counter()
        try:
            tokenloom.generate(model, ids, attention_mask=mask, method=method, max_new_tokens=3 * steps,
                               eos_token_id=[], batch_budget=budget)
        except _Enough:
            pass
        seconds = time.perf_counter() - t0
    finally:
        treeattn.batch_tree_forward = forward
    rss = [(m["step"], m["rss"]) for m in marks if "rss" in m]
    base = next((r for s, r in rss if s >= 20), rss[0][1])
    return {
        "method": method, "batch_budget": budget, "steps": len(marks), "seconds": round(seconds, 1),
        "rss_step20": base, "rss_last": rss[-1][1], "growth": round(rss[-1][1] - base, 1),
        "slots_last": marks[-1]["slots"], "prompt": int(ids.shape[1]),
        "max_width": max(m["width"] for m in marks), "rss": rss,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="batched steps wanted per run (default 200)")
    ap.add_argument("--methods", default="recycling,merged")
    ap.add_argument("--budgets", default="auto,off", help="comma-separated batch_budget values: auto, off or ints")
    ap.add_argument("--every", type=int, default=10, help="read RSS every this many steps")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    from tokenloom.integrations.hf.models import load_default

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_default()
    budgets = [None if b == "off" else b if b == "auto" else int(b) for b in args.budgets.split(",")]
    results = []
    for method in args.methods.split(","):
        for budget in budgets:
            # a step emits 1 token per row or more: enough tokens for the wanted steps
            r = soak(model, tok, method, budget, args.steps, args.every)
            print(f"{method} batch_budget={budget}: {r['steps']} steps, RSS {r['rss_step20']:.0f} -> {r['rss_last']:.0f} MB",
                  file=sys.stderr, flush=True)
            results.append(r)
    print("| method | batch_budget | steps | RSS step 20 (MB) | RSS last | growth | cache slots at the end | prompt | widest forward | seconds |")
    print("|---" * 10 + "|")
    for r in results:
        print(f"| {r['method']} | {r['batch_budget']} | {r['steps']} | {r['rss_step20']:.0f} | {r['rss_last']:.0f} | "
              f"{r['growth']:+.0f} | {r['slots_last']} | {r['prompt']} | {r['max_width']} | {r['seconds']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
