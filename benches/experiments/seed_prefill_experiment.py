"""Does seeding recycler rows from the prompt's prefill top-k raise mean accepted tokens?

    python benches/experiments/seed_prefill_experiment.py --questions 16 --max-new-tokens 96 --json out.json

Greedy, fixed template (so MAT does not depend on timing), on the first Spec-Bench questions
round-robin over categories. Two regimes: a fresh recycler per question (cold) and one recycler
carried across the questions (hot start, the default usage). Prints MAT and tokens/s per arm.
"""

from __future__ import annotations

import argparse
import json
import time

import tokenloom
from tokenloom.eval.specbench import load_questions
from tokenloom.integrations.hf.chat import chat_input_ids
from tokenloom.integrations.hf.models import load_default
from tokenloom.spec.recycling.recycler import TokenRecycler


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--tree", default="2.2.2-16")
    ap.add_argument("--json", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--regimes", default="cold,hot")
    ap.add_argument("--seeds", default="0,1", help="seed_prefill arms to run (0 = off, 1 = on)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    model, tok = load_default()
    qs = load_questions(10)
    by_cat: dict = {}
    for q in qs:
        by_cat.setdefault(q["category"], []).append(q)
    picked = []
    while len(picked) < a.questions:
        for c in sorted(by_cat):
            if by_cat[c] and len(picked) < a.questions:
                picked.append(by_cat[c].pop(0))
    arms = {}
    hot = {True: TokenRecycler(model.config.vocab_size), False: TokenRecycler(model.config.vocab_size)}
    for regime in a.regimes.split(","):
        for seed in [bool(int(x)) for x in a.seeds.split(",")]:
            tokens = steps = 0
            secs = 0.0
            for q in picked:
                ids = chat_input_ids(tok, q["turns"][0])
                rec = TokenRecycler(model.config.vocab_size) if regime == "cold" else hot[seed]
                t = time.perf_counter()
                out = tokenloom.generate(model, ids, method="recycling", max_new_tokens=a.max_new_tokens,
                                         recycler=rec, tree=a.tree, seed_prefill=seed)
                secs += time.perf_counter() - t
                tokens += out.stats.new_tokens
                steps += out.stats.steps
            arms[f"{regime} seed_prefill={seed}"] = {"mat": tokens / steps, "tokens_per_s": tokens / secs,
                                                     "tokens": tokens, "steps": steps}
            print(f"{regime:4s} seed_prefill={seed!s:5s} MAT={tokens / steps:.3f} tok/s={tokens / secs:.2f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "arms": arms}, f, indent=1)


if __name__ == "__main__":
    main()
