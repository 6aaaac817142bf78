"""Speech data: the built-in eSpeak NG corpus, JSONL manifests, features and the tokenizer.

Names are imported lazily so that ``import compress.data`` does not load torchaudio or
Lightning until they are used.

Example:
    >>> from compress.data import encode, decode
    >>> decode(encode("call mom"))
    'call mom'
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CorpusConfig": "compress.data.corpus",
    "ensure_corpus": "compress.data.corpus",
    "ManifestDataset": "compress.data.manifest",
    "read_manifest": "compress.data.manifest",
    "read_wav": "compress.data.manifest",
    "LogMel": "compress.data.features",
    "SpecAugment": "compress.data.features",
    "SpeechDataModule": "compress.data.datamodule",
    "VOCAB": "compress.data.text",
    "VOCAB_SIZE": "compress.data.text",
    "BLANK": "compress.data.text",
    "encode": "compress.data.text",
    "decode": "compress.data.text",
    "ctc_collapse": "compress.data.text",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compress.data' has no attribute {name!r}")


def __dir__():
    return __all__
