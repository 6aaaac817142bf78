"""The accuracy sections' picture: WER against packed bytes, one point per row (PNG).

matplotlib is optional: without it no picture is written and ``plot`` returns False.
"""

from __future__ import annotations

import io
from pathlib import Path

COLORS = {"fp32": "black", "ptq": "tab:gray", "oneshot": "tab:brown", "lightning": "tab:blue",
          "sparse": "tab:cyan", "fakequant": "tab:orange", "ours": "tab:red"}


def plot(entries: list[dict], path: Path, title: str, split: str = "test_voices") -> bool:
    """Write ``path``: one point per entry at (``bytes``, mean WER), the seed spread as error bars.

    Args:
        entries: ``compress.bench.seeds.aggregate`` entries (``key``, ``method``,
            ``group``, ``bytes``, ``wer_<split>`` with ``mean``/``std``/``n``); entries of
            group "variants" are left out.
        path: the PNG to write (atomically).
        title: the picture's title.
        split: the split on the y axis.

    Returns:
        True if the picture was written, False if matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from compress.atomic import write_bytes

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    for e in entries:
        if e["group"] == "variants":
            continue
        s = e[f"wer_{split}"]
        ax.errorbar(e["bytes"], s["mean"], yerr=s["std"] if s["n"] > 1 else None, fmt="o", capsize=3,
                    color=COLORS.get(e["method"], "tab:green"))
        ax.annotate(e["key"], (e["bytes"], s["mean"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("packed file bytes (log scale)")
    ax.set_ylabel(f"WER {split} (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, [buf.getvalue()])  # the project's atomic writer (temp file, fsync, rename)
    return True
