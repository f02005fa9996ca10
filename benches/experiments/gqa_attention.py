"""What a batched tree step costs with transformers' ``sdpa`` attention as it runs with a mask
(``repeat_kv``: keys and values copied per query head) and with tokenloom's grouped attention
(:mod:`tokenloom.runtime.gqa`), on the embedded model: B rows of ``--slots`` cached tokens, trees
of W nodes per row (chains), one :func:`~tokenloom.runtime.treeattn.batch_tree_forward` each,
the two interleaved, medians of ``--repeats``. Also the attention op alone at the model's shapes.

    python benches/experiments/gqa_attention.py --rows 1,8 --slots 200,700 --widths 1,2,5,17
"""
import argparse
import contextlib
import statistics
import time

import torch

from tokenloom.integrations.hf.models import load_default
from tokenloom.runtime import gqa
from tokenloom.runtime.compat import cache_arg
from tokenloom.runtime.kvcache import crop_cache
from tokenloom.runtime.machine import describe
import tokenloom.runtime.treeattn as ta
from tokenloom.runtime.treeattn import batch_tree_forward

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--rows", default="1,8")
ap.add_argument("--slots", default="200,700")
ap.add_argument("--widths", default="1,2,5,17")
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()


@contextlib.contextmanager
def as_transformers():
    """Inside: the tree forward's grouped attention is switched off (transformers' own sdpa runs)."""
    ta.grouped_attention = contextlib.nullcontext
    try:
        yield
    finally:
        ta.grouped_attention = gqa.grouped_attention


model, _ = load_default()
cfg = model.config
print(describe())
print(f"model: {cfg.num_attention_heads} query heads on {cfg.num_key_value_heads} key/value heads, {cfg.num_hidden_layers} layers")
print(f"{'rows':>4} {'slots':>5} {'W':>3} {'transformers ms':>16} {'grouped ms':>11} {'ratio':>6}")
with torch.inference_mode():
    for rows in [int(x) for x in args.rows.split(",")]:
        for slots in [int(x) for x in args.slots.split(",")]:
            from transformers import DynamicCache

            cache = DynamicCache()
            ids = torch.randint(3, cfg.vocab_size - 1, (rows, slots))
            model(input_ids=ids, use_cache=True, **cache_arg(model, cache))
            for w in [int(x) for x in args.widths.split(",")]:
                trees = ([list(range(5, 5 + w))] * rows, [[-1] + list(range(w - 1))] * rows, [list(range(w))] * rows)
                times = {"transformers": [], "grouped": []}
                for r in range(args.repeats + 1):
                    for name in (("transformers", "grouped") if r % 2 else ("grouped", "transformers")):
                        ctx = as_transformers() if name == "transformers" else contextlib.nullcontext()
                        with ctx:
                            t0 = time.perf_counter()
                            batch_tree_forward(model, cache, *trees, starts=[0] * rows, ends=[slots] * rows)
                            dt = time.perf_counter() - t0
                        crop_cache(cache, slots)
                        if r:  # the first round warms up
                            times[name].append(dt)
                a, b = (statistics.median(times[k]) * 1e3 for k in ("transformers", "grouped"))
                print(f"{rows:>4} {slots:>5} {w:>3} {a:>16.1f} {b:>11.1f} {a / b:>6.2f}")
