"""compress: quantization regularization and gradual sparsification for speech models.

The public names are resolved lazily, so that ``import compress`` stays light: it never
imports hydra, onnx or tensorboard, and it imports torch and Lightning only when a
callback is first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "QuantizationRegularizer": "compress.callbacks.quant_regularizer",
    "GradualSparsifier": "compress.callbacks.gradual_sparsifier",
    "describe_targets": "compress.targets",
    "find_targets": "compress.targets",
    "FormatError": "compress.format.errors",
    "ArgumentError": "compress.errors",
    "load": "compress.decoder.fast",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'compress' has no attribute {name!r}")


def __dir__():
    return __all__
