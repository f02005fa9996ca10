"""The device check (``scripts/device_check.sh``, ``python -m tokenloom.eval.devicecheck``): one
command that says whether tokenloom is exact and fast on a device, on the embedded model and a
tiny random Llama, and writes one JSON file and a table.

It reports

- greedy identity: every method of :func:`tokenloom.methods` against HF greedy (a difference
  at a floating-point near-tie of the reference's logits is reported, not failed);
- a two-token chi-square of every lossless method, sampled (temperature 2, top-k 3);
- ByteLM against the brute-force oracle (both modes, < 1e-5);
- tokens/s of each method, HF greedy and HF prompt lookup (timed with the device synchronised);
- the tree-step cost curve, 1 to 81 tokens (``runtime.treeattn.tree_forward``, as the step-cost
  calibration times it);
- peak memory (the device's allocator on CUDA, the process's peak RSS on the CPU);

and exits 1, loudly, on any mismatch (2 when the device is absent). ``--device cpu`` runs small
settings (``--quick``, its default) on one torch thread (``--threads``) in about two minutes on
two cores; other devices run the full settings (about five minutes on one GPU). With ``TOKENLOOM_FORCE_ACCELERATOR_PATH=1`` a
CPU run takes the accelerator branches (:mod:`tokenloom.device`). The chi-square needs
scipy (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

__all__ = ["FULL", "QUICK", "Settings", "cpu_model", "format_table", "main", "run_checks", "write_report"]

#: A chi-square p-value below this fails the check (seeded: the same run gives the same value).
P_MIN = 1e-3
#: Largest ByteLM difference from the oracle that passes.
BYTES_TOL = 1e-5
CHAT_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "Explain speculative decoding in two sentences.",
    "List five fruits and their colours.",
]
BYTE_PREFIXES = [b"", b"d", b"def", b"a b", b"\xe6\x97", b"<|im", b"  x", b"'ll", b"\n   re"]


@dataclass(frozen=True)
class Settings:
    """How much each section runs."""

    greedy_tokens: int
    greedy_prompts: int
    chi_trials: int
    byte_prefixes: int
    speed_tokens: int
    speed_prompts: int
    curve_repeats: int


QUICK = Settings(greedy_tokens=16, greedy_prompts=1, chi_trials=300, byte_prefixes=4, speed_tokens=32, speed_prompts=1, curve_repeats=2)
FULL = Settings(greedy_tokens=64, greedy_prompts=3, chi_trials=1000, byte_prefixes=len(BYTE_PREFIXES), speed_tokens=128, speed_prompts=3, curve_repeats=3)


def cpu_model() -> str:
    """The CPU's model name (what ``lscpu`` shows: :func:`tokenloom.runtime.machine.cpu_model_and_flags`)."""
    from tokenloom.runtime.machine import cpu_model_and_flags

    return cpu_model_and_flags()[0]


def _timed(device: Any, fn: Any) -> Tuple[Any, float]:
    from tokenloom.device import synchronize

    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def _tiny_prompt(vocab: int, device: Any, seed: int = 3) -> Any:
    import torch

    base = torch.randint(3, vocab, (1, 6), generator=torch.Generator().manual_seed(seed))
    return torch.cat([base, base, base], dim=1).to(device)  # repeats: lookup / suffix drafts hit


def _method_kwargs(method: str, tokenizer: Any) -> Dict[str, Any]:
    """A method's ``generate`` keywords here: nothing persisted (each run starts from the
    in-process drafter states, never the user's cache), no output cached for later requests (a
    repeated prompt is not answered from the cache), the tokenizer for ``cautious``."""
    from tokenloom.eval.specbench import MethodOptions, method_kwargs

    kw = method_kwargs(method, MethodOptions(cache_output=False))
    if method == "cautious":
        kw.update({"tokenizer": tokenizer} if tokenizer is not None else {"punctuation": [13, 30]})
    return kw


def checked_methods() -> List[str]:
    """tokenloom's own methods and their aliases (``tokenloom.decoding.methods.BUILTIN``): a
    method registered by the user or a benchmark takes keywords this check cannot know."""
    from tokenloom.decoding.generate import methods
    from tokenloom.decoding.methods import ALIASES, BUILTIN

    return [m for m in methods() if m in BUILTIN or m in ALIASES]


def lossless_methods() -> List[str]:
    """Every method whose samples follow the target's distribution exactly (``cautious``
    chooses among trials; ``greedy`` is ``plain``'s other name)."""
    return [m for m in checked_methods() if m not in ("cautious", "greedy")]


def check_greedy(models: Sequence[Tuple[str, Any, Any, List[Any]]], s: Settings, failures: List[str]) -> List[Dict[str, Any]]:
    """Every method's greedy tokens against HF greedy's, per model and prompt."""
    from tokenloom.decoding.generate import generate
    from tokenloom.decoding.methods import resolve_method
    from tokenloom.eval.exactness import first_diff, hf_greedy, near_tie
    from tokenloom.integrations.hf.models import stop_token_ids

    rows = []
    for name, model, tok, prompts in models:
        eos = stop_token_ids(model)
        for p, ids in enumerate(prompts):
            ref = hf_greedy(model, ids, s.greedy_tokens, eos=eos)[0].tolist()
            done: Dict[Any, List[int]] = {}  # an alias (greedy = plain) runs once
            for method in checked_methods():
                fn = resolve_method(method)
                if fn not in done:
                    out = generate(model, ids, method=method, max_new_tokens=s.greedy_tokens, eos_token_id=eos,
                                             **_method_kwargs(method, tok))
                    done[fn] = out.sequences[0].tolist()
                ours = done[fn]
                j = first_diff(ours, ref)
                status, gap = "same", None
                if j is None and len(ours) != len(ref):
                    status = "MISMATCH"
                elif j is not None:
                    tie, gap = near_tie(model, ref, ours[j], j)
                    status = "near-tie" if tie else "MISMATCH"
                if status == "MISMATCH":
                    failures.append(f"greedy: {method} on {name}, prompt {p}: differs from HF at token {j}")
                rows.append({"model": name, "prompt": p, "method": method, "status": status, "first_diff": j, "gap": gap})
    return rows


def check_chi_square(model: Any, device: Any, s: Settings, failures: List[str]) -> List[Dict[str, Any]]:
    """Two sampled tokens (temperature 2, top-k 3) of every lossless method against their exact
    joint law."""
    from tokenloom.decoding.generate import generate
    from tokenloom.eval.exactness import joint_chi2

    ids = _tiny_prompt(int(model.config.vocab_size), device, seed=5)
    rows = []
    for method in lossless_methods():
        def run(i: int, method: str = method) -> Tuple[List[int], bool]:
            out = generate(model, ids, method=method, max_new_tokens=2, temperature=2.0, top_k=3, seed=i,
                                     eos_token_id=[], **_method_kwargs(method, None))
            spec = out.stats.spec
            return out.sequences[0, ids.shape[1]:].tolist(), spec is not None and spec.accepted > 0

        pvalue, accepted = joint_chi2(model, ids, 2.0, 3, 2, s.chi_trials, run)
        if not pvalue > P_MIN:
            failures.append(f"chi-square: {method} p = {pvalue:.2e} < {P_MIN}")
        rows.append({"method": method, "pvalue": pvalue, "accepted": accepted, "trials": s.chi_trials})
    return rows


def check_bytelm(model: Any, tokenizer: Any, s: Settings, failures: List[str]) -> List[Dict[str, Any]]:
    """ByteLM's next-byte distribution and log-probability against the brute-force oracle."""
    import math

    import numpy as np

    from tokenloom.bytelevel.lm import ByteLM
    from tokenloom.eval.bytesoracle import BruteForce

    rows = []
    for canonical in (False, True):
        lm = ByteLM(model, tokenizer, canonical=canonical)
        oracle = BruteForce(model, lm.vocab, lm.context_ids, canonical)
        for x in BYTE_PREFIXES[: s.byte_prefixes]:
            p = lm.next_byte_probs(x)
            q, total = oracle.next_byte_probs(x)
            diff = float(np.abs(p - q).max())
            lp_diff = abs(lm.logprob(x) - math.log(total))
            mode = "canonical" if canonical else "all covers"
            if not (diff < BYTES_TOL and lp_diff < BYTES_TOL):
                failures.append(f"ByteLM ({mode}) at {x!r}: {diff:.2e} from the oracle, log-probability {lp_diff:.2e}")
            rows.append({"mode": mode, "prefix": x.decode("latin-1"), "max_abs_diff": diff, "logprob_diff": lp_diff})
    return rows


def measure_speed(model: Any, tokenizer: Any, prompts: List[Any], device: Any, s: Settings) -> List[Dict[str, Any]]:
    """tokens/s of every method, HF greedy and HF prompt lookup (one warm-up run each)."""
    from tokenloom.eval.specbench import hf_method, tokenloom_method
    from tokenloom.integrations.hf.models import stop_token_ids

    eos = stop_token_ids(model)
    fns = {"hf": hf_method(), "hf-pld": hf_method(prompt_lookup=10)}
    for m in checked_methods():
        if m != "greedy":
            fns[m] = tokenloom_method(m, **_method_kwargs(m, tokenizer))
    rows = []
    for name, fn in fns.items():
        fn(model, prompts[0], 2, eos)  # warm-up (kernels, drafter states)
        tokens, seconds = 0, 0.0
        for ids in prompts[: s.speed_prompts]:
            new, dt = _timed(device, lambda ids=ids: fn(model, ids, s.speed_tokens, eos)[0])
            tokens += len(new)
            seconds += dt
        rows.append({"method": name, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if seconds else 0.0})
    base = {r["method"]: r["tokens_per_s"] for r in rows}
    for r in rows:
        r["vs_hf"] = r["tokens_per_s"] / base["hf"] if base["hf"] else 0.0
        r["vs_hf_pld"] = r["tokens_per_s"] / base["hf-pld"] if base["hf-pld"] else 0.0
    return rows


def measure_tree_steps(model: Any, s: Settings) -> Dict[str, Any]:
    """Seconds of one tree step (forward + argmax + top-k) per tree size, 1 to 81 tokens, as
    ``generate`` runs it (packed linears where they apply). It is the step-cost calibration
    itself, so ``tree="auto"`` drafters measured afterwards reuse it."""
    from tokenloom.runtime.cpupack import packed_linears
    from tokenloom.spec.sizing import DEFAULT_TOKENS, calibrate_step_cost

    with packed_linears(model, "auto"):
        cost = calibrate_step_cost(model, DEFAULT_TOKENS, repeats=s.curve_repeats, disk=False, force=True)
    return {"tokens": list(cost.tokens), "seconds": list(cost.seconds)}


def _section(title: str, head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    out = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out + [""]


def format_table(report: Dict[str, Any]) -> str:
    """The report as Markdown tables."""
    m = report["machine"]
    lines = [
        f"## Device check: {m['device_name']} ({'quick' if report['quick'] else 'full'}"
        f"{', accelerator branches forced' if m['forced_accelerator_path'] else ''})",
        "",
        f"CPU: {m['cpu']} ({m.get('torch_threads', '?')} torch threads); torch {m['torch']}, "
        f"transformers {m['transformers']}, tokenloom {m['tokenloom']}; "
        f"{report['seconds']:.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["section_seconds"].items())
        + f"); {'PASS' if not report['failures'] else 'FAIL'}",
        "",
    ]
    greedy: Dict[str, Dict[str, str]] = {}
    for r in report["greedy"]:
        cell = greedy.setdefault(r["method"], {})
        prev = cell.get(r["model"], "same")
        cell[r["model"]] = r["status"] if r["status"] != "same" or prev == "same" else prev
    models = sorted({r["model"] for r in report["greedy"]})
    lines += _section("Greedy identity vs HF greedy", ["method"] + models, [[k] + [v.get(x, "-") for x in models] for k, v in greedy.items()])
    lines += _section("Two-token chi-square (sampled)", ["method", "p-value", "accepted", "trials"],
                      [[r["method"], f"{r['pvalue']:.3g}", r["accepted"], r["trials"]] for r in report["chi_square"]])
    worst: Dict[str, float] = {}
    for r in report["bytelm"]:
        worst[r["mode"]] = max(worst.get(r["mode"], 0.0), r["max_abs_diff"], r["logprob_diff"])
    lines += _section("ByteLM vs the brute-force oracle", ["mode", "prefixes", "max difference"],
                      [[k, sum(1 for r in report["bytelm"] if r["mode"] == k), f"{v:.1e}"] for k, v in worst.items()])
    lines += _section("Speed (embedded model)", ["method", "tokens/s", "vs HF greedy", "vs HF prompt lookup"],
                      [[r["method"], f"{r['tokens_per_s']:.1f}", f"{r['vs_hf']:.2f}x", f"{r['vs_hf_pld']:.2f}x"] for r in report["speed"]])
    ts = report["tree_steps"]
    lines += _section("Tree step (embedded model)", ["tokens"] + [str(t) for t in ts["tokens"]],
                      [["ms"] + [f"{1e3 * x:.1f}" for x in ts["seconds"]]])
    pm = report["peak_memory"]
    lines += [f"Peak memory ({pm['kind']}): {pm['bytes'] / 2**20:.0f} MiB", ""]
    if report["failures"]:
        lines += ["FAILURES:"] + [f"- {f}" for f in report["failures"]]
    return "\n".join(lines)


def write_report(report: Dict[str, Any], out: str) -> str:
    """Write ``report`` as JSON to ``out`` and its table next to it (``.md``); returns that path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    md = out[:-5] + ".md" if out.endswith(".json") else out + ".md"
    with open(md, "w") as f:
        f.write(format_table(report) + "\n")
    return md


def run_checks(device: Any, s: Settings, embedded: Optional[Tuple[Any, Any]] = None) -> Dict[str, Any]:
    """Every section on ``device``; returns the report (``failures`` lists the mismatches).

    Args:
        device: a ``torch.device`` (:func:`tokenloom.device.require_device`).
        s: :data:`QUICK` or :data:`FULL`.
        embedded: ``(model, tokenizer)`` of the embedded model on ``device`` (default: loaded).
    """
    import torch
    import transformers

    from tokenloom import _core
    from tokenloom.device import device_name, forced, peak_memory, reset_peak_memory
    from tokenloom.integrations.hf.models import default_model_path, load, make_tiny_llama
    from tokenloom.integrations.hf.chat import chat_input_ids

    start = time.perf_counter()
    reset_peak_memory(device)
    model, tok = embedded if embedded is not None else load(default_model_path(), device=device)
    tiny = make_tiny_llama().to(device)
    small = make_tiny_llama(vocab_size=1024, layers=1).to(device)
    chat = [chat_input_ids(tok, p).to(device) for p in CHAT_PROMPTS[: max(s.greedy_prompts, s.speed_prompts)]]
    failures: List[str] = []
    report: Dict[str, Any] = {
        "machine": {
            "device": str(device), "device_name": device_name(device), "cpu": cpu_model(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenloom": _core.__version__, "forced_accelerator_path": forced(),
            "torch_threads": torch.get_num_threads(),
        },
        "quick": s == QUICK,
        "settings": s.__dict__,
    }
    models = [
        ("SmolLM2-135M", model, tok, chat[: s.greedy_prompts]),
        ("tiny Llama", tiny, tok, [_tiny_prompt(49152, device)]),
    ]
    # The tree-step curve first: tree="auto" drafters reuse it as their calibration; then speed,
    # before the greedy runs have taught the drafters these prompts' continuations.
    sections = {
        "tree_steps": lambda: measure_tree_steps(model, s),
        "speed": lambda: measure_speed(model, tok, chat, device, s),
        "greedy": lambda: check_greedy(models, s, failures),
        "chi_square": lambda: check_chi_square(small, device, s, failures),
        "bytelm": lambda: check_bytelm(tiny, tok, s, failures),
    }
    report["section_seconds"] = {"load": time.perf_counter() - start}
    for key, fn in sections.items():
        t0 = time.perf_counter()
        report[key] = fn()
        report["section_seconds"][key] = time.perf_counter() - t0
    kind, peak = peak_memory(device)
    report["peak_memory"] = {"kind": kind, "bytes": peak}
    report["failures"] = failures
    report["seconds"] = time.perf_counter() - start
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``device_check [--device D] [--quick | --full] [--out PATH]``: 0 when everything
    matches, 1 on any mismatch, 2 when the device is absent."""
    ap = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", default=None, help="small settings (the default on cpu)")
    size.add_argument("--full", action="store_true", help="full settings (the default elsewhere)")
    ap.add_argument("--out", default="device_check.json", help="the JSON report (the table goes next to it, .md)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default on --device cpu: 1; on a shared machine a busy thread pool "
                         "made each forward up to 20x slower)")
    args = ap.parse_args(argv)
    import torch

    from tokenloom.device import DeviceUnavailable, require_device

    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = require_device(name)
    except DeviceUnavailable as e:
        print(f"device_check: --device {name}: {e}; run with --device cpu, or on a machine that has one", file=sys.stderr)
        return 2
    on_cpu = str(device) == "cpu"
    if args.threads is not None or on_cpu:
        torch.set_num_threads(args.threads or 1)
    quick = not args.full and (args.quick or on_cpu)
    report = run_checks(device, QUICK if quick else FULL)
    md = write_report(report, args.out)
    print(format_table(report))
    print(f"\nwrote {args.out} and {md}")
    if report["failures"]:
        print("\nDEVICE CHECK FAILED:\n" + "\n".join(f"  {x}" for x in report["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
