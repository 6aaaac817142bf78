"""Statistics over seeds and the targets of the accuracy benchmark (both protocols).

A row of a training (``compress.bench.training.work``) is one packed file's figures for
one seed; ``aggregate`` folds the rows of one key into mean, sample standard deviation
and count; a row *beats* another only when its mean WER is lower by more than the larger
of the two standard deviations (one seed: by any amount, and the tables say one seed).

Example:
    >>> _stats([1.0, 2.0, 3.0])
    {'mean': 2.0, 'std': 1.0, 'n': 3}
"""

from __future__ import annotations

import math

from compress.bench.baselines import label

SPLIT = "test_voices"  # the split the targets are computed on (voices never heard in training)
SPLITS = ("test_voices", "test_sentences")


def _stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per row key: WER/CER mean, sample standard deviation and count over seeds (in %)."""
    by_key: dict[str, list[dict]] = {}
    for r in rows:
        by_key.setdefault(r["key"], []).append(r)
    out = []
    for key, rs in by_key.items():
        entry = {"key": key, "label": label(rs[0]), "method": rs[0]["method"], "group": rs[0]["setting"],
                 "seeds": sorted(r.get("seed", 0) for r in rs), "bytes": round(sum(r["bytes"] for r in rs) / len(rs)),
                 "sparsity": sum(r["decoded_sparsity"] for r in rs) / len(rs)}
        for split in SPLITS:
            entry[f"wer_{split}"] = _stats([100 * r["metrics"][split]["wer"] for r in rs])
        entry["wer_valid"] = _stats([100 * r["valid"]["wer"] for r in rs])
        entry["per_seed"] = {str(r.get("seed", 0)): {s: 100 * r["metrics"][s]["wer"] for s in SPLITS} for r in rs}
        out.append(entry)
    return out


def beats(a: dict, b: dict, split: str = SPLIT) -> bool:
    """``a`` beats ``b``: its mean WER is lower by more than the larger of the two standard deviations."""
    x, y = a[f"wer_{split}"], b[f"wer_{split}"]
    return x["mean"] < y["mean"] - max(x["std"], y["std"])


def check_targets(entries: list[dict], split: str = SPLIT) -> list[dict]:
    """The targets, from ``aggregate``'s entries (means over seeds where there are several).

    * loss: ours at 75% + 4 bits within 1.0 WER point of fp32, at 75% + 6 bits and 50% +
      8 bits within 0.5; fp32 is averaged over the seeds the row has.
    * defaults: the regularizer alone with its defaults (``qreg<b>``) no worse than PTQ
      at the same bits (``ptq<b>``).
    * beat: ours at 75% + 4 bits against each baseline of the same size (``beats``).
    """
    by = {e["key"]: e for e in entries}
    out = []

    def wer(key):
        return by[key][f"wer_{split}"]["mean"]

    def fp32_on(key):  # fp32 on the seeds the row has: a one-seed row is compared with its own seed
        seeds = by[key]["per_seed"]
        return sum(by["fp32"]["per_seed"][s][split] for s in seeds) / len(seeds)

    if "fp32" not in by:
        return out
    for key, limit in (("sparse75_qreg4", 1.0), ("sparse75_qreg6", 0.5), ("sparse50_qreg8", 0.5)):
        if key in by:
            loss = wer(key) - fp32_on(key)
            out.append({"target": f"{by[key]['label']} within {limit:g} WER points of fp32 (same seeds)", "kind": "loss",
                        "value": loss, "limit": limit, "pass": loss <= limit + 1e-9})
    for bits in (8, 6, 5, 4, 3, 2):
        ours, ptq = by.get(f"qreg{bits}"), by.get(f"ptq{bits}")
        if ours and ptq:
            margin = wer(ours["key"]) - wer(ptq["key"])
            out.append({"target": f"{ours['label']} (its defaults, no sparsity) no worse than {ptq['label']}",
                        "kind": "defaults", "value": margin, "limit": 0.0, "pass": margin <= 1e-9})
    if "sparse75_qreg4" in by:
        ours = by["sparse75_qreg4"]
        for key in ("oneshot75_ptq4", "lightning75_ptq4", "sparse75_ptq4", "sparse75_fq4"):
            if key in by:
                margin = wer("sparse75_qreg4") - wer(key)
                out.append({"target": f"{ours['label']} beats {by[key]['label']}", "kind": "beat",
                            "value": margin, "limit": -max(ours[f"wer_{split}"]["std"], by[key][f"wer_{split}"]["std"]),
                            "pass": beats(ours, by[key], split)})
    return out


def cell(s: dict) -> str:
    return f"{s['mean']:.2f} ± {s['std']:.2f}" if s["n"] > 1 else f"{s['mean']:.2f}"
