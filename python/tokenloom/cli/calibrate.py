"""``tokenloom calibrate``: measure, on this machine, what tokenloom's ``auto`` speed choices
use, and show what they chose and why.

It prints the machine (CPU model, the ISA flags that decide which kernels are fast, cores,
torch build and threads, the load average), then times tree steps of the model (the embedded
one unless ``--model``) in ``--dtype``: the step-cost curve of each linear kernel the model can
run (:func:`tokenloom.runtime.cpupack.available_kernels`: as loaded; oneDNN pre-packed for
float32 CPU linears; tokenloom's tiles for float32 / bfloat16 ones), and the kernel choice of
``pack="auto"`` (:func:`tokenloom.spec.calibration.choose_pack`: a one-token and a 17-token step
per kernel, interleaved, medians). What it measures replaces the saved calibration of this
model and machine, under the same rules as an automatic one (not saved when the machine is
busy). ``--json PATH`` writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any, Callable, Dict, List, Optional

from tokenloom.cli.common import add_dtype_arg, add_model_args, count, load_model, output_file

__all__ = ["add_parser", "measure", "report_lines", "run"]


def _tokens(text: str) -> List[int]:
    """An argparse type: comma-separated distinct tree sizes >= 1, e.g. ``1,5,17``."""
    try:
        sizes = [int(x, 10) for x in text.split(",") if x.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError(f"expected distinct comma-separated integers >= 1 (e.g. 1,5,17), got {text!r}")
    return sorted(sizes)


_tokens.__name__ = "tree sizes"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate", help="measure the step cost per kernel and show what pack/tree=\"auto\" choose here",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    add_model_args(p)
    add_dtype_arg(p)
    p.add_argument("--tokens", type=_tokens, default=None,
                   help="tree sizes to time, comma-separated (default 1,2,5,9,17,33,49,81)")
    p.add_argument("--repeats", type=count(1), default=3, help="timed rounds per size and kernel (>= 1, default 3; medians)")
    p.add_argument("--past-len", type=count(1), default=128, help="cached tokens under each timed step (>= 1, default 128)")
    p.add_argument("--json", type=output_file, default=None, metavar="PATH", help="also write the results here as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _curve_json(cost: Any, saved: bool) -> Dict[str, Any]:
    return {"tokens": list(cost.tokens), "seconds": list(cost.seconds), "key": cost.key, "load": cost.load, "saved": saved}


def measure(
    model: Any,
    *,
    tokens: Optional[List[int]] = None,
    repeats: int = 3,
    past_len: int = 128,
    progress: bool = True,
    timer: Any = None,
) -> Dict[str, Any]:
    """Measure the step-cost curve of every kernel this model can run with and the kernel
    choice; returns the report (the ``--json`` schema): ``{"machine", "load", "dtype",
    "curves": {kernel: {"tokens", "seconds", "key", "load", "saved"}}, "pack": {"pack",
    "reason", "kernel", "seconds", "load", "saved"}, "auto": {"pack", "curve"}, "settings"}``."""
    import torch
    from tqdm import tqdm

    from tokenloom.runtime.cpupack import available_kernels, pack_value, packed_linears
    from tokenloom.runtime.machine import machine_info, machine_load
    from tokenloom.runtime.model import model_dtype_device
    from tokenloom.spec.calibration import PACK_TREE_TOKENS, choose_pack, disk_enabled
    from tokenloom.spec.sizing import DEFAULT_TOKENS, calibrate_step_cost

    sizes = sorted(set(tokens or DEFAULT_TOKENS))
    dtype = model_dtype_device(model)[0]
    kernels = available_kernels(model)
    can_pack = len(kernels) > 1
    total = (repeats + 1) * len(sizes) * len(kernels) + ((repeats + 1) * 2 * len(kernels) if can_pack else 0)
    bar = tqdm(total=total, desc="calibrate", unit="step", file=sys.stderr, disable=not progress, leave=False)
    tick: Callable[[], None] = lambda: bar.update(1)  # noqa: E731
    load = machine_load()
    curves: Dict[str, Any] = {}
    try:
        for kern in kernels:
            with packed_linears(model, pack_value(kern)):
                cost = calibrate_step_cost(model, sizes, past_len=past_len, repeats=repeats, force=True, timer=timer, progress=tick)
            curves[kern] = _curve_json(cost, disk_enabled() and not cost.load.get("heavy"))
        if can_pack:
            choice = choose_pack(model, repeats=repeats, past_len=past_len, force=True, timer=timer, progress=tick)
            if choice.kernel not in curves:  # a row-split kernel: its own curve, as tree="auto" measures it
                with packed_linears(model, pack_value(choice.kernel)):
                    cost = calibrate_step_cost(model, sizes, past_len=past_len, repeats=repeats, force=True, timer=timer)
                curves[choice.kernel] = _curve_json(cost, disk_enabled() and not cost.load.get("heavy"))
            pack = {"pack": choice.packed, "kernel": choice.kernel, "reason": choice.reason, "load": choice.load,
                    "saved": choice.saved,
                    "seconds": {k: {str(t): s for t, s in v.items()} for k, v in choice.seconds.items()},
                    "tree_tokens": PACK_TREE_TOKENS}
        else:
            why = (f"packing covers float32 and bfloat16 CPU linears; this model is {str(dtype).replace('torch.', '')}"
                   if dtype not in (torch.float32, torch.bfloat16) else "neither oneDNN's packed linear nor tokenloom's tiles "
                   "work here, or the model has no float32 / bfloat16 CPU linears")
            pack = {"pack": False, "kernel": "unpacked", "reason": why, "load": {}, "saved": False, "seconds": {}, "tree_tokens": PACK_TREE_TOKENS}
        long_rows = _long_rows(model) if "tiles" in kernels else {}
    finally:
        bar.close()
    return {
        "machine": machine_info(),
        "load": load,
        "dtype": str(dtype).replace("torch.", ""),
        "settings": {"tokens": sizes, "repeats": repeats, "past_len": past_len},
        "curves": curves,
        "pack": pack,
        "auto": {"pack": pack["pack"], "curve": pack["kernel"]},
        "long_rows": long_rows,
    }


def _long_rows(model: Any) -> Dict[str, bool]:
    """One prompt forward of ``2 x TILED_MAX_ROWS + 1`` tokens in tiles, so every weight shape
    has measured how it runs prompts (:func:`tokenloom.runtime.cpupack.long_rows_choice`);
    returns the choices."""
    import torch

    from tokenloom.runtime.cpupack import TILED_MAX_ROWS, long_rows_choices, packed_linears
    from tokenloom.runtime.model import model_dtype_device

    vocab = int(model.get_input_embeddings().weight.shape[0])
    ids = torch.randint(0, vocab, (1, 2 * TILED_MAX_ROWS + 1), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), packed_linears(model, "tiles"):
        model(input_ids=ids.to(model_dtype_device(model)[1]), use_cache=False, logits_to_keep=1)
    return long_rows_choices()


def report_lines(report: Dict[str, Any], model_label: str = "") -> List[str]:
    """The report as text: the machine, a curve per kernel, the choice and why."""
    from tokenloom.runtime.machine import ISA_FLAGS

    m, load = report["machine"], report["load"]
    has = set(m["flags"])
    lines = [
        f"machine: {m['cpu']}; {m['cores']} cores; {m['platform']}",
        f"  ISA: {' '.join(f for f in ISA_FLAGS if f in has) or '(none of interest)'}"
        + (f" (not: {' '.join(f for f in ISA_FLAGS if f not in has)})" if has != set(ISA_FLAGS) else ""),
        "  tiles kernels: " + (", ".join(f"{d} {k}" for d, k in sorted((m.get("tiles") or {}).items())) or "(no compiled extension)"),
        f"  torch {m['torch_build']}, {m['threads']} threads; load average {load['load1']:.2f} on {load['cpus']} CPUs"
        + (" -- busy: timings are noisy" if load["busy"] else ""),
        f"model: {model_label or 'the model'} ({report['dtype']}); {report['settings']['repeats']} timed round(s) per size, "
        f"{report['settings']['past_len']} cached tokens; medians",
        "",
        "step cost (ms per tree step of T tokens):",
    ]
    sizes = report["settings"]["tokens"]
    lines.append(f"  {'kernel':<12}" + "".join(f"{'T=' + str(t):>9}" for t in sizes) + "   saved")
    for kern, c in report["curves"].items():
        note = "yes" if c["saved"] else f"no ({c['load'].get('why') or 'disk cache off'})"
        lines.append(f"  {kern:<12}" + "".join(f"{s * 1e3:>9.2f}" for s in c["seconds"]) + f"   {note}")
    p = report["pack"]
    lines.append("")
    lines.append(f"pack=\"auto\": {'runs ' + p['kernel'] if p['pack'] else 'keeps the model as loaded'} -- {p['reason']}"
                 + ("" if p["saved"] or not p["seconds"] else f" (not saved: {p['load'].get('why') or 'disk cache off'})"))
    curve = report["curves"][report["auto"]["curve"]]
    lines.append(f"tree=\"auto\" / budget=\"auto\" size trees with the {report['auto']['curve']} curve"
                 + _ratio_text(curve))
    long_rows = report.get("long_rows") or {}
    if long_rows:
        chunked = sorted(k for k, v in long_rows.items() if v)
        plain = sorted(k for k, v in long_rows.items() if not v)
        lines.append("prompts (more rows than a tree) in tiles: "
                     + "; ".join(x for x in (f"tiles in chunks for {', '.join(chunked)}" if chunked else "",
                                             f"the original linear for {', '.join(plain)}" if plain else "") if x)
                     + " (measured: whichever ran a prompt faster)")
    return lines


def _ratio_text(curve: Dict[str, Any]) -> str:
    import numpy as np

    toks, secs = curve["tokens"], curve["seconds"]
    if len(toks) < 2:
        return ""
    one = float(np.interp(1, toks, secs))
    big = 17 if toks[-1] >= 17 else toks[-1]
    return f": a {big}-token step costs {float(np.interp(big, toks, secs)) / one:.2f}x a one-token step"


def run(args: argparse.Namespace) -> int:
    from tokenloom.spec.calibration import CalibrationWarning

    model, _tok = load_model(args)
    with warnings.catch_warnings():  # the report says what was not saved and why
        warnings.simplefilter("ignore", CalibrationWarning)
        report = measure(model, tokens=args.tokens, repeats=args.repeats, past_len=args.past_len, progress=not args.no_progress)
    label = args.model or "the embedded SmolLM2-135M-Instruct"
    print("\n".join(report_lines(report, label)))
    if args.json:
        report["model"] = label
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
    return 0
