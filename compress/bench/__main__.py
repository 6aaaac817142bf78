"""Dispatcher of ``python -m compress.bench [SECTION ...] [--threads N] [--out DIR]``.

With no section named, every registered section runs. Nothing is written unless
``--out DIR`` is given; then each section's figures go to ``DIR/<section>.json``
(written atomically).

Example:
    python -m compress.bench overhead --repeats 3
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile

# Registered sections, in run order: each is a module compress/bench/<name>.py exposing
# run(args) -> dict and optionally add_arguments(parser). Add a section with one entry.
SECTIONS = ["overhead", "format", "accuracy"]


def _load(name: str):
    return importlib.import_module(f"compress.bench.{name}")


def _write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compress.bench", description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"sections to run (default: all of {SECTIONS})")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: the CI machines)")
    parser.add_argument("--out", metavar="DIR", help="write each section's figures to DIR/<section>.json")
    for name in SECTIONS:
        module = _load(name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(name))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown:
        print(f"compress.bench: error: unknown section(s) {unknown}; expected some of {SECTIONS}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print(f"compress.bench: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.out and not os.path.isdir(args.out):
        print(f"compress.bench: error: --out must be an existing directory, got {args.out!r}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    print(f"threads: torch.set_num_threads({args.threads}) -> {torch.get_num_threads()}")
    for name in args.sections or SECTIONS:
        print(f"== {name} ==")
        result = _load(name).run(args)
        result.setdefault("threads", torch.get_num_threads())
        if args.out:
            _write_json(os.path.join(args.out, f"{name}.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
