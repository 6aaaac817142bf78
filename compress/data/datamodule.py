"""``SpeechDataModule``: the built-in corpus (or user manifests) as padded feature batches.

Batches are dicts (the contract every model in ``compress.models`` follows)::

    {"features": (B, T, F) float, "feature_lengths": (B,) long,
     "targets": (B, U) long, padded with 0 (the blank), "target_lengths": (B,) long,
     "texts": list[str]}

Training batches group utterances of similar length (less padding, so less wasted LSTM
time) and are shuffled with a seeded generator, so two runs with the same seed see the
same batches. Features of the whole corpus are computed once and kept in memory.

Example:
    >>> import tempfile
    >>> dm = SpeechDataModule(corpus={"num_train": 8, "num_valid": 4, "num_test_voices": 4,
    ...                               "num_test_sentences": 4}, data_dir=tempfile.mkdtemp(),
    ...                       batch_size=4, progress=False)
    >>> batch = next(iter(dm.train_dataloader()))
    >>> batch["features"].shape[0], batch["features"].shape[2], sorted(dm.test_dataloaders())
    (4, 80, ['test_sentences', 'test_voices'])
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from compress.checks import check_int, fail
from compress.data.features import LogMel, SpecAugment
from compress.data.manifest import ManifestDataset
from compress.data.text import VOCAB_SIZE


class FeatureDataset(Dataset):
    """A manifest's utterances as ``(features (T, F), tokens (U,), text)``, optionally cached."""

    def __init__(self, manifest: ManifestDataset, featurizer: LogMel, cache: bool = True):
        self.manifest, self.featurizer = manifest, featurizer
        self._cache = [self._compute(i) for i in range(len(manifest))] if cache else None
        # Frame counts, for length bucketing without touching the audio again.
        if self._cache is not None:
            self.lengths = [c[0].shape[0] for c in self._cache]
        else:
            hop = featurizer.mel.hop_length / 16000
            self.lengths = [int(r.get("duration", 1.0) / hop) for r in manifest.rows]

    def _compute(self, i: int):
        item = self.manifest[i]
        return self.featurizer(item["audio"]), item["tokens"], item["text"]

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, i: int):
        return self._cache[i] if self._cache is not None else self._compute(i)


class BucketBatchSampler(Sampler):
    """Seeded shuffled batches of similar-length utterances.

    Each epoch: a seeded permutation is cut into pools of ``pool`` batches, each pool is
    sorted by length and cut into batches, and the batches are shuffled. ``set_epoch``
    (called by Lightning) makes epoch ``e`` the same in every run with the same seed.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, pool: int = 50,
                 drop_last: bool = False):
        self.lengths, self.batch_size, self.seed, self.pool = lengths, batch_size, seed, pool
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.pool
        batches = []
        for s in range(0, len(perm), span):
            chunk = sorted(perm[s:s + span], key=lambda i: self.lengths[i])
            batches += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        n = len(self.lengths)
        span = self.batch_size * self.pool
        full, rest = divmod(n, span)
        per = span // self.batch_size
        if self.drop_last:
            return full * per + rest // self.batch_size
        return full * per + -(-rest // self.batch_size)


def collate(items, augment: SpecAugment | None = None, generator: torch.Generator | None = None) -> dict:
    """Pad a list of ``(features, tokens, text)`` into the batch dict."""
    feats, tokens, texts = zip(*items)
    feature_lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
    target_lengths = torch.tensor([t.shape[0] for t in tokens], dtype=torch.long)
    x = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)  # (B, T, F)
    y = torch.nn.utils.rnn.pad_sequence(list(tokens), batch_first=True, padding_value=0)  # (B, U)
    if augment is not None:
        x = augment(x, feature_lengths, generator)
    return {"features": x, "feature_lengths": feature_lengths, "targets": y,
            "target_lengths": target_lengths, "texts": list(texts)}


def eval_loader(ds: FeatureDataset, batch_size: int, num_workers: int = 0) -> DataLoader:
    """Validation/test batches of ``ds``: sorted by length (minimal padding; order does not
    matter for metrics), ``batch_size`` utterances each. ``compress evaluate`` builds its
    loaders with it, so its batches are those of the training run's test."""
    order = sorted(range(len(ds)), key=lambda i: ds.lengths[i])
    batches = [order[k:k + batch_size] for k in range(0, len(order), batch_size)]
    return DataLoader(ds, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)


class _TrainCollate:
    """Picklable collate with SpecAugment drawing from one seeded generator."""

    def __init__(self, augment: SpecAugment | None, seed: int):
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, items):
        return collate(items, self.augment, self.generator)


class SpeechDataModule(pl.LightningDataModule):
    """Speech batches from the built-in eSpeak corpus or from user JSONL manifests.

    Args:
        corpus: ``CorpusConfig`` fields for the built-in corpus (sizes, seed, voices, ...);
            None uses the defaults. Ignored when ``manifest_dir`` is given.
        manifest_dir: a folder with ``train.jsonl``, ``valid.jsonl`` and one or more
            ``test*.jsonl`` (each a test split named after its file), in the
            ``ManifestDataset`` schema.
        data_dir: corpus cache root (default ``$COMPRESS_DATA_DIR`` or ``~/.cache/compress/corpus``).
        batch_size: utterances per training batch. The default recipe uses 16 (500 steps
            per epoch of the default corpus): the LSTM steps through time whatever the
            batch, so a step of 16 costs half of one of 48 and an epoch gives three times
            the updates (docs/performance.md).
        eval_batch_size: utterances per validation/test batch (no gradients, so larger).
        num_workers: DataLoader worker processes; 0 suits in-memory features.
        n_mels: mel bins.
        normalize: per-utterance feature normalization.
        spec_augment: mask mel bands and frames in training batches.
        seed: shuffling and augmentation seed.
        cache_features: compute every utterance's features once and keep them in memory.
        gen_workers: eSpeak processes for corpus synthesis (2: one per core of the CI
            machine; the default corpus takes about 30 s).
        progress: show progress bars.

    Example:
        See the module docstring.
    """

    def __init__(self, corpus: dict | None = None, manifest_dir: str | None = None,
                 data_dir: str | None = None, batch_size: int = 48, eval_batch_size: int = 64,
                 num_workers: int = 0, n_mels: int = 80, normalize: bool = True,
                 spec_augment: bool = True, seed: int = 0, cache_features: bool = True,
                 gen_workers: int = 2, progress: bool = True):
        super().__init__()
        for name, v in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            check_int(name, v, min=1)
        if corpus is not None and not hasattr(corpus, "keys"):
            fail("corpus", "a dict of CorpusConfig fields or None", corpus, TypeError)
        self.corpus = dict(corpus) if corpus is not None else {}
        self.manifest_dir = manifest_dir
        self.data_dir = data_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.n_mels, self.normalize, self.spec_augment = n_mels, normalize, spec_augment
        self.seed, self.cache_features, self.gen_workers, self.progress = seed, cache_features, gen_workers, progress
        self.vocab_size = VOCAB_SIZE
        self.datasets: dict[str, FeatureDataset] = {}
        self.save_hyperparameters()

    # ----------------------------------------------------------------- manifests
    def manifests(self) -> dict[str, Path]:
        """``{split: manifest path}``; generates the built-in corpus if it is missing."""
        if self.manifest_dir is not None:
            folder = Path(self.manifest_dir)
            found = {p.stem: p for p in sorted(folder.glob("*.jsonl"))}
            for need in ("train", "valid"):
                if need not in found:
                    raise ValueError(f"manifest_dir must be a folder with {need}.jsonl, got {str(folder)!r} "
                                     f"(holding {sorted(found)})")
            if not any(s.startswith("test") for s in found):
                raise ValueError(f"manifest_dir must be a folder with at least one test*.jsonl, got {str(folder)!r} "
                                 f"(holding {sorted(found)})")
            return {s: p for s, p in found.items() if s in ("train", "valid") or s.startswith("test")}
        from compress.data.corpus import CorpusConfig, ensure_corpus

        try:
            cfg = CorpusConfig(**self.corpus)
        except TypeError as e:
            raise ValueError(f"corpus: {e}") from None
        return ensure_corpus(cfg, root=self.data_dir, progress=self.progress, workers=self.gen_workers)

    def prepare_data(self) -> None:
        self.manifests()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        featurizer = LogMel(n_mels=self.n_mels, normalize=self.normalize)
        for split, path in self.manifests().items():
            self.datasets[split] = FeatureDataset(ManifestDataset(path), featurizer, self.cache_features)

    # --------------------------------------------------------------- dataloaders
    def _eval_loader(self, ds: FeatureDataset) -> DataLoader:
        return eval_loader(ds, self.eval_batch_size, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        ds = self.datasets["train"]
        sampler = BucketBatchSampler(ds.lengths, self.batch_size, seed=self.seed)
        augment = SpecAugment() if self.spec_augment else None
        return DataLoader(ds, batch_sampler=sampler, collate_fn=_TrainCollate(augment, self.seed),
                          num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self.datasets["valid"])

    def test_dataloaders(self) -> dict[str, DataLoader]:
        """``{split name: loader}`` for every test split (``test_voices``, ``test_sentences``, ...)."""
        self.setup()
        return {s: self._eval_loader(ds) for s, ds in self.datasets.items() if s.startswith("test")}

    def test_dataloader(self) -> list[DataLoader]:
        """All test loaders, in ``test_dataloaders()`` order (prefer one ``trainer.test`` per split)."""
        return list(self.test_dataloaders().values())
