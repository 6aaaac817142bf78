"""JSONL manifests, WAV reading, the tokenizer and the WER/CER helpers."""

import json
import wave

import numpy as np
import pytest
import torch
from error_rates import cer, wer

from compress.data import templates
from compress.data.corpus import write_wav
from compress.data.manifest import ManifestDataset, read_manifest, read_wav
from compress.data.text import BLANK, VOCAB, VOCAB_SIZE, ctc_collapse, decode, encode


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_vocabulary_layout():
    assert VOCAB_SIZE == 29 and BLANK == 0 and VOCAB[1] == " " and VOCAB[2] == "'"
    assert "".join(VOCAB[3:]) == "abcdefghijklmnopqrstuvwxyz"


def test_encode_decode_roundtrip_on_every_sentence():
    for s in templates.all_sentences():
        ids = encode(s)
        assert BLANK not in ids and decode(ids) == s
    assert decode(encode("DON'T  Stop")) == "don't stop"


def test_encode_rejects_unknown_characters():
    with pytest.raises(ValueError, match=r"'7' at position 5"):
        encode("call 7")
    with pytest.raises(ValueError, match="ids"):
        decode([29])


def test_ctc_collapse_merges_repeats_then_drops_blanks():
    a, b = encode("a")[0], encode("b")[0]
    assert ctc_collapse([0, a, a, 0, a, b, b, 0]) == "aab"
    assert ctc_collapse([0, 0]) == ""


def _levenshtein(a, b):
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[-1]


def test_wer_cer_match_levenshtein_oracle():
    rng = np.random.default_rng(0)
    sentences = list(templates.all_sentences())
    refs = [sentences[i] for i in rng.integers(len(sentences), size=20)]
    preds = []
    for r in refs:  # corrupt some words
        words = r.split()
        k = int(rng.integers(len(words)))
        words[k] = "x" if rng.random() < 0.5 else ""
        preds.append(" ".join(w for w in words if w))
    w_err = sum(_levenshtein(p.split(), r.split()) for p, r in zip(preds, refs))
    assert wer(preds, refs) == pytest.approx(w_err / sum(len(r.split()) for r in refs), rel=1e-6)
    c_err = sum(_levenshtein(p, r) for p, r in zip(preds, refs))
    assert cer(preds, refs) == pytest.approx(c_err / sum(len(r) for r in refs), rel=1e-6)
    assert wer(refs, refs) == 0.0
    with pytest.raises(ValueError, match="preds"):
        wer(["a"], ["a", "b"])
    with pytest.raises(TypeError, match="refs"):
        cer(["a"], "a")


def test_read_wav_formats(tmp_path):
    x = (np.sin(np.arange(8000) / 5) * 20000).astype(np.int16)
    write_wav(tmp_path / "a.wav", x)
    y = read_wav(tmp_path / "a.wav")
    assert torch.allclose(y, torch.from_numpy(x.astype(np.float32) / 32768))
    # 8 kHz stereo 8-bit: mixed to mono and resampled to 16 kHz.
    with wave.open(str(tmp_path / "b.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(1)
        f.setframerate(8000)
        f.writeframes(np.full((800, 2), 192, np.uint8).tobytes())
    z = read_wav(tmp_path / "b.wav")
    assert z.shape == (1600,)
    assert float(z[400:1200].mean()) == pytest.approx(0.5, abs=1e-3)


def test_dataset_reads_relative_and_absolute_paths(tmp_path):
    (tmp_path / "wavs").mkdir()
    write_wav(tmp_path / "wavs" / "1.wav", np.zeros(1600, np.int16))
    write_wav(tmp_path / "2.wav", np.ones(3200, np.int16))
    m = _write(tmp_path / "m.jsonl", [
        json.dumps({"audio": "wavs/1.wav", "text": "CALL MOM", "speaker": "x"}),
        "",
        json.dumps({"audio": str(tmp_path / "2.wav"), "text": "play jazz"}),
    ])
    ds = ManifestDataset(m)
    assert len(ds) == 2
    a, b = ds[0], ds[1]
    assert a["text"] == "call mom" and a["audio"].shape == (1600,) and a["meta"]["speaker"] == "x"
    assert decode(a["tokens"].tolist()) == "call mom"
    assert b["audio"].shape == (3200,) and b["meta"]["line"] == 3


@pytest.mark.parametrize("line, match", [
    ("{not json", r"m.jsonl:2: expected a JSON object, found invalid JSON"),
    ("[1, 2]", r"m.jsonl:2: expected a JSON object, found list"),
    (json.dumps({"text": "call mom"}), r"m.jsonl:2: missing required field 'audio'"),
    (json.dumps({"audio": "a.wav"}), r"m.jsonl:2: missing required field 'text'"),
    (json.dumps({"audio": "a.wav", "text": 5}), r"m.jsonl:2: field 'text' must be a string, found int"),
    (json.dumps({"audio": "a.wav", "text": "call 911"}), r"m.jsonl:2: field 'text'.*'9'"),
    (json.dumps({"audio": "", "text": "hi"}), r"m.jsonl:2: field 'audio' is empty"),
])
def test_bad_manifest_lines_name_line_and_field(tmp_path, line, match):
    write_wav(tmp_path / "a.wav", np.zeros(10, np.int16))
    m = _write(tmp_path / "m.jsonl", [json.dumps({"audio": "a.wav", "text": "ok"}), line])
    with pytest.raises(ValueError, match=match):
        read_manifest(m)


def test_missing_audio_and_empty_manifest(tmp_path):
    m = _write(tmp_path / "m.jsonl", [json.dumps({"audio": "nope.wav", "text": "hi"})])
    with pytest.raises(ValueError, match=r"m.jsonl:1: field 'audio': file .*nope.wav does not exist"):
        ManifestDataset(m)
    assert len(ManifestDataset(m, check_files=False)) == 1
    with pytest.raises(ValueError, match="no entries"):
        read_manifest(_write(tmp_path / "e.jsonl", [""]))
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "missing.jsonl")
