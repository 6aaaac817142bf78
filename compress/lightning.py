"""The callbacks for code that imports ``lightning.pytorch`` (the ``lightning`` package).

``compress.QuantizationRegularizer`` and ``compress.GradualSparsifier`` derive from
``pytorch_lightning.Callback``. A ``lightning.pytorch.Trainer`` calls their hooks by name
and runs them, but they are not instances of ``lightning.pytorch.Callback``, which code
that selects callbacks by type (``isinstance``) would miss. This module builds the same
classes on ``lightning.pytorch.Callback`` from the same code (the ``*Core`` classes), so
behaviour, arguments and checkpoint state (state keys included) are identical:

    >>> from compress.lightning import GradualSparsifier, QuantizationRegularizer  # doctest: +SKIP
    >>> import lightning.pytorch as L  # doctest: +SKIP
    >>> trainer = L.Trainer(callbacks=[QuantizationRegularizer(bits=4), GradualSparsifier(0.5)])  # doctest: +SKIP
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as err:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "compress.lightning needs the 'lightning' package (import lightning.pytorch): "
        "install it with `pip install lightning`, or keep using pytorch_lightning and import "
        "the callbacks from `compress` instead (from compress import QuantizationRegularizer)"
    ) from err

from compress.callbacks.gradual_sparsifier import GradualSparsifierCore
from compress.callbacks.quant_regularizer import QuantizationRegularizerCore


class QuantizationRegularizer(QuantizationRegularizerCore, Callback):
    __doc__ = QuantizationRegularizerCore.__doc__


class GradualSparsifier(GradualSparsifierCore, Callback):
    __doc__ = GradualSparsifierCore.__doc__


__all__ = ["GradualSparsifier", "QuantizationRegularizer"]
