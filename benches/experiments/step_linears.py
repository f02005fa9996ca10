"""What all the linears of one decoding step cost per kernel and row count M: the embedded
model's shapes (30 layers of q/k/v/o, gate/up/down, the 49152 x 576 head; random weights),
``nn.functional.linear`` as loaded (MKL / torch's bfloat16 path), oneDNN with pre-packed weights
(where it runs the dtype) and tokenloom's tiles on 1 and 2 threads; the kernels and row counts
interleaved, medians of ``--repeats``. Run it alone on an idle machine.

    python benches/experiments/step_linears.py --dtype float32 --rows 1,2,9,17,33
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from tokenloom.runtime.cpupack import pack_available, tiles_available

SHAPES = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)]
HEAD = (49152, 576)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--rows", default="1,2,9,17,33", help="comma-separated row counts")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    rows = [int(r) for r in args.rows.split(",")]
    gen = torch.Generator().manual_seed(0)
    weights = [(torch.randn(o, i, generator=gen) * 0.02).to(dtype) for _ in range(args.layers) for o, i in SHAPES]
    weights.append((torch.randn(*HEAD, generator=gen) * 0.02).to(dtype))
    kernels = {"as loaded": lambda x, w: F.linear(x, w)}
    if pack_available(dtype):
        packed = {id(w): torch.ops.mkldnn._reorder_linear_weight(w, None) for w in weights}
        kernels["oneDNN packed"] = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, packed[id(w)], None, "none", [], "")
    if tiles_available():
        from tokenloom import _core

        bf16 = dtype == torch.bfloat16
        tiled = {id(w): _core.TiledLinear(w.view(torch.int16).numpy() if bf16 else w.numpy(), bf16=bf16) for w in weights}
        for threads in (1, 2):
            kernels[f"tiles, {threads} thread(s)"] = (
                lambda x, w, t=threads: torch.from_numpy(tiled[id(w)].forward(x.float().numpy(), t))
            )

    def step(kernel, m):
        x = {576: torch.randn(m, 576, generator=gen).to(dtype), 1536: torch.randn(m, 1536, generator=gen).to(dtype)}
        t0 = time.perf_counter()
        for w in weights:
            kernel(x[w.shape[1]], w)
        return time.perf_counter() - t0

    times = {(name, m): [] for name in kernels for m in rows}
    with torch.inference_mode():
        for rnd in range(args.repeats + 1):
            for m in rows:
                for name, kernel in kernels.items():
                    dt = step(kernel, m)
                    if rnd:
                        times[(name, m)].append(dt)
    print(f"all linears of one step ({args.layers} layers + head, {args.dtype}), ms, medians of {args.repeats}; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'kernel':24s}" + "".join(f"{'M=' + str(m):>9s}" for m in rows))
    for name in kernels:
        print(f"{name:24s}" + "".join(f"{statistics.median(times[(name, m)]) * 1e3:9.1f}" for m in rows))


if __name__ == "__main__":
    main()
