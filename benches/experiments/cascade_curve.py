"""Cascade cost-quality curves on HumanEval next-line completion (tokenloom.eval.nextline):
small = the embedded SmolLM2-135M's first ``--small-layers`` decoder layers (an early exit of
the same model) or, with ``--small-bits``, the model with its decoder weights rounded to that
many bits (no smaller model sharing its tokenizer ships in a package here), large = the
whole model (fp32, dequantised from its Q4_1 GGUF). Both answer every task greedily; the
deferral rules are scored on the small model's token log-probabilities; the post-hoc rule is
fitted on a seeded half of the tasks and every curve is measured on the other half.

    python benches/experiments/cascade_curve.py -n 164 --small-bits 4 --threads 1 \\
        --json benches/results/cascade_curve.json --plot docs/cascade_curve.png
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
    ap.add_argument("-n", type=int, default=164)
    ap.add_argument("--small-layers", type=int, default=20, help="small model: the first N layers (early exit)")
    ap.add_argument("--small-bits", type=int, default=0,
                    help="small model: decoder weights rounded to this many bits instead (tokenloom.cascades.quantized_model; 0: early exit)")
    ap.add_argument("--group-size", type=int, default=64, help="weight-rounding group (with --small-bits)")
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="keep only the prompt's last tokens (0: all); cheaper prefills")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--from-partial", default=None, help="summarise the rows of a stopped run's .partial file")
    args = ap.parse_args()
    if args.from_partial:
        saved = json.loads(Path(args.from_partial).read_text())
        summarize(saved["rows"], saved["seconds"], args, saved.get("uptime_before", ""), saved.get("total_layers", 30))
        return 0

    import torch
    from tqdm import tqdm

    import tokenloom
    from tokenloom.cascades import early_exit_model, output_logprobs, quantized_model
    from tokenloom.eval.nextline import exact_match, line_tokens, make_line_tasks, wilson
    from tokenloom.integrations.hf.models import load_default

    torch.set_num_threads(args.threads)
    large, tok = load_default()
    small = quantized_model(large, args.small_bits, args.group_size) if args.small_bits else early_exit_model(large, args.small_layers)
    tasks = make_line_tasks(args.n, args.seed)
    rows: List[Dict[str, Any]] = []
    secs = {"small": 0.0, "large": 0.0}
    uptime0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for t in tqdm(tasks, desc="tasks"):
        ids = tok(t.prompt, return_tensors="pt").input_ids
        if args.prompt_tokens > 0:
            ids = ids[:, -args.prompt_tokens :]
        row: Dict[str, Any] = {"task_id": t.task_id}
        for name, model in (("small", small), ("large", large)):
            t0 = time.perf_counter()
            out = tokenloom.generate(model, ids, max_new_tokens=args.max_new_tokens, eos_token_id=2)
            secs[name] += time.perf_counter() - t0
            text = tok.decode(out.sequences[0, ids.shape[1]:])
            row[name] = bool(exact_match(text, t))
            if name == "small":
                new = out.sequences[0, ids.shape[1]:].tolist()
                lp = output_logprobs(small, out.sequences, ids.shape[1])
                row["logprobs"] = lp[: line_tokens(tok, new)].tolist()  # the answer line's tokens
        rows.append(row)
        if args.json:  # checkpoint: a crash later still leaves the raw rows
            Path(args.json + ".partial").write_text(json.dumps(
                {"rows": rows, "seconds": secs, "uptime_before": uptime0, "total_layers": len(large.model.layers)}))
    summarize(rows, secs, args, uptime0, len(large.model.layers))
    return 0


def small_name(args: Any, total_layers: int) -> str:
    """How the small model was made (for the results and the plot)."""
    if getattr(args, "small_bits", 0):
        return f"{args.small_bits}-bit weights (groups of {args.group_size})"
    return f"{args.small_layers}/{total_layers} layers"


def summarize(rows: List[Dict[str, Any]], secs: Dict[str, float], args: Any, uptime0: str, total_layers: int) -> None:
    from tokenloom.cascades import SequenceMean, SequenceSum, Quantile, deferral_curve, fit_posthoc
    from tokenloom.eval.nextline import wilson

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(rows))
    train, test = perm[: len(rows) // 2], perm[len(rows) // 2 :]
    qs = np.array([r["small"] for r in rows], dtype=float)
    ql = np.array([r["large"] for r in rows], dtype=float)
    lps = [np.array(r["logprobs"]) for r in rows]
    posthoc = fit_posthoc([lps[i] for i in train], qs[train])
    rules = {"sum": SequenceSum(), "mean": SequenceMean(), "quantile:0": Quantile(0.0), "quantile:0.1": Quantile(0.1), "posthoc": posthoc}
    curves = {}
    for name, rule in rules.items():
        s = np.array([rule.score(lps[i]) for i in test])
        c = deferral_curve(s, qs[test], ql[test])
        curves[name] = {"area": c.area, "deferral_rate": c.deferral_rate.tolist(), "quality": c.quality.tolist()}
    oracle = deferral_curve(qs[test] - ql[test], qs[test], ql[test])  # defer exactly where large is better first
    curves["oracle"] = {"area": oracle.area, "deferral_rate": oracle.deferral_rate.tolist(), "quality": oracle.quality.tolist()}
    curves["random"] = {"area": float((qs[test].mean() + ql[test].mean()) / 2)}
    n_small, n_large = int(qs.sum()), int(ql.sum())
    result = {
        "n": len(rows), "test_n": len(test), "small": small_name(args, total_layers), "total_layers": total_layers,
        "small_exact": [n_small, list(wilson(n_small, len(rows)))], "large_exact": [n_large, list(wilson(n_large, len(rows)))],
        "seconds": secs, "curves": curves, "posthoc": {"weights": posthoc.weights.tolist(), "bias": posthoc.bias},
        "uptime_before": uptime0, "uptime_after": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
    }
    print(f"exact match: small {n_small}/{len(rows)}, large {n_large}/{len(rows)}; seconds small {secs['small']:.0f} large {secs['large']:.0f}")
    for name, c in curves.items():
        print(f"{name:>14}: area {c['area']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, c in curves.items():
            if "quality" in c:
                ax.plot(c["deferral_rate"], c["quality"], label=f"{name} ({c['area']:.3f})", ls="--" if name == "oracle" else "-")
        ax.plot([0, 1], [qs[test].mean(), ql[test].mean()], ":", color="gray", label=f"random ({curves['random']['area']:.3f})")
        ax.set_xlabel("deferral rate (share answered by the large model)")
        ax.set_ylabel("exact match of the cascade")
        ax.set_title(f"HumanEval next line, {len(test)} held-out tasks; small = {small_name(args, total_layers)}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
