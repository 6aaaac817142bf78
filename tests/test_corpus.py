"""The built-in eSpeak corpus: synthesis, templates, splits, reproducibility and the cache."""

import json
import wave

import numpy as np
import pytest

from compress.data import corpus as corpus_mod
from compress.data import templates
from compress.data.corpus import CorpusConfig, ensure_corpus, plan, verify
from compress.data.espeak import SAMPLE_RATE, list_variants, synthesize

TINY = dict(num_train=6, num_valid=2, num_test_voices=3, num_test_sentences=3)


def test_synthesize_returns_speech_like_int16():
    a = synthesize("turn on the kitchen lights", "en-us+f3", 175, 50)
    assert a.dtype == np.int16 and a.ndim == 1
    assert 0.5 < len(a) / SAMPLE_RATE < 4.0  # a five-word command
    assert np.abs(a.astype(np.float32)).max() > 1000  # not silence


def test_synthesize_depends_on_voice_rate_and_pitch():
    base = synthesize("call mom", "en-us+m3", 175, 50)
    slow = synthesize("call mom", "en-us+m3", 100, 50)
    assert len(slow) > 1.3 * len(base)
    other = synthesize("call mom", "en-us+f2", 175, 50)
    n = min(len(base), len(other))
    assert not np.array_equal(base[:n], other[:n])
    # libespeak-ng carries a little state between calls: repeats agree to a few samples.
    assert abs(len(synthesize("call mom", "en-us+m3", 175, 50)) - len(base)) < 100


def test_synthesize_rejects_bad_input():
    with pytest.raises(ValueError, match="voice"):
        synthesize("hello", "no-such-voice")
    with pytest.raises(ValueError, match="rate"):
        synthesize("hello", "en-us", rate=10)
    with pytest.raises(ValueError, match="text"):
        synthesize("   ")


def test_default_variants_are_bundled():
    bundled = set(list_variants())
    cfg = CorpusConfig()
    assert set(cfg.train_variants) <= bundled and set(cfg.test_variants) <= bundled


def test_templates_vocabulary_and_expansion():
    assert 80 <= len(templates.vocabulary()) <= 150
    sentences = templates.all_sentences()
    assert len(sentences) == len(set(sentences)) > 500
    for s in ["turn on the kitchen lights", "set a timer for ten minutes", "call mom",
              "play jazz in the living room"]:
        assert s in sentences
    with pytest.raises(ValueError, match="slots"):
        templates.expand("call {who}", {})


def test_config_validation():
    with pytest.raises(ValueError, match="num_train"):
        CorpusConfig(num_train=-1)
    with pytest.raises(ValueError, match="test_variants"):
        CorpusConfig(train_variants=["f1", "m1"], test_variants=["m1"])
    with pytest.raises(ValueError, match="rate"):
        CorpusConfig(rate=(200, 100))
    # Lists (as Hydra passes them) hash like tuples.
    assert CorpusConfig(accents=["en-us"]).digest() == CorpusConfig(accents=("en-us",)).digest()
    assert CorpusConfig(seed=1).digest() != CorpusConfig(seed=2).digest()


def test_plan_splits_hold_out_voices_and_sentences():
    cfg = CorpusConfig(num_train=3000, num_valid=100, num_test_voices=300, num_test_sentences=300)
    items = plan(cfg)
    by = {s: [it for it in items if it["split"] == s] for s in corpus_mod.SPLITS}
    assert {s: len(v) for s, v in by.items()} == cfg.counts()
    train_text = {it["text"] for it in by["train"]}
    assert not train_text & {it["text"] for it in by["test_sentences"]}
    variant = lambda it: it["voice"].split("+")[1]  # noqa: E731
    train_voices = {variant(it) for it in by["train"]}
    assert not train_voices & {variant(it) for it in by["test_voices"]}
    assert {variant(it) for it in by["test_sentences"]} <= set(cfg.train_variants)
    # Every word of a held-out sentence is trained on.
    train_words = {w for t in train_text for w in t.split()}
    assert {w for it in by["test_sentences"] for w in it["text"].split()} <= train_words
    lo, hi = cfg.rate
    assert all(lo <= it["rate"] <= hi for it in items)
    assert plan(cfg) == items  # seeded
    assert plan(CorpusConfig(**{**TINY, "seed": 1})) != plan(CorpusConfig(**TINY))


def _read(folder, row):
    with wave.open(str(folder / row["audio"]), "rb") as f:
        assert (f.getframerate(), f.getsampwidth(), f.getnchannels()) == (16000, 2, 1)
        return f.readframes(f.getnframes())


def test_generate_manifests_and_audio(tmp_path):
    cfg = CorpusConfig(**TINY)
    paths = ensure_corpus(cfg, root=tmp_path, progress=False)
    assert set(paths) == set(corpus_mod.SPLITS)
    folder = tmp_path / cfg.digest()
    assert (folder / ".complete").is_file()
    for split, path in paths.items():
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == cfg.counts()[split]
        for r in rows:
            assert {"audio", "text", "voice", "rate", "pitch", "split", "duration", "sample_rate"} <= set(r)
            assert r["split"] == split and r["sample_rate"] == 16000
            assert not r["audio"].startswith("/")  # relative to the manifest
            raw = _read(folder, r)
            assert len(raw) == 2 * r["num_samples"]
            assert r["duration"] == pytest.approx(r["num_samples"] / 16000)
    # Same config in another root: identical bytes (seeded synthesis, noise and gain).
    other = ensure_corpus(cfg, root=tmp_path / "again", progress=False)
    row = json.loads(paths["train"].read_text().splitlines()[0])
    assert _read(folder, row) == _read(other["train"].parent, row)


def test_parallel_generation_matches_serial(tmp_path, monkeypatch):
    # Small blocks so that two workers really split the plan (3 blocks of 3).
    monkeypatch.setattr(corpus_mod, "BLOCK", 3)
    cfg = CorpusConfig(num_train=4, num_valid=1, num_test_voices=2, num_test_sentences=2)
    a = ensure_corpus(cfg, root=tmp_path / "a", progress=False, workers=1)
    b = ensure_corpus(cfg, root=tmp_path / "b", progress=False, workers=2)
    for split in a:
        assert a[split].read_text() == b[split].read_text()
        for line in a[split].read_text().splitlines():
            r = json.loads(line)
            assert (a[split].parent / r["audio"]).read_bytes() == (b[split].parent / r["audio"]).read_bytes()


def test_cache_is_reused_and_damage_is_regenerated(tmp_path, monkeypatch):
    cfg = CorpusConfig(**TINY)
    paths = ensure_corpus(cfg, root=tmp_path, progress=False)
    folder = tmp_path / cfg.digest()
    calls = []
    real = corpus_mod.generate
    monkeypatch.setattr(corpus_mod, "generate", lambda *a, **k: (calls.append(1), real(*a, **k)))
    ensure_corpus(cfg, root=tmp_path, progress=False)
    assert calls == []  # cached: nothing synthesized

    row = json.loads(paths["valid"].read_text().splitlines()[0])
    wav = folder / row["audio"]
    wav.write_bytes(wav.read_bytes()[:100])  # truncated
    assert "wrong size" in verify(cfg, folder)
    with pytest.warns(UserWarning, match="damaged"):
        ensure_corpus(cfg, root=tmp_path, progress=False)
    assert calls == [1] and verify(cfg, folder) is None

    (folder / "test_voices.jsonl").unlink()
    assert "manifest missing" in verify(cfg, folder)
    (folder / ".complete").unlink()
    assert "complete" in verify(cfg, folder)
    with pytest.warns(UserWarning, match="damaged"):
        ensure_corpus(cfg, root=tmp_path, progress=False)
    assert calls == [1, 1] and verify(cfg, folder) is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_DATA_DIR", str(tmp_path / "env"))
    cfg = CorpusConfig(num_train=1, num_valid=1, num_test_voices=1, num_test_sentences=1)
    paths = ensure_corpus(cfg, progress=False)
    assert paths["train"].parent == tmp_path / "env" / cfg.digest()
