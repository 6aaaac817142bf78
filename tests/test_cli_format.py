"""`compress export / inspect / verify`, through compress.cli.main and once through the console script."""

import os
import subprocess
from pathlib import Path

import pytest
import torch
from test_pack import checkpoint

import compress
from compress.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "compress"


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.save(checkpoint(), tmp_path / "run.ckpt")
    return tmp_path / "run.ckpt"


def test_export_inspect_verify(ckpt, tmp_path, capsys):
    out = tmp_path / "model.psq"
    assert main(["export", str(ckpt), "-o", str(out), "--recipe", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "model.0.weight" in text and f"wrote {out}" in text
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "recipe tiny" in text and "vs fp32" in text and "dense int8" in text and "entropy bound" in text
    assert "model.1.num_batches_tracked" in text
    assert main(["verify", str(out), str(ckpt)]) == 0
    assert "OK: 9 tensors" in capsys.readouterr().out


def test_default_output_and_fp16(ckpt, capsys):
    assert main(["export", str(ckpt), "--fp16", "-q"]) == 0
    assert capsys.readouterr().out == ""
    path = ckpt.with_suffix(".psq")
    assert compress.load(path)["model.0.bias"].dtype == torch.float32
    assert main(["verify", str(path), str(ckpt)]) == 0


def test_verify_fails_on_a_different_checkpoint(ckpt, tmp_path, capsys):
    out = tmp_path / "model.psq"
    main(["export", str(ckpt), "-o", str(out), "-q"])
    other = checkpoint()
    other["state_dict"]["model.0.bias"] += 1
    torch.save(other, tmp_path / "other.ckpt")
    assert main(["verify", str(out), str(tmp_path / "other.ckpt")]) == 1
    text = capsys.readouterr().out
    assert "MISMATCH model.0.bias" in text and "FAIL" in text


def test_user_errors_are_one_line(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.psq"
    bad.write_bytes(b"not a psq file at all, just text" * 3)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("compress: error: magic:") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["export", str(ckpt), "--bits", "4", "-o", str(tmp_path / "x.psq")]) == 2
    assert "bits, scales and targets come from it" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt")]) == 2
    assert "not found" in capsys.readouterr().err
    sparse_only = checkpoint(regularizer=False)
    torch.save(sparse_only, tmp_path / "s.ckpt")
    assert main(["export", str(tmp_path / "s.ckpt"), "-q"]) == 2
    assert "--bits" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "s.ckpt"), "-q", "--bits", "6"]) == 0
    assert main(["verify", str(tmp_path / "s.psq"), str(tmp_path / "s.ckpt"), "--bits", "6"]) == 0


@pytest.mark.parametrize("command", ["export", "inspect", "verify"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: compress " + command in capsys.readouterr().out


def test_console_script(ckpt, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "m.psq"
    run = subprocess.run([str(SCRIPT), "export", str(ckpt), "-o", str(out)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "entropy bound" in run.stdout
    out.write_bytes(out.read_bytes()[:-3])  # truncated: a one-line error, exit code 2
    run = subprocess.run([str(SCRIPT), "verify", str(out), str(ckpt)], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and run.stderr.startswith("compress: error: file_len") and "Traceback" not in run.stderr


def test_scales32_keeps_float32_scales_and_the_same_weights(ckpt, tmp_path):
    from compress.decoder import reference as ref
    from compress.format import layout as L

    files = {}
    for name, extra in (("16.psq", []), ("32.psq", ["--scales32"])):
        assert main(["export", str(ckpt), "-o", str(tmp_path / name), "-q", *extra]) == 0
        buf = (tmp_path / name).read_bytes()
        files[name] = {r.name: r.store for r in ref.read_table(buf, ref.read_header(buf)) if r.kind == L.QUANT}
    assert set(files["32.psq"].values()) == {L.QUANT_STORE}
    assert set(files["16.psq"].values()) - {L.QUANT_STORE}  # the callbacks' bfloat16 grid: 16 bits
    a, b = compress.load(tmp_path / "16.psq"), compress.load(tmp_path / "32.psq")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "16.psq").stat().st_size < (tmp_path / "32.psq").stat().st_size
