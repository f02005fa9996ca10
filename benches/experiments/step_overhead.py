"""Per-step costs of merged-16 / merged-auto / recycling on the embedded model: the drafter's
propose, its accept (the update) and the tree forward, in ms per step and % of the wall time of
4 requests x 128 tokens (after one warm-up request; fresh recycler and cache per method).
Interleaves, in one process, the update's top-k from ``torch.topk`` (before) and from the Rust
kernel ``tokenloom.sampling.topk.top_k_ids`` (after).

    TOKENLOOM_PERSIST=0 python benches/experiments/step_overhead.py --rounds 2 --json benches/results/suffix/steptime.json
"""
import argparse, time, torch, collections, json
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--json", default=None)
args = ap.parse_args()
torch.set_num_threads(args.threads)
import numpy as np
import tokenloom
from tokenloom.integrations.hf.models import load_default
from tokenloom.integrations.hf.chat import chat_input_ids
from tokenloom.spec.recycling.recycler import TokenRecycler
from tokenloom.spec.suffix.store import SuffixCache
from tokenloom.spec.merged import drafter as D
from tokenloom.spec.recycling import drafter as RD
import tokenloom.runtime.treeattn as TA
m, tok = load_default()
T = collections.defaultdict(float); N = collections.Counter()
def wrap(cls, name, key):
    f = getattr(cls, name)
    def g(self, *a, **k):
        t = time.perf_counter(); r = f(self, *a, **k); T[key] += time.perf_counter() - t; N[key] += 1; return r
    setattr(cls, name, g)
wrap(D.MergedDrafter, "propose", "propose"); wrap(D.MergedDrafter, "accept", "accept")
wrap(RD.RecyclingDrafter, "propose", "propose"); wrap(RD.RecyclingDrafter, "accept", "accept")
orig = TA.tree_forward
def tf(*a, **k):
    t = time.perf_counter(); r = orig(*a, **k); T["forward"] += time.perf_counter() - t; N["forward"] += 1; return r
TA.tree_forward = tf
rust_topk = D.top_k_ids
def torch_topk(logits, k):
    return logits.topk(k, dim=-1).indices.cpu().numpy()
qs = ["Explain how a CPU cache works.", "List five prime numbers and explain why they are prime.", "Describe the water cycle for a child.", "Write a short story about a robot who learns to paint."]
results = collections.defaultdict(list)
for rnd in range(args.rounds):
    for impl in (["torch", "rust"] if rnd % 2 == 0 else ["rust", "torch"]):
        fn = torch_topk if impl == "torch" else rust_topk
        D.top_k_ids = fn; RD.top_k_ids = fn
        for method, kw in [("merged-16", dict(method="merged", budget=16)), ("merged-auto", dict(method="merged")), ("recycling", dict(method="recycling"))]:
            rec = TokenRecycler(49152, 8); cache = SuffixCache()
            if method == "recycling":
                kw2 = dict(kw, recycler=rec)
            else:
                kw2 = dict(kw, recycler=rec, cache=cache)
            tokenloom.generate(m, chat_input_ids(tok, "Write a short poem about the sea."), max_new_tokens=32, eos_token_id=[2], **kw2)
            T.clear(); N.clear()
            t0 = time.perf_counter()
            for q in qs:
                tokenloom.generate(m, chat_input_ids(tok, q), max_new_tokens=128, eos_token_id=[2], **kw2)
            tot = time.perf_counter() - t0
            row = {"total": tot, "steps": N["forward"]}
            for k in ("propose", "accept", "forward"):
                row[k + "_ms"] = 1000 * T[k] / max(N[k], 1)
                row[k + "_pct"] = 100 * T[k] / tot
            results[(method, impl)].append(row)
            print(method, impl, {k: round(v, 3) for k, v in row.items()}, flush=True)
print("== medians")
out = {}
for (method, impl), rows in sorted(results.items()):
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    out[f"{method}/{impl}"] = med
    print(method, impl, {k: round(v, 3) for k, v in med.items()})
if args.json:
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
