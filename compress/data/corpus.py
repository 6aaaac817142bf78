"""The built-in corpus: voice-assistant commands spoken by eSpeak NG voices, cached on disk.

Splits:
    * ``train`` / ``valid``: training voices, sentences outside the held-out set.
    * ``test_voices``: voice variants that never occur in training, training sentences.
    * ``test_sentences``: training voices, held-out sentences that never occur in training.

A voice is ``<accent>+<variant>`` (``en-us+f3``); the variant sets the speaker (formants,
breathiness, ...), so holding out variants holds out speakers. The corpus lives in
``<root>/<config hash>/`` (root: argument, else ``$COMPRESS_DATA_DIR``, else
``~/.cache/compress/corpus``) with one JSONL manifest per split and 16-bit WAV files. It is
generated into a temporary folder that is renamed into place after a ``.complete`` marker
is written, so a folder with the final name is either complete or damaged afterwards
(files deleted or truncated), which ``verify`` detects by counting lines and checking sizes.

Example:
    >>> import tempfile
    >>> from compress.data.corpus import CorpusConfig, ensure_corpus
    >>> cfg = CorpusConfig(num_train=4, num_valid=2, num_test_voices=2, num_test_sentences=2)
    >>> paths = ensure_corpus(cfg, root=tempfile.mkdtemp(), progress=False)
    >>> sorted(paths)
    ['test_sentences', 'test_voices', 'train', 'valid']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

from compress.checks import check_int, check_number, fail
from compress.data import templates

CORPUS_VERSION = 2  # bump when generation changes, so old caches are not reused
SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test_voices", "test_sentences")

ACCENTS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc",
           "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
# Bundled variants, minus the whispered, croaking and robotic ones that no user sounds like.
TRAIN_VARIANTS = ["f1", "f2", "f3", "f5", "m1", "m2", "m3", "m5", "m6", "m7", "m8", "klatt",
                  "klatt3", "klatt4", "klatt6", "Alex", "Alicia", "Andy", "Annie", "Denis",
                  "Diogo", "Gene", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Michael",
                  "Mike", "Nguyen", "Reed", "Storm", "adam", "anika", "announcer", "antonio",
                  "aunty", "belinda", "boris", "caleb", "david", "ed", "edward", "grandma",
                  "grandpa", "gustave", "ian", "iven", "iven3", "john", "kaukovalta", "max",
                  "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
                  "robert", "sandro", "shelby", "steph", "steph3", "travis", "victor", "zac"]
TEST_VARIANTS = ["f4", "m4", "klatt2", "Andrea", "benjamin", "linda", "iven2", "steph2",
                 "mike2", "edward2", "marcelo", "Gene2"]


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines the corpus; its hash names the cache folder.

    Example:
        >>> CorpusConfig(num_train=8).num_train
        8
    """

    seed: int = 0
    num_train: int = 8000
    num_valid: int = 300
    num_test_voices: int = 600
    num_test_sentences: int = 600
    accents: tuple = tuple(ACCENTS)
    train_variants: tuple = tuple(TRAIN_VARIANTS)
    test_variants: tuple = tuple(TEST_VARIANTS)
    rate: tuple = (130, 210)  # words per minute; eSpeak's default is 175
    pitch: tuple = (25, 75)  # eSpeak's 0..100 scale, 50 = the voice's own
    pitch_range: tuple = (30, 80)  # 0 = monotone
    snr_db: tuple = (20.0, 40.0)  # light white noise: clean to barely audible
    held_out_fraction: float = 0.1  # of the sentences of each template, for test_sentences

    def __post_init__(self):
        for name in ("num_train", "num_valid", "num_test_voices", "num_test_sentences", "seed"):
            check_int(name, getattr(self, name), min=0)
        for name in ("accents", "train_variants", "test_variants"):
            v = getattr(self, name)
            if isinstance(v, str) or not v or not all(isinstance(x, str) for x in v):
                fail(name, "a non-empty list of strings", v)
            object.__setattr__(self, name, tuple(v))  # lists from Hydra -> hashable tuples
        overlap = set(self.train_variants) & set(self.test_variants)
        if overlap:
            raise ValueError(f"test_variants must not overlap train_variants, got {sorted(overlap)} in both")
        for name in ("rate", "pitch", "pitch_range", "snr_db"):
            v = tuple(getattr(self, name))
            if len(v) != 2 or v[0] > v[1]:
                fail(name, "a (low, high) pair with low <= high", v)
            object.__setattr__(self, name, v)
        check_number("held_out_fraction", self.held_out_fraction, low=0.0, high=1.0, low_open=True, high_open=True)

    def digest(self) -> str:
        blob = json.dumps({"version": CORPUS_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def counts(self) -> dict[str, int]:
        return {"train": self.num_train, "valid": self.num_valid,
                "test_voices": self.num_test_voices, "test_sentences": self.num_test_sentences}


def default_root() -> Path:
    """``$COMPRESS_DATA_DIR`` if set, else ``~/.cache/compress/corpus``."""
    env = os.environ.get("COMPRESS_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "compress" / "corpus"


def held_out_sentences(cfg: CorpusConfig) -> set[str]:
    """The sentences reserved for ``test_sentences``: a seeded fraction of each template's."""
    rng = np.random.default_rng([cfg.seed, 1])
    sentences, owner = templates.all_sentences(), templates.template_of()
    held = set()
    for t in sorted(set(owner)):
        idx = [i for i, o in enumerate(owner) if o == t]
        k = int(round(cfg.held_out_fraction * len(idx)))
        if len(idx) >= 5 and k > 0:  # tiny templates stay whole so every word is trained
            held.update(sentences[i] for i in rng.choice(idx, size=k, replace=False))
    return held


def plan(cfg: CorpusConfig) -> list[dict]:
    """The list of utterances to synthesize (no audio yet), fully determined by ``cfg``."""
    sentences, owner = templates.all_sentences(), templates.template_of()
    held = held_out_sentences(cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    pools = {"seen": [i for i, s in enumerate(sentences) if s not in held],
             "held": [i for i, s in enumerate(sentences) if s in held]}
    items = []
    for split, n in cfg.counts().items():
        pool = pools["held" if split == "test_sentences" else "seen"]
        # Weight a sentence by 1/sqrt(size of its template): big templates are not drowned
        # out, and one-sentence templates are not repeated hundreds of times.
        sizes = np.bincount([owner[i] for i in pool])
        w = np.array([1.0 / np.sqrt(sizes[owner[i]]) for i in pool])
        picks = rng.choice(pool, size=n, p=w / w.sum()) if n else []
        variants = cfg.test_variants if split == "test_voices" else cfg.train_variants
        for k, i in enumerate(picks):
            items.append({
                "split": split, "index": k, "text": sentences[i],
                "voice": f"{cfg.accents[rng.integers(len(cfg.accents))]}+{variants[rng.integers(len(variants))]}",
                "rate": int(rng.integers(cfg.rate[0], cfg.rate[1] + 1)),
                "pitch": int(rng.integers(cfg.pitch[0], cfg.pitch[1] + 1)),
                "pitch_range": int(rng.integers(cfg.pitch_range[0], cfg.pitch_range[1] + 1)),
                "snr_db": float(rng.uniform(*cfg.snr_db)),
                "peak": float(rng.uniform(0.3, 0.9)),  # loudness variety
                "noise_seed": int(rng.integers(2**31)),
            })
    return items


_resampler: list = []  # one cached 22,050 -> 16,000 Hz filter per process


def _synthesize_block(items: list[dict]) -> list[np.ndarray]:
    """Raw 22,050 Hz eSpeak output for a block of planned utterances, from a fresh process."""
    from compress.data.espeak import synthesize_in_fresh_process

    keys = ("text", "voice", "rate", "pitch", "pitch_range")
    return synthesize_in_fresh_process([{**{k: it[k] for k in keys}, "seed": it["noise_seed"]} for it in items])


def finish(item: dict, raw: np.ndarray) -> np.ndarray:
    """eSpeak samples -> 16 kHz -> random gain -> white noise at the planned SNR, as int16."""
    import torch

    from compress.data.espeak import SAMPLE_RATE as ESPEAK_RATE

    if not _resampler:
        import torchaudio

        # The transform computes torchaudio.functional.resample's sinc kernel once
        # instead of per call (10x faster on short clips).
        _resampler.append(torchaudio.transforms.Resample(ESPEAK_RATE, SAMPLE_RATE))
    with torch.no_grad():
        x = _resampler[0](torch.from_numpy(raw.astype(np.float32) / 32768.0)).numpy()
    x = x * (item["peak"] / max(float(np.abs(x).max()), 1e-4))
    power = float(np.mean(x**2)) + 1e-12
    noise = np.random.default_rng(item["noise_seed"]).standard_normal(len(x)).astype(np.float32)
    x = x + noise * np.sqrt(power / 10 ** (item["snr_db"] / 10))
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono int16 samples as a 16-bit PCM WAV (stdlib ``wave``), atomically.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.wav"); write_wav(p, np.zeros(16, np.int16))
        >>> os.path.getsize(p)
        76
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw, wave.open(raw, "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _write(item: dict, audio: np.ndarray, folder: Path) -> dict:
    rel = f"audio/{item['split']}/{item['index']:06d}.wav"
    write_wav(folder / rel, audio)
    return {"audio": rel, "text": item["text"], "voice": item["voice"], "rate": item["rate"],
            "pitch": item["pitch"], "split": item["split"], "duration": len(audio) / SAMPLE_RATE,
            "sample_rate": SAMPLE_RATE, "num_samples": int(len(audio))}


BLOCK = 512  # utterances synthesized by one fresh process (see ``generate``)


def generate(cfg: CorpusConfig, folder: Path, progress: bool = True, workers: int = 1) -> None:
    """Synthesize every planned utterance into ``folder`` (which must not exist yet).

    libespeak-ng carries state from one utterance to the next (its pitch-flutter phase is
    never reset, so the same call gives a few samples more or less each time), so an
    utterance depends on what the process said before it. Each block of ``BLOCK``
    planned utterances is therefore rendered by a fresh process: the output depends only
    on the plan, not on ``workers`` or on scheduling.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    folder = Path(folder)
    for split in SPLITS:
        (folder / "audio" / split).mkdir(parents=True, exist_ok=True)
    items = plan(cfg)
    blocks = [items[i:i + BLOCK] for i in range(0, len(items), BLOCK)]
    rows: list[dict] = []
    with tqdm(total=len(items), desc="eSpeak corpus", unit="utt", disable=not progress) as bar:
        # Each block runs in its own fresh interpreter (the threads only wait on them). The
        # children only synthesize (they import numpy, not torch); resampling, noise and
        # writing happen here while they work on the next blocks.
        with ThreadPoolExecutor(max(1, workers)) as pool:
            ahead = max(1, workers) + 1  # blocks in flight: bounds the raw audio held in memory
            futures = [pool.submit(_synthesize_block, b) for b in blocks[:ahead]]
            for k, block in enumerate(blocks):
                raws = futures[k].result()
                futures[k] = None
                if k + ahead < len(blocks):
                    futures.append(pool.submit(_synthesize_block, blocks[k + ahead]))
                rows += [_write(it, finish(it, raw), folder) for it, raw in zip(block, raws)]
                bar.update(len(block))
    for split in SPLITS:
        with open(folder / f"{split}.jsonl", "w") as f:
            for r in rows:
                if r["split"] == split:
                    f.write(json.dumps(r) + "\n")
    (folder / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), sort_keys=True, indent=1))
    (folder / ".complete").write_text(str(CORPUS_VERSION))  # last: marks the folder whole


def verify(cfg: CorpusConfig, folder: Path) -> str | None:
    """Return None if ``folder`` holds the complete corpus for ``cfg``, else why not."""
    folder = Path(folder)
    if not (folder / ".complete").is_file():
        return f"{folder}: no .complete marker (generation was interrupted)"
    for split, n in cfg.counts().items():
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            return f"{path}: manifest missing"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) != n:
            return f"{path}: expected {n} entries, found {len(rows)}"
        for r in rows:
            wav = folder / r["audio"]
            want = 44 + 2 * r["num_samples"]  # canonical WAV header + 16-bit mono samples
            if not wav.is_file() or wav.stat().st_size != want:
                return f"{wav}: missing or wrong size (expected {want} bytes)"
    return None


def ensure_corpus(cfg: CorpusConfig | None = None, root: str | os.PathLike | None = None,
                  progress: bool = True, workers: int = 1) -> dict[str, Path]:
    """Return ``{split: manifest path}``, generating (or regenerating) the corpus if needed.

    Args:
        cfg: the corpus settings (``CorpusConfig()`` if None).
        root: the cache root; the corpus goes in ``root/<cfg.digest()>``.
        progress: show a tqdm bar while generating.
        workers: processes used for synthesis (1 = in this process).
    """
    cfg = cfg or CorpusConfig()
    root = Path(root) if root is not None else default_root()
    folder = root / cfg.digest()
    problem = verify(cfg, folder) if folder.exists() else "missing"
    if problem is None:
        return {s: folder / f"{s}.jsonl" for s in SPLITS}
    if problem != "missing":
        import warnings

        warnings.warn(f"corpus cache is damaged, regenerating it: {problem}", stacklevel=2)
        shutil.rmtree(folder)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.digest()}-", dir=root))  # same filesystem
    try:
        start = time.perf_counter()
        generate(cfg, tmp, progress=progress, workers=workers)
        (tmp / "generation_seconds.txt").write_text(f"{time.perf_counter() - start:.2f}\n")
        try:
            os.replace(tmp, folder)
        except OSError:
            # Another process finished the same corpus first; keep theirs if it is whole.
            if verify(cfg, folder) is not None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return {s: folder / f"{s}.jsonl" for s in SPLITS}
