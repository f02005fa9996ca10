"""Where one tree step's time goes: the embedded model's lean step forward with a timer around
each of its parts (the linears, the RMS norms (with the residual adds where tokenloom's norms run
them), the rotary embedding, the cache append, the
attention, the activation), for a few tree sizes, with the kernel ``--pack`` selects; medians of
``--repeats``. ``--no-linears`` replaces every linear by a ready output of the right shape: the
other parts then run with their inputs in cache (the linears' weight streams evict them in a
real step). Run it alone on an idle machine.

    python benches/experiments/step_parts.py --dtype bfloat16 --pack auto --tokens 1,17
"""
import argparse
import collections
import statistics
import time

import torch
from transformers import DynamicCache

from tokenloom.integrations.hf.models import load_or_default
from tokenloom.runtime import cpupack, gqa, layerops
from tokenloom.runtime import leanforward as lf
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import crop_cache
from tokenloom.runtime.treeattn import tree_forward
from tokenloom.spec.calibration import _chain_parents, auto_pack

SPENT = collections.defaultdict(float)


def timed(name, fn):
    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.perf_counter() - start

    return run


def instrument(model, no_linears):
    """Wraps the lean forward's parts with timers (module attributes, restored by the caller)."""
    step_call, outs = cpupack.step_call, {}

    def linear(mod):
        if not no_linears:
            return timed("linears", step_call(mod))

        def ready(h):
            key = (mod.out_features, tuple(h.shape[:-1]), h.dtype)
            if key not in outs:
                outs[key] = torch.zeros(*h.shape[:-1], mod.out_features, dtype=h.dtype)
            return outs[key]

        return timed("linears", ready)

    silu = layerops.TiledSiLU
    saved = [(cpupack, "step_call", step_call), (cpupack, "group_step", cpupack.group_step), (lf, "_norm", lf._norm),
             (lf, "_add_norm", lf._add_norm), (lf, "_rotate", lf._rotate), (lf, "_rotate_rows", lf._rotate_rows),
             (gqa, "grouped_sdpa", gqa.grouped_sdpa), (silu, "step", silu.step), (silu, "mul_step", silu.mul_step)]
    cpupack.step_call = linear
    cpupack.group_step = timed("grouped linears", cpupack.group_step) if not no_linears else (lambda mods, h: None)
    lf._norm = timed("norms", lf._norm)
    lf._add_norm = timed("residual adds + norms", lf._add_norm)
    lf._rotate = timed("rotary", lf._rotate)
    lf._rotate_rows = timed("rotary", lf._rotate_rows)
    gqa.grouped_sdpa = timed("attention", gqa.grouped_sdpa)
    silu.step = timed("activation", silu.step)  # tokenloom's (tiles blocks): patched on the class
    silu.mul_step = timed("activation (with the up product)", silu.mul_step)
    for layer in model.model.layers:  # transformers' (a child module: shadowed in the instance dict, not replaced)
        if not isinstance(layer.mlp.act_fn, silu):
            layer.mlp.__dict__["act_fn"] = timed("activation", layer.mlp.act_fn)
    return saved


def restore(model, saved):
    for obj, name, value in saved:
        setattr(obj, name, value)
    for layer in model.model.layers:
        layer.mlp.__dict__.pop("act_fn", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--pack", default="auto", help="a pack value (auto, True, False, tiles, packed-trees, tiles-trees, tiles-packed)")
    ap.add_argument("--tokens", default="1,17", help="comma-separated tree sizes (chains)")
    ap.add_argument("--past-len", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-linears", action="store_true", help="every linear returns a ready output (no weight stream)")
    args = ap.parse_args()
    pack = {"True": True, "False": False}.get(args.pack, args.pack)
    model, _ = load_or_default(dtype=args.dtype)
    kernel = auto_pack(model, pack)
    prefix = torch.randint(0, 49152, (1, args.past_len), generator=torch.Generator().manual_seed(0))
    print(f"{args.dtype}, pack={kernel!r}, {args.past_len} cached tokens, medians of {args.repeats}"
          + (", linears replaced by ready outputs" if args.no_linears else ""))
    with torch.inference_mode(), cpupack.packed_linears(model, kernel):
        cache = DynamicCache()
        model(input_ids=prefix, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
        append = cache.update
        cache.update = timed("cache append", append)
        saved = instrument(model, args.no_linears)
        try:
            for t in (int(x) for x in args.tokens.split(",")):
                tokens = torch.randint(0, 49152, (t,), generator=torch.Generator().manual_seed(t))
                totals, parts = [], collections.defaultdict(list)
                for r in range(args.repeats + 2):
                    SPENT.clear()
                    start = time.perf_counter()
                    tree_forward(model, cache, tokens, _chain_parents(t), past_len=args.past_len)
                    total = time.perf_counter() - start
                    crop_cache(cache, args.past_len)
                    if r >= 2:  # two warm-up steps
                        totals.append(total)
                        for name, sec in SPENT.items():
                            parts[name].append(sec)
                med = {name: statistics.median(v) * 1e3 for name, v in parts.items()}
                step = statistics.median(totals) * 1e3
                line = " ".join(f"{name} {ms:.2f}" for name, ms in med.items())
                print(f"T={t}: step {step:.2f} ms = {line}, rest {step - sum(med.values()):.2f}")
        finally:
            restore(model, saved)
            cache.update = append


if __name__ == "__main__":
    main()
