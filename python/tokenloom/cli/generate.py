"""``tokenloom generate "PROMPT"``: chat-templated generation on the embedded model (or
``--model PATH``), streamed, with a stats line.

``--compare`` measures the method against named baselines on the same prompt, in the same
process: the HF configurations this machine has -- **HF greedy** as loaded (``model.generate``,
the reference of "same tokens"), HF greedy on packed linears, HF prompt lookup -- of which the
fastest is the **anchor** the speedup is given over (and named), and **tokenloom greedy**
(``method="plain"``, linears packed where that measured faster). Every method is
warmed up first on another prompt (one-time set-up such as the step-cost calibration of
``tree="auto"`` is timed and reported separately), then the methods run ``--repeat`` rounds,
alternating (the order rotates every round), and the table gives the median tokens/s, its
spread (min-max), the mean accepted tokens per forward and whether every run gave exactly HF
greedy's tokens. The machine load is printed with it (``os.getloadavg``), with a warning when it
is high. Each timed run of a drafter that learns across requests starts from a fresh state of
its own (:func:`~tokenloom.spec.persist.separate_states`): a round never drafts from an earlier
round's answer to the same prompt, nor from the user's saved state.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List

from tokenloom.cli.common import (
    add_dtype_arg,
    add_model_args,
    add_sampling_args,
    count,
    load_model,
    one_of,
    raise_if_interrupted,
    sampling_kwargs,
    warn,
    warn_unused_sampling,
)

__all__ = ["add_parser", "load_line", "run"]

#: The baselines of ``--compare``: (bench method name, label); the fastest of the HF ones
#: (:data:`tokenloom.eval.specbench.HF_ANCHORS`) is the anchor.
BASELINES = (
    ("hf", "HF greedy (model.generate)"),
    ("hf-packed", "HF greedy, packed linears"),
    ("hf-pld", "HF prompt lookup"),
    ("plain", "tokenloom greedy"),
)
_WARM_PROMPT = "Say hello."


def _methods() -> List[str]:
    from tokenloom.decoding.generate import methods

    return list(methods())


def default_method() -> str:
    """``merged`` (suffix matches + recycled candidates in one tree; the fastest of tokenloom's
    methods on every workload of ``tokenloom bench``, see docs/suffix.md), else ``recycling``,
    else ``greedy``."""
    known = _methods()
    return next((m for m in ("merged", "recycling") if m in known), "greedy")


def add_parser(sub: Any) -> None:
    method = one_of(_methods, "method")
    p = sub.add_parser(
        "generate", help="generate a reply to PROMPT and print tokens/s (--compare: against the fastest HF configuration)",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    p.add_argument("prompt", help="the user message (the chat template is applied unless --no-chat)")
    p.add_argument("--method", type=method, default=None,
                   help=f"decoding method, one of: {', '.join(method.choices())} (default: merged)")  # type: ignore[attr-defined]
    add_model_args(p)
    add_dtype_arg(p)
    p.add_argument("--max-new-tokens", type=count(1), default=128, help="most new tokens (>= 1, default 128)")
    add_sampling_args(p)
    p.add_argument("--no-chat", action="store_true", help="use the prompt as raw text, no chat template")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")
    p.add_argument("--exact-rows", action="store_true",
                   help="each tree node's attention computed as its own one-token step (bit-identical to greedy in "
                   "bfloat16 too; tree steps cost more)")
    p.add_argument("--compare", action="store_true",
                   help="time the method against the HF configurations (greedy, packed, prompt lookup; the fastest is the "
                   "anchor) and tokenloom greedy (warmed up, alternated, repeated; greedy only)")
    p.add_argument("--repeat", type=count(1), default=3, help="--compare: rounds per method (>= 1, default 3; the median is shown)")
    p.set_defaults(func=run)


def load_line() -> str:
    """The machine load (1-minute average over the CPUs), with a warning when it is high."""
    from tokenloom.eval.specbench import machine_load

    load = machine_load()
    line = f"load average {load['load1']:.2f} {load['load5']:.2f} {load['load15']:.2f} on {load['cpus']} CPUs"
    if load["busy"]:
        line += " -- the machine is busy: timings are noisy, compare the ratios and rerun when idle"
    return line


def _check(args: argparse.Namespace, method: str) -> None:
    """What involves several flags (each flag was checked while parsing)."""
    if args.compare and args.temperature != 0:
        raise ValueError("--compare times greedy decoding (the same tokens as HF greedy); drop --temperature")
    if args.compare and method in ("plain", "greedy"):
        raise ValueError(f"--compare: {method!r} is a baseline itself; choose a speculative method ({', '.join(m for m in _methods() if m not in ('plain', 'greedy'))})")
    if args.compare and args.exact_rows:
        raise ValueError("--compare times the default tree steps; drop --exact-rows")
    if args.repeat != 3 and not args.compare:
        warn("--repeat only counts with --compare")
    warn_unused_sampling(args)


def _warm_up(model: Any, tok: Any, method: str, sampling: Dict[str, Any], exact_rows: bool = False) -> float:
    """One short untimed request on another prompt: one-time set-up (step-cost calibration,
    CPU weight packing, lazy imports) happens here, not in the timed call. Returns its seconds."""
    from tokenloom.decoding.generate import generate
    from tokenloom.integrations.hf.chat import chat_input_ids

    start = time.perf_counter()
    generate(model, chat_input_ids(tok, _WARM_PROMPT), method=method, max_new_tokens=4, exact_rows=exact_rows, **sampling)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    method = args.method or default_method()
    _check(args, method)
    model, tokenizer = load_model(args)
    if args.compare:
        return compare(args, model, tokenizer, method)
    from transformers import TextStreamer

    from tokenloom.decoding.generate import generate
    from tokenloom.integrations.hf.chat import chat_input_ids

    sampling = sampling_kwargs(args)
    setup = _warm_up(model, tokenizer, method, sampling, args.exact_rows)
    raise_if_interrupted()
    print(f"[tokenloom] set-up (untimed warm-up, step-cost calibration on a new machine): {setup:.2f} s", file=sys.stderr)
    input_ids = chat_input_ids(tokenizer, args.prompt, chat=not args.no_chat)
    streamer = None if args.no_stream else TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = generate(model, input_ids, method=method, max_new_tokens=args.max_new_tokens, streamer=streamer,
                   exact_rows=args.exact_rows, **sampling)
    if args.no_stream:
        print(tokenizer.decode(out.sequences[0, input_ids.shape[1]:], skip_special_tokens=True))
    print(out.stats.line(method))
    return 0


def compare(args: argparse.Namespace, model: Any, tok: Any, method: str) -> int:
    """``--compare``: the method and the baselines, warmed up, alternated, repeated; the speedup
    over the fastest HF configuration (named) and over HF greedy and tokenloom greedy."""
    import statistics

    from tqdm import tqdm

    from tokenloom.eval.specbench import HF_ANCHORS, MethodOptions, best_anchor, count_forwards, resolve
    from tokenloom.integrations.hf.chat import chat_input_ids
    from tokenloom.integrations.hf.models import stop_token_ids
    from tokenloom.spec.persist import separate_states

    names = [method] + [b for b, _ in BASELINES]
    labels = {method: method, **dict(BASELINES)}
    # The rounds time the same prompt: a drafter that learns across requests (the recycler, the
    # cross-request cache) would draft a later round from an earlier round's answer. So every
    # timed run starts from a fresh drafter state of its own (nothing saved is loaded, nothing is
    # saved), and its output stays out of the cross-request cache.
    options = MethodOptions(persist=False, cache_output=False)
    own: Dict[Any, Any] = {}
    fns = {m: resolve(m, options) for m in names}
    eos = stop_token_ids(model, tok)
    warm = chat_input_ids(tok, _WARM_PROMPT)
    ids = chat_input_ids(tok, args.prompt, chat=not args.no_chat)
    setup: Dict[str, float] = {}
    for m in names:
        with separate_states(own, (m, "warm-up")):
            start = time.perf_counter()
            fns[m](model, warm, 8, eos)
            setup[m] = time.perf_counter() - start
    print("[tokenloom] warm-up (untimed, another prompt; one-time set-up such as the step-cost calibration): "
          + ", ".join(f"{m} {s:.2f} s" for m, s in setup.items()), file=sys.stderr)
    runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in names}
    handle, counter = count_forwards(model)
    try:
        bar = tqdm(total=args.repeat * len(names), desc="compare", file=sys.stderr, leave=False)
        for r in range(args.repeat):
            for m in names[r % len(names):] + names[: r % len(names)]:
                with separate_states(own, (m, r)):
                    counter.reset()
                    start = time.perf_counter()
                    new, _ = fns[m](model, ids, args.max_new_tokens, eos)
                    sec = time.perf_counter() - start
                runs[m].append({"tokens": new, "seconds": sec, "forwards": counter.value})
                bar.update(1)
        bar.close()
    finally:
        handle.remove()
    reference = runs["hf"][0]["tokens"]
    if not args.no_stream:
        print(tok.decode(runs[method][0]["tokens"], skip_special_tokens=True))
    rows = {}
    for m in names:
        rates = [len(x["tokens"]) / x["seconds"] for x in runs[m]]
        fwd = sum(x["forwards"] for x in runs[m])
        rows[m] = {
            "median": statistics.median(rates), "lo": min(rates), "hi": max(rates),
            "mat": sum(len(x["tokens"]) for x in runs[m]) / fwd if fwd else float("nan"),
            "same": all(x["tokens"] == reference for x in runs[m]),
        }
    n_tok = len(runs[method][0]["tokens"])
    from tokenloom.runtime.machine import describe

    print(f"\n{n_tok} new tokens, {args.repeat} alternated run(s) per method; {load_line()}")
    print(f"machine: {describe()}")
    print(f"{'method':<28} {'tok/s (median)':>14} {'min-max':>13} {'MAT':>5}  same tokens as HF greedy")
    for m in names:
        v = rows[m]
        print(f"{labels[m]:<28} {v['median']:>14.1f} {v['lo']:>6.1f}-{v['hi']:<6.1f} {v['mat']:>5.2f}  {'yes' if v['same'] else 'NO'}")
    speed = {b: rows[method]["median"] / max(rows[b]["median"], 1e-9) for b, _ in BASELINES}
    anchor = best_anchor({m: rows[m]["median"] for m in names}) or "hf"
    print(f"[tokenloom] {method}: {speed[anchor]:.2f}x the fastest HF configuration here ({anchor}: {HF_ANCHORS[anchor]}), "
          f"{speed['hf']:.2f}x HF greedy, {speed['plain']:.2f}x tokenloom greedy "
          f"(same tokens: {'yes' if rows[method]['same'] else 'NO'})")
    return 0
