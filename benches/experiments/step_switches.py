"""One step of the embedded model with one of a tiles step's switches on (the default) and off,
interleaved rounds, medians:

* ``--switch grouped``: sibling tiles (q / k / v, gate / up) packed as one weight and called
  once (``cpupack.set_grouped``) against every linear alone; the logits must be equal bit for bit;
* ``--switch rotary``: the rotary embedding of the query and key heads in one kernel call
  (``leanforward._ROTARY_KERNEL``) against torch's operations; the same bits;
* ``--switch layers``: the RMS norms as tokenloom's one-call kernel fused with the residual adds
  and the SiLU activation fused with the up product (``layerops.set_layer_kernels``) against
  transformers' norms and activation; the logits differ at float32
  rounding (the largest difference is printed).

Run it alone on an idle machine.

    python benches/experiments/step_switches.py --switch layers --dtype bfloat16 --pack tiles --tokens 1,9,17
"""
import argparse
import collections
import statistics
import time

import torch
from transformers import DynamicCache

from tokenloom.integrations.hf.models import load_or_default
from tokenloom.runtime import cpupack, layerops, leanforward
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import crop_cache
from tokenloom.runtime.treeattn import tree_forward
from tokenloom.spec.calibration import _chain_parents


#: switch name -> (its setter, what "off" and "on" are called in the output)
SWITCHES = {
    "grouped": (cpupack.set_grouped, "each linear alone", "groups"),
    "layers": (layerops.set_layer_kernels, "transformers' norms and SiLU", "tokenloom's"),
    "rotary": (lambda on: leanforward._ROTARY_KERNEL.__setitem__(0, on), "torch's rotary", "one-call rotary"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--switch", choices=list(SWITCHES), default="grouped")
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
    setter, off_name, on_name = SWITCHES[args.switch]
    times, logits = collections.defaultdict(list), {}
    try:
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for on in (False, True):
                setter(on)
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
                            times[(t, on)].append(statistics.median(spent))
                        logits[(t, on)] = out
    finally:
        setter(True)
    print(f"{args.dtype}, pack={args.pack!r}, {args.past_len} cached tokens, {args.rounds} interleaved rounds, medians")
    for t in sizes:
        off, on = (statistics.median(times[(t, s)]) * 1e3 for s in (False, True))
        a, b = logits[(t, False)], logits[(t, True)]
        same = "the same" if torch.equal(a, b) else f"largest difference {(a.float() - b.float()).abs().max().item():.2e}"
        print(f"T={t}: {off_name} {off:.2f} ms, {on_name} {on:.2f} ms ({off / on:.3f}x); logits: {same}")


if __name__ == "__main__":
    main()
