"""The ``results.json`` of ``compress-train`` runs, collected from a run or multirun directory into one table.

A multirun writes one directory per configuration; comparing them means reading each
``results.json`` (written by ``compress.train``) and putting the same figures side by side.

Example:
    >>> print(table(collect("multirun/2025-01-01")))  # doctest: +SKIP
    | run | recipe | split | WER | ...
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from compress.errors import ArgumentError

COLUMNS = ["run", "recipe", "split", "WER", "CER", "WER packed", "packed bytes", "ratio vs fp32", "sparsity", "train s"]


def collect(root: str | os.PathLike) -> list[dict]:
    """Every ``results.json`` under ``root`` (sorted by path), parsed, with ``"_run"`` its directory relative to ``root``.

    Raises:
        ArgumentError: ``root`` is not a directory or holds no ``results.json``.
        ValueError: a ``results.json`` lacks what the table needs (the message names the file).
    """
    root = Path(root)
    if not root.exists():
        raise ArgumentError.must("root", "a run or multirun directory", str(root), "no such directory")
    if not root.is_dir():
        raise ArgumentError.must("root", "a run or multirun directory", str(root), "a file")
    found = []
    for path in sorted(root.rglob("results.json")):
        try:
            data = json.loads(path.read_text())
            data["metrics"], data["recipe"], data["packed_bytes"]  # the keys the table needs
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a results.json written by compress-train ({err})") from None
        data["_run"] = str(path.parent.relative_to(root)) or "."
        found.append(data)
    if not found:
        raise ArgumentError.must("root", "a compress-train run or multirun directory", str(root),
                                 "no results.json under it")
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
