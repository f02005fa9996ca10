"""One step of the embedded model with its sibling tiles (q / k / v, gate / up) packed as one
weight and called once (``cpupack.set_grouped(True)``, the default) against every linear alone
(False), interleaved rounds, medians; the logits of both are checked equal bit for bit. Run it
alone on an idle machine.

    python benches/experiments/grouped_tiles.py --dtype bfloat16 --pack tiles --tokens 1,9,17
"""
import argparse
import collections
import statistics
import time

import torch
from transformers import DynamicCache

from tokenloom.integrations.hf.models import load_or_default
from tokenloom.runtime import cpupack
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import crop_cache
from tokenloom.runtime.treeattn import tree_forward
from tokenloom.spec.calibration import _chain_parents


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--pack", default="tiles", help="a tiles kernel: tiles, tiles-trees, tiles-packed")
    ap.add_argument("--tokens", default="1,9,17", help="comma-separated tree sizes (chains)")
    ap.add_argument("--past-len", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=4, help="steps per round and setting (median)")
    args = ap.parse_args()
    model, _ = load_or_default(dtype=args.dtype)
    sizes = [int(t) for t in args.tokens.split(",")]
    prefix = torch.randint(0, 49152, (1, args.past_len), generator=torch.Generator().manual_seed(0))
    times, logits = collections.defaultdict(list), {}
    try:
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for grouped in (False, True):
                cpupack.set_grouped(grouped)
                with torch.inference_mode(), cpupack.packed_linears(model, args.pack):
                    cache = DynamicCache()
                    model(input_ids=prefix, use_cache=True, logits_to_keep=1, **cache_arg(model, cache))
                    for t in sizes:
                        tokens = torch.randint(0, 49152, (t,), generator=torch.Generator().manual_seed(t))
                        spent = []
                        for _ in range(args.steps):
                            start = time.perf_counter()
                            out = tree_forward(model, cache, tokens, _chain_parents(t), past_len=args.past_len)
                            spent.append(time.perf_counter() - start)
                            crop_cache(cache, args.past_len)
                        if rnd:
                            times[(t, grouped)].append(statistics.median(spent))
                        logits[(t, grouped)] = out
    finally:
        cpupack.set_grouped(True)
    print(f"{args.dtype}, pack={args.pack!r}, {args.past_len} cached tokens, {args.rounds} interleaved rounds, medians")
    for t in sizes:
        alone, one = (statistics.median(times[(t, g)]) * 1e3 for g in (False, True))
        same = torch.equal(logits[(t, False)], logits[(t, True)])
        print(f"T={t}: each linear alone {alone:.2f} ms, groups {one:.2f} ms ({alone / one:.3f}x); same logits: {same}")


if __name__ == "__main__":
    main()
