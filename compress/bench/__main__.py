"""Dispatcher of ``python -m compress.bench [SECTION ...] [--threads N] [--out DIR]``.

With no section named, every registered section runs. Nothing is written unless
``--out DIR`` is given; then each section's figures go to ``DIR/<section>.json``, and
``DIR/results.md`` collects what every section printed in this one run, with the
command, the machine and the wall time (all written atomically). ``make bench`` uses
``--out bench``.

Example:
    python -m compress.bench overhead --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import platform
import sys
import time

from compress.atomic import write_text

# Registered sections, in run order: each is a module compress/bench/<name>.py exposing
# run(args) -> dict and optionally add_arguments(parser). Add a section with one entry.
SECTIONS = ["overhead", "format", "kernels", "engine", "accuracy", "structure", "finetune"]


def _load(name: str):
    return importlib.import_module(f"compress.bench.{name}")


def _write_json(path: str, data: dict) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


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
    command = f"python -m compress.bench {' '.join(argv if argv is not None else sys.argv[1:])}"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
               f"python {platform.python_version()}, torch.set_num_threads({args.threads})")
    path = os.path.join(args.out, "results.md") if args.out else None
    # Sections not run this time keep their block (with its own command and date) from
    # the file: a run of one section never drops the figures of the others.
    blocks = split_sections(open(path).read()) if path and os.path.isfile(path) else {}
    for name in args.sections or SECTIONS:
        print(f"== {name} ==")
        t0 = time.perf_counter()
        printed = io.StringIO()
        with contextlib.redirect_stdout(_Tee(sys.stdout, printed)):
            result = _load(name).run(args)
        result.setdefault("threads", torch.get_num_threads())
        blocks[name] = "\n".join([
            f"## {name} ({time.perf_counter() - t0:.0f} s)", "",
            f"- command: `{command}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine}", "",
            "```", printed.getvalue().rstrip(), "```"])
        if args.out:
            _write_json(os.path.join(args.out, f"{name}.json"), result)
            report = ["# Benchmark results", "",
                      "Each section gives the command, date and machine of the run that produced it.", ""]
            report += ["\n\n".join(blocks[n].rstrip("\n") for n in SECTIONS if n in blocks)]
            write_text(path, "\n".join(report) + "\n")
    return 0


def split_sections(text: str) -> dict[str, str]:
    """``{section: its block}`` of a results.md: from its ``## name (N s)`` line to the next one.

    Lines inside code fences are never headings (a section's printed Markdown has its own).
    """
    blocks: dict[str, list[str]] = {}
    current, fenced = None, False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        head = line[3:].split(" (", 1)[0] if line.startswith("## ") and not fenced else None
        if head in SECTIONS:
            current = head
            blocks[current] = []
        if current is not None:
            blocks[current].append(line)
    return {k: "\n".join(v).rstrip() + "\n" for k, v in blocks.items()}


class _Tee(io.TextIOBase):
    """Write to the terminal and keep a copy for results.md."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, s):
        for stream in self.streams:
            stream.write(s)
        return len(s)

    def flush(self):
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main())
