"""``compress report DIR``: collect the ``results.json`` of a run or a multirun into one table."""

from __future__ import annotations

import json
from pathlib import Path

from compress.cli import CliError

COLUMNS = ["run", "recipe", "split", "WER", "CER", "WER packed", "packed bytes", "ratio vs fp32", "sparsity", "train s"]


def collect(root: Path) -> list[dict]:
    """Every ``results.json`` under ``root`` (sorted by path), parsed."""
    if not root.exists():
        raise CliError(f"DIR: no such directory: {root}")
    if not root.is_dir():
        raise CliError(f"DIR: expected a run or multirun directory, got a file: {root}")
    found = []
    for path in sorted(root.rglob("results.json")):
        try:
            data = json.loads(path.read_text())
            data["metrics"], data["recipe"], data["packed_bytes"]  # the keys the table needs
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CliError(f"{path}: not a results.json written by compress-train ({err})") from None
        data["_run"] = str(path.parent.relative_to(root)) or "."
        found.append(data)
    if not found:
        raise CliError(f"DIR: no results.json under {root} (is it a compress-train output directory?)")
    return found


def table(results: list[dict]) -> str:
    """A Markdown table: one row per run and test split."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        for split, m in r["metrics"].items():
            cells = [
                r["_run"], r["recipe"], split,
                f"{100 * m['trained']['wer']:.2f}%", f"{100 * m['trained']['cer']:.2f}%",
                f"{100 * m['packed']['wer']:.2f}%", f"{r['packed_bytes']:,}",
                f"{r['compression_ratio']:.2f}x", f"{100 * r['overall_sparsity']:.1f}%",
                f"{r['train_seconds']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> int:
    results = collect(Path(args.dir))
    text = table(results)
    print(text)
    if args.output:
        from compress.atomic import write_text

        write_text(args.output, text + "\n")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "report",
        help="collect the results of compress-train runs into one table",
        description="Find every results.json under DIR (a compress-train run or a -m multirun "
        "directory) and print one Markdown table: WER/CER of the trained and the packed model "
        "per test split, packed size, ratio to fp32, sparsity and training time.",
    )
    p.add_argument("dir", metavar="DIR", help="a run or multirun output directory")
    p.add_argument("-o", "--output", metavar="FILE", help="also write the table to FILE (Markdown)")
    p.set_defaults(func=run)
