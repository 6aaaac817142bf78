"""Log-mel features, SpecAugment, and the SpeechDataModule's batches and loaders."""

import json

import numpy as np
import pytest
import torch

from compress.data.corpus import write_wav
from compress.data.datamodule import BucketBatchSampler, SpeechDataModule
from compress.data.features import LogMel, SpecAugment
from compress.data.text import decode

TINY = {"num_train": 16, "num_valid": 4, "num_test_voices": 4, "num_test_sentences": 4}


def test_logmel_matches_stft_oracle():
    import torchaudio.functional as AF

    audio = torch.randn(16000)
    got = LogMel(normalize=False)(audio)
    assert got.shape == (101, 80)  # 1 s at a 10 ms hop, centered frames
    spec = torch.stft(audio, n_fft=400, hop_length=160, win_length=400,
                      window=torch.hann_window(400), center=True, return_complex=True).abs() ** 2
    fb = AF.melscale_fbanks(201, 0.0, 8000.0, 80, 16000)  # (freq, mel)
    want = torch.log(spec.T @ fb + 1e-6)
    assert torch.allclose(got, want, atol=1e-3)


def test_logmel_normalization_and_validation():
    x = LogMel()(torch.randn(8000) * 0.1)
    assert torch.allclose(x.mean(0), torch.zeros(80), atol=1e-4)
    assert torch.allclose(x.std(0), torch.ones(80), atol=1e-3)
    with pytest.raises(ValueError, match="audio"):
        LogMel()(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="hop_ms"):
        LogMel(hop_ms=30.0)


def test_specaugment_masks_inside_lengths_and_is_seeded():
    x = torch.ones(3, 100, 80)
    lengths = torch.tensor([100, 60, 30])
    aug = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=0.1)
    a = aug(x, lengths, torch.Generator().manual_seed(1))
    b = aug(x, lengths, torch.Generator().manual_seed(1))
    c = aug(x, lengths, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, torch.ones(3, 100, 80))  # input untouched
    # Zeroed fraction is bounded by the mask sizes.
    for i, n in enumerate(lengths.tolist()):
        zero = (a[i, :n] == 0).float().mean()
        assert 0 < zero <= 2 * 10 / 80 + 2 * 0.1 + 1e-6
    assert torch.equal(SpecAugment(0, 0, 0, 0.0)(x, lengths), x)


def test_bucket_sampler_covers_every_index_once_per_epoch():
    lengths = list(np.random.default_rng(0).integers(10, 300, size=103))
    s = BucketBatchSampler(lengths, batch_size=8, seed=3, pool=4)
    e0 = list(s)
    assert len(e0) == len(s)
    assert sorted(i for b in e0 for i in b) == list(range(103))
    assert e0 == list(BucketBatchSampler(lengths, batch_size=8, seed=3, pool=4))  # seeded
    s.set_epoch(1)
    assert list(s) != e0
    # Pools are length-sorted: a batch spans far less than the whole length range.
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in e0])
    assert spread < 0.5 * (max(lengths) - min(lengths))
    dropped = BucketBatchSampler(lengths, batch_size=8, seed=3, pool=4, drop_last=True)
    assert len(list(dropped)) == len(dropped) and all(len(b) == 8 for b in dropped)


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return SpeechDataModule(corpus=TINY, data_dir=str(root), batch_size=4, eval_batch_size=3, progress=False)


def test_batch_contract(dm):
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"features", "feature_lengths", "targets", "target_lengths", "texts"}
    B = len(batch["texts"])
    assert B == 4
    x, n, y, u = batch["features"], batch["feature_lengths"], batch["targets"], batch["target_lengths"]
    assert x.dtype == torch.float32 and x.shape[0] == B and x.shape[2] == 80
    assert n.dtype == y.dtype == u.dtype == torch.long
    assert int(n.max()) == x.shape[1] and int(u.max()) == y.shape[1]
    for b in range(B):
        assert decode(y[b, : u[b]].tolist()) == batch["texts"][b]
        assert bool((y[b, u[b]:] == 0).all())
        assert bool((x[b, n[b]:] == 0).all())  # padding


def test_loaders_are_deterministic_and_cover_splits(dm, tmp_path):
    def epoch(loader):
        return [(b["texts"], b["features"]) for b in loader]

    a = epoch(dm.train_dataloader())
    other = SpeechDataModule(corpus=TINY, data_dir=dm.data_dir, batch_size=4, progress=False)
    b = epoch(other.train_dataloader())
    assert [t for t, _ in a] == [t for t, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))  # SpecAugment is seeded too
    assert sum(len(t) for t, _ in a) == TINY["num_train"]
    tests = dm.test_dataloaders()
    assert sorted(tests) == ["test_sentences", "test_voices"]
    assert sum(len(b["texts"]) for b in tests["test_voices"]) == TINY["num_test_voices"]
    assert sum(len(b["texts"]) for b in dm.val_dataloader()) == TINY["num_valid"]
    assert len(dm.test_dataloader()) == 2


def test_user_manifest_dir(tmp_path):
    for i in range(3):
        write_wav(tmp_path / f"{i}.wav", (np.random.default_rng(i).standard_normal(4000) * 3000).astype(np.int16))
    row = lambda i, t: json.dumps({"audio": f"{i}.wav", "text": t})  # noqa: E731
    (tmp_path / "train.jsonl").write_text(row(0, "yes") + "\n" + row(1, "no") + "\n")
    (tmp_path / "valid.jsonl").write_text(row(2, "stop") + "\n")
    (tmp_path / "test_clean.jsonl").write_text(row(2, "stop") + "\n")
    dm = SpeechDataModule(manifest_dir=str(tmp_path), batch_size=2, progress=False)
    assert list(dm.test_dataloaders()) == ["test_clean"]
    assert sorted(next(iter(dm.train_dataloader()))["texts"]) == ["no", "yes"]
    (tmp_path / "valid.jsonl").unlink()
    with pytest.raises(ValueError, match="manifest_dir must be a folder with valid.jsonl, got "):
        SpeechDataModule(manifest_dir=str(tmp_path)).setup()


def test_datamodule_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        SpeechDataModule(batch_size=0)
    with pytest.raises(TypeError, match="corpus"):
        SpeechDataModule(corpus=[1, 2])
    with pytest.raises(ValueError, match="corpus: .*no_such_field"):
        SpeechDataModule(corpus={"no_such_field": 1}, data_dir=str(tmp_path)).setup()
