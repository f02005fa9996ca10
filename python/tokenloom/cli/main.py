"""The ``tokenloom`` command line. Each subcommand lives in its own module
``tokenloom.cli.<name>`` exposing ``add_parser(subparsers)``; its parser's ``func`` runs it
(:mod:`tokenloom.cli.common` has the checking argument types, model loading and the rules for
adding a subcommand).

Exit codes: 0 success; 2 bad input (argparse usage errors, and ValueError / TypeError /
IndexError / FileNotFoundError / :class:`~tokenloom.cli.common.ModelLoadError` raised by a
command: one ``tokenloom: error: ...`` line, the traceback with ``--verbose``); 130 Ctrl-C at
any point, also when a library turned the interrupt into another exception (transformers'
lazy imports report an interrupted import as an ImportError) or swallowed it (an availability
check catching that ImportError: the command stops at its next :func:`~tokenloom.cli.common.raise_if_interrupted`).
A process may instead die by SIGINT, which a shell also shows as 130: CPython does that at exit
when the interrupt hit a C extension running Python code while it was imported.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from typing import Any, List, Optional

from tokenloom.cli.common import ModelLoadError, interrupted, note_interrupt, raise_if_interrupted

__all__ = ["SUBCOMMANDS", "Parser", "UsageError", "build_parser", "main"]

#: The subcommands, each a module ``tokenloom.cli.<name>`` with ``add_parser(sub)``.
SUBCOMMANDS = ("generate", "bench", "bytes", "score", "calibrate")


def _on_sigint(signum: int, frame: Any) -> None:
    note_interrupt()
    raise KeyboardInterrupt


class UsageError(Exception):
    """A command line argparse refused (unknown flag, a value its type refused)."""


class Parser(argparse.ArgumentParser):
    """argparse, raising :class:`UsageError` instead of exiting, so :func:`main` reports every
    bad input the same way (``tokenloom: error: ...``, exit code 2)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        where = "" if self.prog == "tokenloom" else self.prog.replace("tokenloom ", "", 1) + ": "
        raise UsageError(f"{where}{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tokenloom",
        description="Exact, fast decoding for LLMs: speculative generation and byte-level probabilities.",
    )
    from tokenloom import __version__

    parser.add_argument("--version", action="version", version=f"tokenloom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tokenloom.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"tokenloom.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``tokenloom ARGS`` (``argv`` default: ``sys.argv[1:]``); returns the exit code."""
    note_interrupt(False)
    try:
        previous = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread: keep Python's handler
        previous = None
    args = None
    try:
        args = build_parser().parse_args(argv)
        code = int(args.func(args) or 0)
        raise_if_interrupted()
        return code
    except KeyboardInterrupt:
        print("tokenloom: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - the one place that turns errors into exit codes
        if interrupted():
            print("tokenloom: interrupted", file=sys.stderr)
            return 130
        if not isinstance(e, (ValueError, TypeError, IndexError, FileNotFoundError, ModelLoadError, UsageError)):
            raise
        if getattr(args, "verbose", False):
            traceback.print_exc()
        print(f"tokenloom: error: {e}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
