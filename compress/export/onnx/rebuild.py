"""Rebuilding a checkpoint's LightningModule, and telling its input feature size.

Tracing needs the model itself, not only its weights. The class is, in this order: the
one given; the checkpoint's ``hyper_parameters["_class_path"]`` (LightningCLI's
convention) or top-level ``"model_class"``; else the built-in model of
``compress.models.MODELS`` whose parameter names are exactly the checkpoint's. It is
rebuilt with ``Class.load_from_checkpoint``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping

from compress.errors import ArgumentError

FEATURE_KEYS = ("n_mels", "n_features", "feature_dim", "input_dim")


def hparams(ckpt: Mapping) -> dict:
    """The checkpoint's ``hyper_parameters``, or ``{}``."""
    hp = ckpt.get("hyper_parameters")
    return dict(hp) if isinstance(hp, Mapping) else {}


def _import_class(path: str, what: str | None):
    """``what`` names the argument the path came from; None: the checkpoint itself."""
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as err:
        if what is None:
            raise ArgumentError(None, f"checkpoint class path: cannot import {path!r} ({err})") from None
        raise ArgumentError.must(what, "an importable class path", path, str(err)) from None


def resolve_class(ckpt: Mapping, model_class: str | None = None) -> type:
    """The LightningModule class to rebuild (see the module docstring for the order).

    Args:
        ckpt: the loaded checkpoint.
        model_class: a dotted path, e.g. ``"compress.models.CTCLSTM"``, that overrides the checkpoint.
    """
    if model_class:
        return _import_class(model_class, "model_class")
    hp = hparams(ckpt)
    stored = hp.get("_class_path") or ckpt.get("model_class")
    if isinstance(stored, str):
        return _import_class(stored, None)
    from compress.models import MODELS  # Lightning and torchaudio: only when guessing

    keys = set(ckpt["state_dict"])
    for cls in MODELS.values():
        try:
            if set(cls(**{k: v for k, v in hp.items() if not k.startswith("_")}).state_dict()) == keys:
                return cls
        except (TypeError, ValueError):  # other hyper-parameters: another class
            continue
    raise ArgumentError("checkpoint", "cannot tell the model class (no hyper_parameters['_class_path'], no "
                        "'model_class', and no built-in model has its parameter names)",
                        fix=("model_class", "package.module.Class"))


def feature_size(ckpt: Mapping, features: int | None = None) -> int:
    """Input features per frame: ``features``, else the first of ``FEATURE_KEYS`` in the hyper-parameters."""
    if features:
        return features
    hp = hparams(ckpt)
    for key in FEATURE_KEYS:
        if isinstance(hp.get(key), int):
            return hp[key]
    raise ArgumentError(None, f"cannot tell the feature size: none of {FEATURE_KEYS} in hyper_parameters",
                        fix=("features", "N"))


def rebuild(path: str | os.PathLike, cls: type, trust_checkpoint: bool = False):
    """``cls.load_from_checkpoint(path)`` on CPU, in eval mode; a class that does not fit names itself."""
    try:
        return cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust_checkpoint).eval()
    except Exception as err:  # a class that does not fit the checkpoint: one line, not a traceback
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ArgumentError("checkpoint", f"{cls.__name__}.load_from_checkpoint failed: {first}") from None
