"""The ``compress`` command line.

Each subcommand lives in its own module under ``compress/cli/`` and exposes
``add_parser(subparsers)``, which registers it and sets ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code). A command only parses its
arguments, calls one library function and prints; the work lives in the library
(``compress.export``, ``compress.results``, ``compress.pipeline``), which nothing here duplicates. User mistakes
raise ``CliError`` (or ``compress.FormatError``) and are printed as one line, without a
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them. A module that does not exist
# yet is skipped, so the dispatcher never breaks on a partial install.
SUBCOMMANDS = ["export", "inspect", "verify", "export_onnx", "report", "evaluate", "transcribe"]


class CliError(Exception):
    """A user mistake: printed as ``compress: error: <message>``, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from compress import __version__

    parser = argparse.ArgumentParser(
        prog="compress",
        description="Export, inspect, verify, evaluate and run compressed speech models.",
    )
    parser.add_argument("--version", action="version", version=f"compress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"compress.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"compress.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from compress.format.errors import FormatError

    try:
        return int(args.func(args) or 0)
    except (CliError, FormatError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"compress: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("compress: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
