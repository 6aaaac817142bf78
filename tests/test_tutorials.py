"""The tutorials, each run as a user runs it (a subprocess, in its ``--short`` mode), with
assertions on what it prints: figures that only appear when each step really worked.

The corpus goes to a temporary ``--data-dir``; ``COMPRESS_DATA_DIR`` points at another
temporary folder that must stay untouched, so a tutorial that ignored ``--data-dir``
(and would write to the user's cache) fails here. ``COMPRESS_FULL=1`` runs them without
``--short``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FULL

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
SHORT = [] if FULL else ["--short"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


def run(script: str, tmp_path: Path, *args: str, timeout: int) -> str:
    """Run ``tutorials/<script>`` and return its stdout; fail with its output otherwise."""
    cache = tmp_path / "default-cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COMPRESS_DATA_DIR=str(cache))
    r = subprocess.run([sys.executable, str(TUTORIALS / script), *SHORT, *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=timeout * (20 if FULL else 1))
    assert r.returncode == 0, f"{script} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert not cache.exists(), f"{script} wrote to the default corpus cache instead of --data-dir"
    return r.stdout


def test_01_callbacks_in_your_loop(tmp_path, data_dir):
    out = run("01_callbacks_in_your_loop.py", tmp_path, "--data-dir", str(data_dir), "--out", str(tmp_path / "tb"),
              timeout=300)
    # The scalar tags both callbacks log, read back from the event file.
    for tag in ["compress/sparsity", "compress/sparsity_target", "compress/grid_distance",
                "compress/quant_penalty", "compress/sparsity/conv.weight"]:
        assert f"\n  {tag}\n" in out, tag
    # The per-epoch table: epoch, step, target, sparsity, distance, distance of kept weights.
    rows = [tuple(map(float, m.groups())) for m in re.finditer(
        r"^ +(\d+) +(\d+) +([\d.]+) +([\d.]+) +([\d.]+) +([\d.]+)$", out, re.M)]
    assert len(rows) == (6 if not FULL else 10), out
    sparsity = [r[3] for r in rows]
    assert sparsity[0] == 0.0 and sparsity[-1] == 0.5
    assert all(b > a for a, b in zip(sparsity, sparsity[1:])), sparsity
    assert all(abs(r[2] - r[3]) < 1e-3 for r in rows), "sparsity should follow its target exactly"
    kept = [r[5] for r in rows]
    # Pulled well below the 0.25 of weights that ignore the grid (about 0.26 without the
    # regularizer in this run), then snapped: exactly 0.
    assert kept[-2] < 0.23 and kept[-2] < kept[1], kept
    assert kept[-1] == 0.0
    assert "sparsity: 0.0% -> 50.0% (rising)" in out
    # Histograms of the first three targets, one per epoch.
    assert re.search(r"compress/weights/conv\.weight: \d+ epochs, last: 12800 weights", out), out
    # The weights themselves: half zeros, integer multiples of their scale.
    after = re.findall(r"zeros +([\d.]+)%  max \|w/scale - round\(w/scale\)\| = ([\d.e+-]+)", out)
    assert len(after) == 6
    assert all(float(z) == 50.0 and float(err) < 1e-4 for z, err in after), after


def test_02_recipes_and_sweeps(tmp_path, data_dir):
    runs = tmp_path / "runs"
    out = run("02_recipes_and_sweeps.py", tmp_path, "--data-dir", str(data_dir), "--out", str(runs), timeout=600)
    assert "final_sparsity: 0.5" in out  # the composed compression group
    # One run: every output, and the packed model scores exactly as the trained one.
    assert "files: model.ckpt, model.psq, results.json, results.md, tb" in out
    assert "- packed file identical in accuracy to the trained model: True" in out
    # The overrides took effect: 4 bits and 75% on every compressed tensor, and the epochs.
    assert f"recipe: ctc_lstm+sparse75_qreg4, epochs: {8 if FULL else 2}" in out
    assert len(re.findall(r"bits 4  sparsity 75\.0%", out)) >= 3
    # The sweep: three runs named by their sparsity, one table row per run and split.
    assert "runs: 0_sparsity0.25, 1_sparsity0.5, 2_sparsity0.75" in out
    rows = re.findall(r"^\| (\d_sparsity[\d.]+) \| (sparsity[\d.]+) \| (\w+) \|.*\| ([\d,]+) \| ([\d.]+)x \| ([\d.]+)% \|",
                      out, re.M)
    assert len(rows) == 6, out
    by_run = {r[0]: (int(r[3].replace(",", "")), float(r[5])) for r in rows}
    # Overall sparsity: the pruned share, plus the rare kept weight that rounds to level 0.
    assert [round(s) for _, s in by_run.values()] == [25, 50, 75], by_run
    sizes = [b for b, _ in by_run.values()]
    assert sizes[0] > sizes[1] > sizes[2], sizes
    assert "packed size falls as sparsity rises" in out
    assert out.count("packed model scores as trained: True") == 3
    table = (runs / "sweep.md").read_text()
    assert table.count("\n") == 8 and "| 2_sparsity0.75 | sparsity0.75 | test_voices |" in table


def test_03_export_decode_verify(tmp_path, data_dir):
    work = tmp_path / "work"
    out = run("03_export_decode_verify.py", tmp_path, "--data-dir", str(data_dir), "--out", str(work), timeout=300)
    assert out.count("(exit code 0)") == 4
    # export + inspect: the weights are 8-bit, 50% sparse; the file is well under fp32.
    assert re.search(r"^head\.weight +\S+ +8 +50\.0% (bitmask|golomb|dense) ", out, re.M), out
    ratio = re.search(r"vs fp32 +\d+ bytes: file is ([\d.]+)x of it", out)
    assert ratio and float(ratio.group(1)) < 0.25, out
    assert "recipe tutorial-03" in out
    # verify: every tensor bit for bit.
    assert re.search(r"^OK: \d+ tensors in .*model\.psq, 0 mismatches$", out, re.M), out
    assert "compress.export.verify(psq, ckpt): 0 mismatches []" in out  # the same check, in Python
    # load: the rebuilt model computes exactly what the trained one does.
    assert "weights identical to the trained model's: True" in out
    assert "max abs diff packed vs trained log-probs: 0.0e+00" in out
    assert "transcripts identical: True" in out
    # ONNX: the CLI's own parity check, then onnxruntime on real test utterances.
    assert re.search(r"parity: max abs difference [\d.e+-]+ \(<= 0.0001\), identical greedy output", out), out
    m = re.search(r"output lengths equal: (\w+), max abs diff ([\d.e+-]+), greedy paths equal: (\w+)", out)
    assert m and m.group(1) == "True" and float(m.group(2)) < 1e-4 and m.group(3) == "True", out
    sizes = {name: int(n.replace(",", "")) for name, n in re.findall(r"^  (model\.\w+) +([\d,]+) bytes$", out, re.M)}
    assert sizes["model.psq"] < sizes["model.onnx"] < sizes["model.ckpt"], sizes
    assert sizes["model.psq"] == (work / "model.psq").stat().st_size


def test_04_the_format_by_hand(tmp_path):
    out = run("04_the_format_by_hand.py", tmp_path, "--out", str(tmp_path / "t04"), timeout=120)
    assert "header_crc matches" in out
    assert "reference.read_header agrees with the field table: True" in out
    assert "reference.read_record agrees with the field table: True" in out
    assert re.search(r"^ +0 +\+0 +u8\[8\] +magic +89 50 53 51 0d 0a 1a 0a ", out, re.M), out
    assert "data_crc matches" in out
    # fc.weight: 4x8, one 4-bit scale per row (max|w| / 7), ten nonzero weights.
    assert "4c. BITMASK" in out
    assert "decode_bitmask -> 10 positions: [0, 3, 5, 10, 14, 16, 17, 20, 30, 31]" in out
    assert "decode_levels -> [7, -4, 2, 7, -5, 2, -5, 7, 7, -3]" in out
    # The second level by hand: the high nibble of the first value byte, two's complement.
    assert re.search(r"level 1: stream bits 4\.\.7 = byte \d+ \(0x[0-9a-f]{2}\) from bit 4: field 0b1100 -> -4", out)
    assert "'fc.weight' by hand == reference.decode_tensor: True; == compress.load (bit for bit): True" in out
    assert "every tensor: reference.decode_file == compress.load: True (3 tensors)" in out
    assert re.search(r"^  \S.* decode_levels\(", out, re.M), "the C port's function list"
    # The same walk on an existing file, through the Golomb-coded tensor.
    out = run("04_the_format_by_hand.py", tmp_path, "--file", str(tmp_path / "t04" / "tiny.psq"),
              "--tensor", "out.weight", timeout=120)
    assert "decode_golomb -> positions [3, 40, 74, 127], gaps [3, 36, 33, 52]" in out
    assert "'out.weight' by hand == reference.decode_tensor: True; == compress.load (bit for bit): True" in out


def test_04_walks_block_encoding_and_16bit_scales(tmp_path):
    """The by-hand walk on the golden file of the newer features: a BLOCK tensor with
    float16 scales, a ragged BLOCK one, and bfloat16 scales."""
    golden = ROOT / "tests" / "data" / "features.psq"
    for tensor in ("blk.weight", "narrow.weight", "tiny.weight"):
        out = run("04_the_format_by_hand.py", tmp_path, "--file", str(golden), "--tensor", tensor, timeout=120)
        assert f"'{tensor}' by hand == reference.decode_tensor: True; == compress.load (bit for bit): True" in out
    assert "4c. BLOCK of 16" in run("04_the_format_by_hand.py", tmp_path, "--file", str(golden), "--tensor",
                                    "narrow.weight", timeout=120)
