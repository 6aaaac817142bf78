"""Exporters: ``pack`` writes the PSQ file; ``to_onnx`` (lazy, imports onnx) writes ONNX.

Example:
    >>> import compress.export
    >>> callable(compress.export.pack)
    True
"""

from __future__ import annotations

import importlib

from compress.export.pack import PackSummary, pack

__all__ = ["pack", "PackSummary", "to_onnx"]


def __getattr__(name: str):
    # to_onnx lives in compress.export.onnx, which imports onnx: resolve it only on use
    # so that `import compress.export` stays light.
    if name == "to_onnx":
        value = importlib.import_module("compress.export.onnx").to_onnx
        globals()[name] = value
        return value
    raise AttributeError(f"module 'compress.export' has no attribute {name!r}")
