"""Exporters: ``pack`` writes the PSQ file and ``verify`` checks one against its checkpoint;
``to_onnx`` and ``checkpoint_to_onnx`` (lazy: they import onnx) write ONNX.

Example:
    >>> import compress.export
    >>> callable(compress.export.pack) and callable(compress.export.verify)
    True
"""

from __future__ import annotations

import importlib

from compress.errors import ArgumentError
from compress.export.pack import PackSummary, pack
from compress.export.verification import Mismatch, verify

__all__ = ["pack", "PackSummary", "verify", "Mismatch", "ArgumentError", "to_onnx", "checkpoint_to_onnx"]

_ONNX = ("to_onnx", "checkpoint_to_onnx")


def __getattr__(name: str):
    # These live in compress.export.onnx, which imports onnx: resolve them only on use
    # so that `import compress.export` stays light.
    if name in _ONNX:
        value = getattr(importlib.import_module("compress.export.onnx"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compress.export' has no attribute {name!r}")
