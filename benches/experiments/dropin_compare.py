"""The drop-in paths of Token Recycling against each other and against plain HF greedy, on the
embedded model, in one process (docs/dropin.md):

    python benches/experiments/dropin_compare.py --prompts 4 --max-new-tokens 96 --threads 1 --json out.json

Greedy. Every arm gets its own recycler, warmed by one untimed pass over the prompts (the hot
start a long-running process has); then ``--rounds`` timed passes, arms interleaved per prompt so
that drift of a shared machine spreads evenly. tokens/s = new tokens / wall seconds summed over
the timed passes; MAT = mean tokens per target forward where the arm reports it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import platform
import time
from typing import Any, Callable, Dict, List

import tokenloom
import tokenloom.integrations.hf.custom_generate as tlhf
from tokenloom.eval.specbench import load_questions
from tokenloom.integrations.hf.chat import chat_input_ids
from tokenloom.integrations.hf.models import load_default
from tokenloom.spec.recycling.recycler import TokenRecycler

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _own_loop() -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location("own_loop_example", ROOT / "examples" / "own_loop.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.own_loop  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--num-tokens", default="4,8", help="chain lengths of the assisted arm(s)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    model, tok = load_default()
    vocab = model.config.vocab_size
    qs = load_questions(10)
    cats: Dict[str, List[Any]] = {}
    for q in qs:
        cats.setdefault(q["category"], []).append(q)
    picked: List[Any] = []
    while len(picked) < a.prompts:
        for c in sorted(cats):
            if cats[c] and len(picked) < a.prompts:
                picked.append(cats[c].pop(0))
    prompts = [chat_input_ids(tok, q["turns"][0]) for q in picked]
    n = a.max_new_tokens
    own_loop = _own_loop()
    recs = {}

    def rec(name: str) -> TokenRecycler:
        if name not in recs:
            recs[name] = TokenRecycler(vocab)
        return recs[name]

    mats: Dict[str, List[float]] = {}

    def hf_greedy(ids: Any) -> Any:
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n)

    def tl_generate(ids: Any) -> Any:
        out = tokenloom.generate(model, ids, method="recycling", max_new_tokens=n, recycler=rec("tl"))
        mats.setdefault("tokenloom.generate", []).append(out.stats.mean_accepted)
        return out.sequences

    def custom(ids: Any) -> Any:
        return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                              custom_generate=tlhf.recycling_generate, recycler=rec("custom"))

    def assisted(m: int) -> Callable[[Any], Any]:
        def run(ids: Any) -> Any:
            gen = tlhf.RecyclingCandidateGenerator(rec(f"assisted{m}"), num_tokens=m)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                 custom_generate=tlhf.recycling_assisted_generate, candidate_generator=gen)
            mats.setdefault(f"assisted chain={m}", []).append(gen.mean_accepted)
            return out

        return run

    def step_api(ids: Any) -> Any:
        return own_loop(model, ids, n, eos=2, recycler=rec("step"))

    arms: Dict[str, Callable[[Any], Any]] = {"HF greedy": hf_greedy, "tokenloom.generate": tl_generate,
                                             "custom_generate": custom}
    for m in [int(x) for x in a.num_tokens.split(",") if x]:
        arms[f"assisted chain={m}"] = assisted(m)
    arms["step API (own_loop, 2.2.2-16)"] = step_api

    results = {k: {"tokens": 0, "seconds": 0.0} for k in arms}
    ref: Dict[int, List[int]] = {}
    for rnd in range(a.rounds + 1):  # round 0: warm-up (hot start), untimed
        mats.clear()
        for i, ids in enumerate(prompts):
            for name, fn in arms.items():
                t0 = time.perf_counter()
                out = fn(ids)
                dt = time.perf_counter() - t0
                new = out[0, ids.shape[1]:].tolist()
                if name == "HF greedy":
                    ref[i] = new
                elif new != ref[i]:
                    print(f"  note: {name} differs from HF greedy on prompt {i} (floating-point near-tie?)")
                if rnd > 0:
                    results[name]["tokens"] += len(new)
                    results[name]["seconds"] += dt
    base = results["HF greedy"]["tokens"] / results["HF greedy"]["seconds"]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, torch threads {a.threads}; "
          f"{a.prompts} prompts x {n} new tokens x {a.rounds} round(s), greedy")
    print("| path | tokens/s | vs HF greedy | MAT |")
    print("|---|---:|---:|---:|")
    rows = []
    for name, r in results.items():
        tps = r["tokens"] / r["seconds"]
        mat = mats.get(name)
        mat_s = f"{sum(mat) / len(mat):.2f}" if mat else "-"
        print(f"| {name} | {tps:.1f} | {tps / base:.2f}x | {mat_s} |")
        rows.append({"path": name, "tokens_per_s": tps, "speedup": tps / base, "tokens": r["tokens"],
                     "seconds": r["seconds"], "mat": (sum(mat) / len(mat)) if mat else None})
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
