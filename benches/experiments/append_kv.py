"""tokenloom greedy and merged decoding with the cache appended in place
(``kvcache.append_kv``, the default) against transformers' ``update`` (a concatenation of the
whole layer every step), interleaved rounds on a short and a long prompt; the tokens of both
are checked equal. Run it alone on an idle machine.

    python benches/experiments/append_kv.py --dtype float32 --max-new-tokens 64
"""
import argparse
import statistics
import time

import torch

import tokenloom
from tokenloom.eval.specbench import load_questions
from tokenloom.integrations.hf.chat import chat_input_ids
from tokenloom.integrations.hf.models import load_or_default
from tokenloom.runtime import kvcache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--methods", default="greedy,merged")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    model, tok = load_or_default(dtype=args.dtype)
    prompts = {
        "short": chat_input_ids(tok, "Write a short poem about the sea."),
        "long": chat_input_ids(tok, load_questions(1, ["summarization"])[0]["turns"][0]),
    }
    real = kvcache.append_kv
    concat = lambda cache, i, k, v: cache.update(k, v, i)  # noqa: E731
    times, tokens = {}, {}
    for rnd in range(args.rounds + 1):  # round 0 warms up (and calibrates)
        for method in args.methods.split(","):
            for name, ids in prompts.items():
                for in_place in (False, True):
                    kvcache.append_kv = real if in_place else concat
                    try:
                        start = time.perf_counter()
                        out = tokenloom.generate(model, ids, method=method, max_new_tokens=args.max_new_tokens, eos_token_id=[])
                        spent = time.perf_counter() - start
                    finally:
                        kvcache.append_kv = real
                    if rnd:
                        times.setdefault((method, name, in_place), []).append(spent)
                    tokens[(method, name, in_place)] = out.sequences[0].tolist()
    print(f"{args.dtype}, {args.max_new_tokens} new tokens, {args.rounds} interleaved rounds, medians")
    for method in args.methods.split(","):
        for name, ids in prompts.items():
            cat, own = (statistics.median(times[(method, name, p)]) for p in (False, True))
            same = tokens[(method, name, False)] == tokens[(method, name, True)]
            print(f"{method:8s} {name} prompt ({ids.shape[1]} tokens): update {cat:.2f} s, in place {own:.2f} s "
                  f"({cat / own:.3f}x); same tokens: {same}")


if __name__ == "__main__":
    main()
