"""The ``tokenloom`` command line. Each subcommand lives in its own module
``tokenloom.cli.<name>`` exposing ``add_parser(subparsers)``; its parser's ``func`` runs it."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

__all__ = ["main"]

_SUBCOMMANDS = ("generate", "bench", "bytes", "score")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenloom",
        description="Exact, fast decoding for LLMs: speculative generation and byte-level probabilities.",
    )
    from tokenloom import __version__

    parser.add_argument("--version", action="version", version=f"tokenloom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _SUBCOMMANDS:
        try:
            module = importlib.import_module(f"tokenloom.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"tokenloom.cli.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, IndexError, TypeError) as e:
        print(f"tokenloom: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
