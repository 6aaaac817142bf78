"""The two Lightning callbacks (built on ``pytorch_lightning``; see ``compress.lightning``
for the same classes on ``lightning.pytorch``)."""

from compress.callbacks.gradual_sparsifier import GradualSparsifier
from compress.callbacks.quant_regularizer import QuantizationRegularizer

__all__ = ["GradualSparsifier", "QuantizationRegularizer"]
