"""What every ``tokenloom`` subcommand shares, so that a bad flag is refused while the command
line is parsed -- before any model loads -- with what was wrong and what is allowed.

* Argument types (argparse ``type=``): :func:`count` (integers with a minimum), :func:`number`
  (floats in a range), :func:`one_of` / :func:`some_of` (a name or a comma-separated list from
  a set of valid names; the error lists them). Their errors become argparse's usage error, exit
  code 2.
* :func:`output_file` / :func:`plot_file`: files to write (folder exists; matplotlib installed
  for plots, else the error names the ``plot`` extra).
* :func:`add_model_args` (``--model``, ``--verbose``), :func:`add_dtype_arg` (``--dtype``) and
  :func:`load_model`: quiet loading (no third-party warnings or progress bars unless
  ``--verbose``), the weights cast to ``--dtype`` where the command has it, failures turned into
  one line saying what is missing and where it looked.
* :func:`add_sampling_args`, :func:`sampling_kwargs`, :func:`warn_unused_sampling`: the sampling
  flags and the warning when they do nothing (temperature 0 is greedy).
* :func:`prefix_bytes`: a byte argument exactly as typed (``os.fsencode`` keeps non-UTF-8 bytes)
  or, with escapes on, ``\\xNN`` / ``\\n`` / ``\\t`` / ``\\r`` / ``\\0`` / ``\\\\``.
* :func:`warn`: one ``tokenloom: warning: ...`` line on stderr.
* :func:`note_interrupt` / :func:`interrupted` / :func:`raise_if_interrupted`: Ctrl-C as seen by
  ``main``'s handler, so an interrupt a library swallowed still stops the command.
* Exit codes (:func:`tokenloom.cli.main.main`): 0 ok, 2 bad input (usage, ValueError,
  TypeError, IndexError, FileNotFoundError, :class:`ModelLoadError`), 130 Ctrl-C anywhere.

Adding a subcommand (e.g. ``tokenloom score``):

1. write ``tokenloom/cli/<name>.py`` with ``add_parser(sub)`` (build the parser, then
   ``p.set_defaults(func=run)``) and ``run(args) -> int``; add ``<name>`` to
   ``SUBCOMMANDS`` in :mod:`tokenloom.cli.main`;
2. declare every flag with a checking type from here (``type=count(1)``,
   ``type=number(0, 1, low_open=True)``, ``type=some_of(valid_names, "workloads")``) and
   ``add_model_args(p)``; put the valid choices and the default in each ``help=`` (the helpers'
   ``.choices`` attribute has them);
3. in ``run``: check what involves several flags first (raise ValueError), then
   ``model, tok = load_model(args)``; never catch KeyboardInterrupt.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

from tokenloom.integrations.hf.models import DTYPES  # re-exported: the choices of --dtype

__all__ = [
    "ModelLoadError",
    "PLOT_EXTRA_HINT",
    "DTYPES",
    "add_dtype_arg",
    "add_model_args",
    "add_sampling_args",
    "count",
    "interrupted",
    "load_model",
    "note_interrupt",
    "number",
    "one_of",
    "output_file",
    "plot_file",
    "prefix_bytes",
    "raise_if_interrupted",
    "sampling_kwargs",
    "some_of",
    "warn",
    "warn_unused_sampling",
]

Names = Union[Sequence[str], Callable[[], Sequence[str]]]


class ModelLoadError(Exception):
    """A model could not be loaded; the message is one actionable line."""


def warn(message: str) -> None:
    """Print ``tokenloom: warning: message`` on stderr."""
    print(f"tokenloom: warning: {message}", file=sys.stderr)


def count(minimum: int = 0, maximum: Optional[int] = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected an integer {bound}, got {text!r}")
        return value

    parse.__name__ = "integer"
    return parse


def number(low: float = -math.inf, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float in the interval ``low .. high`` (ends closed unless
    ``low_open`` / ``high_open``)."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    where = f"in {lo}{low:g}, {high:g}{hi}" if math.isfinite(high) else f"{'>' if low_open else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"expected a number {where}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def _names(valid: Names) -> List[str]:
    return list(valid() if callable(valid) else valid)


def one_of(valid: Names, what: str = "value") -> Callable[[str], str]:
    """An argparse type: one name of ``valid`` (a list, or a function giving it when parsing).
    ``.choices()`` lists them for ``help=``."""

    def parse(text: str) -> str:
        names = _names(valid)
        if text not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose from: {', '.join(names)}")
        return text

    parse.__name__ = what
    parse.choices = lambda: _names(valid)  # type: ignore[attr-defined]
    return parse


def some_of(valid: Names, what: str = "values", also: Optional[Callable[[str], bool]] = None) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated list of distinct names of ``valid`` (at least one), or
    names ``also`` accepts (a family such as ``merged-16``). ``.choices()`` lists ``valid`` for
    ``help=``."""

    def parse(text: str) -> List[str]:
        names = _names(valid)
        items = [x.strip() for x in text.split(",") if x.strip()]
        unknown = [x for x in items if x not in names and not (also is not None and also(x))]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(map(repr, unknown))}; choose from: {', '.join(names)}")
        if not items:
            raise argparse.ArgumentTypeError(f"expected at least one of: {', '.join(names)}")
        dup = sorted({x for x in items if items.count(x) > 1})
        if dup:
            raise argparse.ArgumentTypeError(f"each of the {what} once, got {', '.join(dup)} twice")
        return items

    parse.__name__ = what
    parse.choices = lambda: _names(valid)  # type: ignore[attr-defined]
    return parse


#: What to install for ``--plot`` (the ``plot`` extra of the package).
PLOT_EXTRA_HINT = "pip install 'tokenloom[plot]' (or: pip install matplotlib)"


def output_file(text: str) -> str:
    """An argparse type: a file to write, whose folder exists."""
    from pathlib import Path

    parent = Path(text).resolve().parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(parent)!r} of {text!r} does not exist")
    return text


def plot_file(text: str) -> str:
    """An argparse type: a PNG to write (:func:`output_file`), and matplotlib importable -- checked
    before the run, not after it."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError(f"plots need matplotlib, which is not installed: {PLOT_EXTRA_HINT}")
    return output_file(text)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model PATH`` and ``--verbose``."""
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a local .gguf file or Hugging Face model directory (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--verbose", action="store_true",
                   help="show the third-party warnings and progress bars of model loading, and full tracebacks")


def add_dtype_arg(p: argparse.ArgumentParser) -> None:
    """``--dtype float32|bfloat16`` (the weights' dtype after loading; default float32)."""
    p.add_argument("--dtype", type=one_of(DTYPES, "dtype"), default="float32",
                   help=f"the weights' dtype, one of: {', '.join(DTYPES)} (default float32; logits are "
                   "verified in float32 either way)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """``--temperature``, ``--top-k``, ``--top-p``, ``--min-p``, ``--seed``, checked as parsed."""
    p.add_argument("--temperature", type=number(0.0), default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=count(1), default=None, help="sampling: keep the k most likely tokens (>= 1)")
    p.add_argument("--top-p", type=number(0.0, 1.0, low_open=True), default=None, help="sampling: nucleus mass in (0, 1]")
    p.add_argument("--min-p", type=number(0.0, 1.0), default=None, help="sampling: drop tokens below min-p x the top probability, in [0, 1]")
    p.add_argument("--seed", type=count(0, 2**63 - 1), default=None, help="sampling: seed (>= 0) of a reproducible run")


_SAMPLING = ("top_k", "top_p", "min_p", "seed")


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The ``generate`` keywords of the sampling flags."""
    return {"temperature": args.temperature, **{k: getattr(args, k) for k in _SAMPLING}}


def warn_unused_sampling(args: argparse.Namespace) -> List[str]:
    """Warn when sampling flags are given at temperature 0 (greedy ignores them); returns them."""
    unused = [f"--{k.replace('_', '-')}" for k in _SAMPLING if getattr(args, k, None) is not None]
    if unused and args.temperature == 0:
        warn(f"{', '.join(unused)} do{'es' if len(unused) == 1 else ''} nothing at temperature 0 (greedy); "
             "add --temperature T (> 0) to sample")
        return unused
    return []


_INTERRUPTED = [False]


def note_interrupt(on: bool = True) -> None:
    """Record that Ctrl-C came (``main``'s SIGINT handler), or with ``False`` clear it (a new
    command starts)."""
    _INTERRUPTED[0] = bool(on)


def interrupted() -> bool:
    """Whether Ctrl-C came during this command, even if a library swallowed the interrupt."""
    return _INTERRUPTED[0]


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came while a library swallowed it: some availability
    checks turn the interrupt into an ImportError and catch that, so the command would run on.
    ``main`` checks after the command; long commands check at their own checkpoints too."""
    if _INTERRUPTED[0]:
        raise KeyboardInterrupt


def load_model(args: argparse.Namespace) -> Tuple[Any, Any]:
    """``(model, tokenizer)`` of ``--model`` (default: the embedded model) in ``--dtype`` (when
    the command has it), announced on stderr, quiet unless ``--verbose``.

    Raises:
        ModelLoadError: one line: what is missing or failed, and where it looked.
    """
    from tokenloom.integrations.hf.models import load_or_default

    path = getattr(args, "model", None)
    verbose = bool(getattr(args, "verbose", False))
    print(f"[tokenloom] loading {'model ' + str(path) if path else 'the embedded SmolLM2-135M-Instruct'} ...", file=sys.stderr)
    try:
        model, tok = load_or_default(path, verbose=verbose, dtype=getattr(args, "dtype", None))
        raise_if_interrupted()  # Ctrl-C that a loader swallowed: stop now, not after the command
        return model, tok
    except KeyboardInterrupt:
        raise
    except (FileNotFoundError, ValueError) as e:
        raise ModelLoadError(f"cannot load the model: {e}") from e
    except Exception as e:  # noqa: BLE001 - third-party loaders raise anything; one line for the user
        where = f"from {path}" if path else "(the embedded model)"
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelLoadError(f"cannot load the model {where}: {type(e).__name__}: {first} (--verbose shows the traceback)") from e


_ESCAPES = {"n": 10, "t": 9, "r": 13, "0": 0, "\\": 92, "'": 39, '"': 34}


def prefix_bytes(text: str, escapes: bool = False) -> bytes:
    """The bytes of a command-line argument: exactly what was typed (``os.fsencode``, so bytes
    that are not UTF-8 survive), and with ``escapes`` the escapes ``\\xNN``, ``\\n``, ``\\t``,
    ``\\r``, ``\\0``, ``\\\\``, ``\\'`` and ``\\"`` decoded.

    Raises:
        ValueError: a bad escape (the message shows where and what is allowed).
    """
    raw = os.fsencode(text)
    if not escapes:
        return raw
    out = bytearray()
    i = 0
    while i < len(raw):
        b = raw[i]
        if b != 92:  # backslash
            out.append(b)
            i += 1
            continue
        nxt = raw[i + 1:i + 2].decode("latin-1")
        if nxt == "x":
            hexs = raw[i + 2:i + 4].decode("latin-1")
            if len(hexs) == 2 and all(c in "0123456789abcdefABCDEF" for c in hexs):
                out.append(int(hexs, 16))
                i += 4
                continue
            raise ValueError(f"bad escape at byte {i} of {text!r}: \\x needs two hex digits (\\x00-\\xff)")
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
            continue
        raise ValueError(
            f"bad escape at byte {i} of {text!r}: expected one of \\xNN \\n \\t \\r \\0 \\\\ \\' \\\" "
            "(or drop --escapes to take the text as typed)"
        )
    return bytes(out)
