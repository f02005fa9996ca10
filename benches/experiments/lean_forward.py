"""What one tree step of the embedded model costs through transformers' module forward and
through tokenloom's lean step forward (:mod:`tokenloom.runtime.leanforward`): ``--past`` cached
tokens, chains of T nodes, one :func:`~tokenloom.runtime.treeattn.tree_forward` each, the two
alternated, medians of ``--repeats`` per round, ``--rounds`` rounds; the logits of the two are
compared bit for bit. Linears as ``generate`` runs them (``--pack``, default ``auto``: the measured choice).

    python benches/experiments/lean_forward.py --tokens 1,9 --dtype float32
"""
import argparse
import statistics
import time

import torch

from tokenloom.integrations.hf.models import DTYPES, load_or_default
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.cpupack import packed_linears
from tokenloom.runtime.kvcache import crop_cache
from tokenloom.runtime.leanforward import set_lean_forward
from tokenloom.runtime.machine import describe
from tokenloom.runtime.treeattn import tree_forward

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--tokens", default="1,9", help="tree sizes (chains), comma-separated")
ap.add_argument("--past", type=int, default=200, help="cached tokens")
ap.add_argument("--repeats", type=int, default=15)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--dtype", choices=DTYPES, default="float32")
ap.add_argument("--pack", choices=["auto", "on", "off", "tiles"], default="auto")
args = ap.parse_args()

model, _ = load_or_default(dtype=args.dtype)
pack = {"on": True, "off": False}.get(args.pack, args.pack)
if pack == "auto":  # the kernel generate(pack="auto") runs: measured (and cached) per machine
    from tokenloom.spec.calibration import auto_pack

    pack = auto_pack(model, "auto")
prompt = torch.randint(100, 4000, (1, args.past), generator=torch.Generator().manual_seed(0))
print(f"machine: {describe()}; {args.dtype}, pack={pack!r}, {args.past} cached tokens, "
      f"{torch.get_num_threads()} threads")


def timed(tokens, lean):
    set_lean_forward(lean)
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        logits = tree_forward(model, cache, tokens, parents)
        seconds.append(time.perf_counter() - start)
        crop_cache(cache, args.past)
    return statistics.median(seconds), logits


with torch.inference_mode(), packed_linears(model, pack):
    from transformers import DynamicCache

    cache = DynamicCache()
    model(input_ids=prompt, use_cache=True, **cache_arg(model, cache))
    try:
        for t in [int(x) for x in args.tokens.split(",")]:
            parents = [-1] + list(range(t - 1))
            tokens = list(range(500, 500 + t))
            for r in range(args.rounds):
                hf, a = timed(tokens, False)
                lean, b = timed(tokens, True)
                print(f"T={t} round {r}: module forward {hf * 1e3:.1f} ms, lean {lean * 1e3:.1f} ms "
                      f"({hf / lean:.2f}x), bit-equal logits: {torch.equal(a, b)}")
    finally:
        set_lean_forward(True)
