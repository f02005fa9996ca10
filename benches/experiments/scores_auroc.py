"""Training-data detection on the embedded SmolLM2-135M: AUROC of the loss, Min-K%, Min-K%++
and DC-PDD on member / non-member splits that can be built on this machine, and the throughput
of ``tokenloom.scores.token_stats`` against a plain Hugging Face loop computing the same
per-token numbers (one text per forward), interleaved with repeats.

The splits (chunks of ``--chunk`` tokens, ``-n`` per class, seeded):

* code: members = CPython standard-library modules that have been public, nearly unchanged, for
  over a decade (``textwrap``, ``difflib``, ...; surely in any GitHub-derived code corpus);
  non-members = tokenloom's own Python source (written in 2026, after the model's 2024 data).
* prose: members = the GPL / LGPL / Apache / MPL / GFDL licence texts (duplicated across the
  web) from ``/usr/share/common-licenses``; non-members = tokenloom's docs and README (2026).

Limits: membership is by date, so each split also differs in style and topic (project-specific
names, modern type hints, markdown tables); a high AUROC can come from that shift, not only
from memorisation (the known weakness of date-based splits such as WikiMIA). The DC-PDD
reference corpus is numpy's Python source plus README files under ``/usr/share/doc`` (disjoint
from both splits).

    python benches/experiments/scores_auroc.py -n 48 --repeats 3 --json benches/results/scores_auroc.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[2]
STDLIB = ["textwrap", "difflib", "shutil", "argparse", "heapq", "bisect", "fractions", "calendar", "string", "queue",
          "csv", "glob", "fnmatch", "sched", "colorsys", "shlex", "getopt", "netrc", "cmd", "code"]
LICENSES = ["GPL-2", "GPL-3", "LGPL-2.1", "LGPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic"]


def chunks(tok: Any, paths: List[Path], size: int) -> List[np.ndarray]:
    out = []
    for p in paths:
        ids = np.asarray(tok(p.read_text(encoding="utf-8", errors="replace"))["input_ids"], dtype=np.int64)
        out.extend(ids[i : i + size] for i in range(0, ids.size - size + 1, size))
    return out


def pick(xs: List[np.ndarray], n: int, rng: Any) -> List[np.ndarray]:
    if len(xs) < n:
        raise SystemExit(f"only {len(xs)} chunks available, asked for {n}")
    return [xs[i] for i in sorted(rng.choice(len(xs), n, replace=False))]


def splits(tok: Any, n: int, size: int, seed: int) -> Dict[str, Tuple[List[np.ndarray], List[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    lib = Path(sysconfig.get_paths()["stdlib"])
    code_in = chunks(tok, [lib / f"{m}.py" for m in STDLIB], size)
    code_out = chunks(tok, sorted((REPO / "python" / "tokenloom").rglob("*.py")), size)
    lic = Path("/usr/share/common-licenses")
    prose_in = chunks(tok, [lic / f for f in LICENSES if (lic / f).is_file()], size)
    prose_out = chunks(tok, [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))], size)
    return {
        "code": (pick(code_in, n, rng), pick(code_out, n, rng)),
        "prose": (pick(prose_in, n, rng), pick(prose_out, n, rng)),
    }


def reference_files() -> List[Path]:
    import numpy

    root = Path(numpy.__file__).parent
    code = sorted(p for p in root.rglob("*.py") if "tests" not in p.parts)[:150]
    docs = sorted(p for p in Path("/usr/share/doc").glob("*/README*") if p.suffix not in (".gz", ".bz2", ".xz"))
    return code + docs


def bootstrap_ci(scores: np.ndarray, labels: np.ndarray, reps: int, seed: int) -> Tuple[float, float]:
    from tokenloom.scores import auroc

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    vals = []
    for _ in range(reps):
        i = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        vals.append(auroc(scores[i], labels[i]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def plain_loop(model: Any, seqs: List[np.ndarray]) -> List[Tuple[np.ndarray, ...]]:
    """What one writes without tokenloom: one forward per text, the same four numbers."""
    import torch

    out = []
    with torch.no_grad():
        for ids in seqs:
            x = torch.from_numpy(ids).view(1, -1)
            logits = model(x).logits[0, :-1].float()
            logp = torch.log_softmax(logits, -1)
            p = logp.exp()
            tgt = x[0, 1:].view(-1, 1)
            lp = logp.gather(1, tgt).squeeze(1)
            ent = -(p * logp).sum(-1)
            std = ((p * logp * logp).sum(-1) - ent * ent).clamp_min(0).sqrt()
            rank = (logits > logits.gather(1, tgt)).sum(-1) + 1
            out.append((lp.numpy(), ent.numpy(), std.numpy(), rank.numpy()))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=48, help="chunks per class and split")
    ap.add_argument("--chunk", type=int, default=128, help="tokens per chunk")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--throughput-only", action="store_true", help="skip the AUROC part (no frequency table)")
    args = ap.parse_args()

    import torch

    from tokenloom.integrations.hf.models import load_default
    from tokenloom.scores import auroc, count_tokens, detection_scores, token_stats

    torch.set_num_threads(args.threads)
    model, tok = load_default()
    data = splits(tok, args.n, args.chunk, args.seed)
    t0 = time.perf_counter()
    freq = None if args.throughput_only else count_tokens(len(tok), files=reference_files(), tokenizer=tok, max_per_doc=1024)
    count_s = time.perf_counter() - t0
    result: Dict[str, Any] = {
        "n_per_class": args.n, "chunk_tokens": args.chunk, "seed": args.seed,
        "reference_tokens": int(freq.total) if freq else 0, "reference_docs": int(freq.docs) if freq else 0, "count_seconds": count_s,
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "auroc": {},
    }
    all_seqs = []
    for name, (members, others) in data.items():
        seqs = members + others
        all_seqs += seqs
        labels = np.array([1] * len(members) + [0] * len(others))
        if args.throughput_only:
            continue
        rows = detection_scores(token_stats(model, seqs, batch_size=args.batch_size), freq)
        result["auroc"][name] = {}
        for score in rows[0]:
            x = np.array([r[score] for r in rows])
            lo, hi = bootstrap_ci(x, labels, 1000, args.seed)
            result["auroc"][name][score] = {"auroc": auroc(x, labels), "ci95": [lo, hi]}
    # throughput: interleaved, same texts, same numbers
    times: Dict[str, List[float]] = {"tokenloom": [], "plain_hf": []}
    for _ in range(args.repeats):
        t = time.perf_counter()
        ours = token_stats(model, all_seqs, batch_size=args.batch_size)
        times["tokenloom"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = plain_loop(model, all_seqs)
        times["plain_hf"].append(time.perf_counter() - t)
    diff = max(float(np.abs(a.logprobs - b[0]).max()) for a, b in zip(ours, ref))
    tokens = sum(int(s.size) - 1 for s in all_seqs)
    result["throughput"] = {
        "texts": len(all_seqs), "scored_tokens": tokens, "seconds": times,
        "tokens_per_s": {k: tokens / min(v) for k, v in times.items()},
        "speedup_best": min(times["plain_hf"]) / min(times["tokenloom"]),
        "speedup_median": float(np.median(times["plain_hf"]) / np.median(times["tokenloom"])),
        "max_abs_logprob_diff": diff,
    }
    result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    for name, scores in result["auroc"].items():
        print(name + ": " + "  ".join(f"{k} {v['auroc']:.3f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]" for k, v in scores.items()))
    th = result["throughput"]
    print(f"throughput: tokenloom {th['tokens_per_s']['tokenloom']:.0f} tok/s, plain HF {th['tokens_per_s']['plain_hf']:.0f} tok/s "
          f"({th['speedup_best']:.2f}x best, {th['speedup_median']:.2f}x median; max |dlogp| {diff:.1e})")
    print(result["uptime_before"], "|", result["uptime_after"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
