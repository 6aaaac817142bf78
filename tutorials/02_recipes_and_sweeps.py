"""Tutorial 02: Hydra recipes, overrides, a sparsity sweep and the results table.

``compress-train`` is a Hydra application: ``recipes/train.yaml`` composes a data module,
a model, a compression setting (the callbacks of tutorial 01) and a trainer; any value
can be overridden on the command line, and ``-m`` sweeps over several values. Each run
trains, exports the packed file, re-tests the model rebuilt from it, and writes
``results.json``; ``compress report`` collects those into one table.

This tutorial, in order:

1. lists the compression recipes and prints one composed config (``--cfg job``);
2. runs the ``tiny`` experiment once (the default model and compression);
3. runs it with overrides: another compression group and another epoch count;
4. runs a multirun that sweeps the final sparsity over 25%, 50% and 75%;
5. collects the sweep into one table with ``compress report``.

Run it:

    python tutorials/02_recipes_and_sweeps.py --short --data-dir /tmp/corpus --out /tmp/t02

``--short`` keeps the ``tiny`` experiment as it is (16 training utterances, 1 or 2 epochs:
the pipeline runs end to end in seconds, but the models learn nothing, so WER is 100%);
without it, every run uses 600 utterances and 6 to 8 epochs (about two minutes in all on
one thread; the tiny model still transcribes next to nothing: for a model that does, run
the recipes without ``experiment=tiny``). ``--data-dir`` is the corpus cache root, passed
to the runs as ``data.data_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="tiny runs (seconds each)")
    p.add_argument("--data-dir", default=None, help="corpus cache root (default: $COMPRESS_DATA_DIR "
                   "or ~/.cache/compress/corpus)")
    p.add_argument("--out", default=None, help="where the runs go (default: a new temporary directory)")
    return p.parse_args(argv)


def sh(program: str, args: list[str], show: bool = False) -> str:
    """Run ``program`` (``compress-train`` or ``compress``) and return its stdout.

    The commands are printed as you would type them. They are run as
    ``python -m compress.train`` / ``python -m compress``, the same entry points as the
    console scripts, so the tutorial works whether or not the environment's ``bin`` is on
    PATH.
    """
    module = {"compress-train": "compress.train", "compress": "compress"}[program]
    print("$ " + " ".join([program] + [f"'{a}'" if "$" in a else a for a in args]))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-2000:] + r.stderr[-4000:])
        sys.exit(f"{program} failed with exit code {r.returncode}")
    if show:
        print(r.stdout.rstrip())
    return r.stdout


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="compress-t02-")).resolve()
    # Every run shares these: the small experiment, and the corpus cache. Without
    # --short the corpus grows and training runs longer.
    common = ["experiment=tiny"]
    if args.data_dir:
        common.append(f"data.data_dir={Path(args.data_dir).resolve()}")
    if not args.short:
        common += ["data.corpus.num_train=600", "data.corpus.num_valid=50", "data.corpus.num_test_voices=100",
                   "data.corpus.num_test_sentences=100"]
    # A key may be given once per command line, so the epoch count is added per command.
    epochs = [] if args.short else ["trainer.max_epochs=6"]

    # -----------------------------------------------------------------------------------
    # Step 1. The recipes.
    #
    # recipes/compression/ holds one file per compression setting; each names the
    # callbacks to build (`_target_`) and their arguments. `--cfg job --package
    # compression` prints the composed value of that group without running anything.
    # -----------------------------------------------------------------------------------
    print("== step 1: the compression recipes")
    for path in sorted((RECIPES / "compression").glob("*.yaml")):
        first = path.read_text().splitlines()[0].lstrip("# ")
        print(f"  compression={path.stem:<15} {first}")
    print()
    sh("compress-train", ["experiment=tiny", "--cfg", "job", "--package", "compression"], show=True)

    # -----------------------------------------------------------------------------------
    # Step 2. One run.
    #
    # `hydra.run.dir` says where the run writes; by default it is
    # outputs/<date>/<time>. The run trains with the default compression
    # (sparse50_qreg8: 50% sparsity, int8 regularization), packs model.psq, rebuilds the
    # model from the packed file and tests both. results.md is its summary.
    # -----------------------------------------------------------------------------------
    print("\n== step 2: one run")
    run_dir = out / "run"
    sh("compress-train", common + epochs + [f"hydra.run.dir={run_dir}"])
    print(f"files: {', '.join(sorted(p.name for p in run_dir.iterdir() if not p.name.startswith('.')))}")
    print((run_dir / "results.md").read_text().rstrip())

    # -----------------------------------------------------------------------------------
    # Step 3. Overrides.
    #
    # `compression=sparse75_qreg4` swaps the whole group (75% sparsity, a 4-bit grid with
    # MSE clipping); `trainer.max_epochs=...` changes one value. With more than one
    # epoch the cubic schedule has room: epoch 0 prunes nothing, the last reaches 75%.
    # -----------------------------------------------------------------------------------
    print("\n== step 3: overrides")
    over_dir = out / "override"
    sh("compress-train", common + ["compression=sparse75_qreg4", f"trainer.max_epochs={2 if args.short else 8}",
                                   f"hydra.run.dir={over_dir}"])
    results = json.loads((over_dir / "results.json").read_text())
    print(f"recipe: {results['recipe']}, epochs: {results['epochs']}")
    for row in results["layers"]:
        print(f"  {row['name']:<28} bits {row['bits']}  sparsity {100 * row['sparsity']:.1f}%")
    print(f"packed: {results['packed_bytes']:,} bytes, {results['compression_ratio']:.2f}x smaller than fp32")

    # -----------------------------------------------------------------------------------
    # Step 4. A sweep.
    #
    # `-m` (multirun) runs once per value of a comma-separated override, one after the
    # other in this process. `recipe=...` names each run by its sparsity (the name goes
    # into the packed file's metadata and the table), and `hydra.sweep.subdir` names its
    # folder. Quote `${...}` so that the shell leaves it to Hydra.
    # -----------------------------------------------------------------------------------
    print("\n== step 4: a sweep over sparsity")
    sweep_dir = out / "sweep"
    sparsity = "compression.gradual_sparsifier.final_sparsity"
    sh("compress-train", ["-m"] + common + epochs + [
        f"{sparsity}=0.25,0.5,0.75",
        "recipe=sparsity${" + sparsity + "}",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}_sparsity${" + sparsity + "}",
    ])
    print(f"runs: {', '.join(sorted(p.parent.name for p in sweep_dir.rglob('results.json')))}")

    # -----------------------------------------------------------------------------------
    # Step 5. The table.
    #
    # `compress report DIR` finds every results.json under DIR (a run, a sweep, or any
    # folder above them) and prints one Markdown row per run and test split; `-o` also
    # writes it to a file.
    # -----------------------------------------------------------------------------------
    print("\n== step 5: the table")
    table = out / "sweep.md"
    sh("compress", ["report", str(sweep_dir), "-o", str(table)], show=True)

    # The packed file shrinks as sparsity grows: fewer levels to store, and an index
    # (bitmask or Golomb-coded gaps) that costs less than the values it saves.
    sizes = {}
    for path in sorted(sweep_dir.rglob("results.json")):
        r = json.loads(path.read_text())
        sizes[r["recipe"]] = (r["packed_bytes"], r["overall_sparsity"], r["packed_matches_trained"])
    print()
    for recipe, (size, s, same) in sizes.items():
        print(f"{recipe}: sparsity {100 * s:.1f}%, packed {size:,} bytes, packed model scores as trained: {same}")
    shrinking = all(b[0] < a[0] for a, b in zip(list(sizes.values()), list(sizes.values())[1:]))
    print(f"packed size {'falls' if shrinking else 'does NOT fall'} as sparsity rises")
    print(f"\noutputs: {out}")


if __name__ == "__main__":
    main()
