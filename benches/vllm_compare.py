"""tokenloom's proposer inside vLLM vs vLLM without speculation, ``ngram`` and ``suffix``: same
prompts (Spec-Bench subset + a repetitive workload), greedy, fp32, batch 1 and 8.

Run in the vLLM venv (``scripts/install_vllm_cpu.sh /path/venv``), from the repository root::

    LD_PRELOAD=/path/venv/lib/libiomp5.so PYTHONPATH=python /path/venv/bin/python \\
        benches/vllm_compare.py --n-per-category 1 --max-tokens 64 --json bench-results/vllm.json

Prints, per batch size: tokens identical to no speculation, vLLM's mean acceptance length,
tokens per target step, proposer seconds per step (tokenloom), throughput ratio vs ``none``, and
the load average at each stage (the machine is shared: ratios within one run are what count).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=os.environ.get("TOKENLOOM_VLLM_MODEL_DIR", "bench-results/smollm2-hf"),
                    help="HF directory of the model (exported from the embedded GGUF when missing)")
    ap.add_argument("--methods", default="none,tokenloom,tokenloom-accepted,ngram,suffix")
    ap.add_argument("--batch", default="1,8", help="batch sizes, comma separated")
    ap.add_argument("--n-per-category", type=int, default=1, help="Spec-Bench questions per category")
    ap.add_argument("--no-repetitive", action="store_true", help="leave the repetitive prompts out")
    ap.add_argument("--max-prompts", type=int, default=0, help="use only the first N prompts (0: all)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-tokens", type=int, default=5, help="speculative tokens per step")
    ap.add_argument("--json", default=None, help="write every result here")
    args = ap.parse_args(argv)

    from tokenloom.eval.vllmbench import METHODS, prompt_ids, run_method
    from tokenloom.integrations.hf.export import export_hf
    from tokenloom.integrations.hf.models import load_tokenizer

    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; expected some of {list(METHODS)}")
    batches = [int(b) for b in args.batch.split(",")]
    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        print(f"exporting the embedded model to {args.model_dir} ...", flush=True)
        export_hf(args.model_dir)
    prompts = prompt_ids(load_tokenizer(args.model_dir), args.n_per_category, repetitive=not args.no_repetitive)
    if args.max_prompts:
        prompts = prompts[: args.max_prompts]
    print(f"{len(prompts)} prompts, {args.max_tokens} new tokens, batch sizes {batches}", flush=True)
    runs = {}
    for m in methods:
        try:
            runs[m] = run_method(m, args.model_dir, prompts, batch_sizes=batches, max_tokens=args.max_tokens,
                                 num_tokens=args.num_tokens)
        except Exception as e:  # noqa: BLE001 - report and go on (e.g. suffix without arctic-inference)
            print(f"{m}: failed: {type(e).__name__}: {e}", flush=True)
            continue
        print(f"{m}: init {runs[m].init_seconds:.1f}s load {runs[m].load}", flush=True)
    base = runs.get("none")
    print(f"\n{'method':20} {'batch':>5} {'same':>5} {'MAL':>6} {'tok/step':>8} {'prop ms':>8} {'tok/s':>7} {'vs none':>7}")
    for m, r in runs.items():
        for b in batches:
            k = str(b)
            same = "-" if base is None else ("yes" if r.tokens[k] == base.tokens[k] else "NO")
            acc = r.acceptance[k]
            tps = r.generated[k] / r.seconds[k]
            ratio = tps / (base.generated[k] / base.seconds[k]) if base else float("nan")
            prop = r.proposer.get(k, {}).get("seconds_per_step")
            prop_s = f"{prop * 1e3:8.3f}" if prop is not None else f"{'-':>8}"
            print(f"{m:20} {b:5d} {same:>5} {acc['mean_acceptance_length']:6.2f} {acc['tokens_per_step']:8.2f} "
                  f"{prop_s} {tps:7.2f} {ratio:7.2f}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "prompts": [p["name"] for p in prompts],
                       "runs": {m: r.as_dict() for m, r in runs.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
