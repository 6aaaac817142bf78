"""JSONL manifests: one utterance per line, ``{"audio": path, "text": transcript, ...}``.

``audio`` is a WAV path, relative to the manifest's folder (or absolute); ``text`` is the
transcript. Every other key (``voice``, ``rate``, ``pitch``, ``split``, ``duration``,
``sample_rate``, ...) is optional and passed through. This is the schema of the built-in
corpus, so LibriSpeech- or Speech-Commands-style data converted to it trains with no code
changes.

Example:
    >>> import json, tempfile, numpy as np
    >>> from pathlib import Path
    >>> from compress.data.corpus import write_wav
    >>> d = Path(tempfile.mkdtemp())
    >>> write_wav(d / "a.wav", np.zeros(1600, dtype=np.int16))
    >>> _ = (d / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "Call mom"}) + "\\n")
    >>> ds = ManifestDataset(d / "m.jsonl")
    >>> item = ds[0]
    >>> item["text"], tuple(item["audio"].shape)
    ('call mom', (1600,))
"""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import torch

from compress.data import text as text_mod

SAMPLE_RATE = 16000


def read_wav(path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE) -> torch.Tensor:
    """Read a PCM WAV (8/16/32-bit) as float32 mono in [-1, 1], resampled to ``sample_rate``.

    Example:
        >>> import tempfile, numpy as np
        >>> from compress.data.corpus import write_wav
        >>> p = tempfile.mktemp(suffix=".wav"); write_wav(p, np.full(10, 16384, np.int16))
        >>> float(read_wav(p)[0])
        0.5
    """
    with wave.open(str(path), "rb") as f:
        width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
        raw = f.readframes(f.getnframes())
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{path}: expected 8-, 16- or 32-bit PCM WAV, found {8 * width}-bit samples")
    x = torch.from_numpy(x.reshape(-1, channels).mean(axis=1))  # (N,) mono
    if sample_rate is not None and rate != sample_rate:
        import torchaudio.functional as AF

        x = AF.resample(x, rate, sample_rate)
    return x


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Parse and validate a JSONL manifest; ``audio`` is resolved to an absolute path.

    Raises:
        ValueError: naming the file, line number and field of the first bad entry.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest: {path} does not exist")
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: expected a JSON object, found invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, found {type(row).__name__}")
        for field in ("audio", "text"):
            if field not in row:
                raise ValueError(f"{where}: missing required field {field!r}")
            if not isinstance(row[field], str):
                raise ValueError(f"{where}: field {field!r} must be a string, found {type(row[field]).__name__}")
        if not row["audio"]:
            raise ValueError(f"{where}: field 'audio' is empty")
        try:
            text_mod.encode(row["text"])
        except ValueError as e:
            raise ValueError(f"{where}: field 'text': {e}") from None
        row = dict(row, text=text_mod.normalize(row["text"]), line=lineno)
        row["audio"] = str(path.parent / row["audio"])  # absolute paths stay absolute
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: manifest has no entries")
    return rows


class ManifestDataset(torch.utils.data.Dataset):
    """Utterances listed in a JSONL manifest.

    Args:
        manifest: path to the ``.jsonl`` file.
        sample_rate: audio is resampled to this rate on load (16 kHz, what features expect).
        check_files: verify up front that every audio file exists, so a typo fails at
            construction and not hours into training.

    Each item is a dict with ``audio`` (float32 (N,) tensor), ``text`` (normalized),
    ``tokens`` (long (U,) tensor) and the manifest's other keys (``meta``).

    Example:
        See the module docstring.
    """

    def __init__(self, manifest: str | os.PathLike, sample_rate: int = SAMPLE_RATE, check_files: bool = True):
        self.manifest = Path(manifest)
        self.sample_rate = sample_rate
        self.rows = read_manifest(self.manifest)
        if check_files:
            for row in self.rows:
                if not os.path.isfile(row["audio"]):
                    raise ValueError(f"{self.manifest}:{row['line']}: field 'audio': file {row['audio']} does not exist")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        return {
            "audio": read_wav(row["audio"], self.sample_rate),
            "text": row["text"],
            "tokens": torch.tensor(text_mod.encode(row["text"]), dtype=torch.long),
            "meta": {k: v for k, v in row.items() if k not in ("audio", "text")},
        }
