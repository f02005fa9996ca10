"""tokenloom vs HF greedy ``generate`` in one dtype, on the embedded model and Spec-Bench
questions (first turns): HF greedy as loaded, tokenloom ``plain`` and the default method, each
with ``pack="auto"`` (the kernel measured fastest here), interleaved per question, with every
run's tokens checked against HF greedy's. Prints tok/s per method and the ratio to HF greedy.

    python benches/experiments/dtype_compare.py --dtype bfloat16 -n 1 --max-new-tokens 96
"""
import argparse
import statistics
import time

import torch

import tokenloom
from tokenloom.eval.exactness import first_diff
from tokenloom.eval.specbench import load_questions
from tokenloom.integrations.hf.chat import chat_input_ids
from tokenloom.integrations.hf.models import load_default, stop_token_ids
from tokenloom.runtime.machine import describe

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
ap.add_argument("-n", type=int, default=1, help="questions per category")
ap.add_argument("--categories", default="coding,qa,summarization,writing,math_reasoning")
ap.add_argument("--max-new-tokens", type=int, default=96)
args = ap.parse_args()

model, tok = load_default()
model = model.to(getattr(torch, args.dtype))
eos = stop_token_ids(model, tok)
questions = load_questions(args.n, args.categories.split(","))
methods = ("hf", "plain", "merged")
tokens = {m: 0 for m in methods}
seconds = {m: 0.0 for m in methods}
same = {m: 0 for m in methods}
warm = chat_input_ids(tok, questions[0]["turns"][0])
tokenloom.generate(model, warm, max_new_tokens=8)  # the kernel choice and step-cost calibration happen here
for i, q in enumerate(questions):
    ids = chat_input_ids(tok, q["turns"][0])
    order = methods[i % 3:] + methods[: i % 3]
    outs = {}
    for m in order:
        t0 = time.perf_counter()
        with torch.inference_mode():
            if m == "hf":
                seq = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=args.max_new_tokens,
                                     eos_token_id=eos, pad_token_id=eos[0])[0]
            else:
                seq = tokenloom.generate(model, ids, method=m, max_new_tokens=args.max_new_tokens, eos_token_id=eos).sequences[0]
        seconds[m] += time.perf_counter() - t0
        outs[m] = seq[ids.shape[1]:].tolist()
        tokens[m] += len(outs[m])
    for m in methods:
        same[m] += first_diff(outs[m], outs["hf"]) is None
print(describe())
print(f"dtype {args.dtype}, {len(questions)} questions, {args.max_new_tokens} new tokens at most")
hf_rate = tokens["hf"] / seconds["hf"]
for m in methods:
    rate = tokens[m] / seconds[m]
    print(f"{m:8s} {rate:7.2f} tok/s  {rate / hf_rate:5.2f}x HF greedy  same tokens {same[m]}/{len(questions)}")
