"""ONNX export: compressed weights as int8 initializers behind ``DequantizeLinear``.

One graph (``to_onnx``, in ``graph``):

1. ``snap``: a copy of the model whose compressed weights are ``grid.snap(w, scale, bits)``
   (after their mask), so the float graph *is* the quantized model.
2. ``trace``: the TorchScript exporter, with the rewrites that keep the time axis dynamic.
3. ``initializers``: float initializers whose rows are all rows of snapped weights become
   int8 levels + scales + ``DequantizeLinear``, only where ``int8 * scale`` rebuilds them
   bit for bit. Everything else (biases, norms) stays float32.

Around it: ``families`` writes the graphs of a model family (CTC: one; RNN-T: encoder,
prediction step, joiner), ``parity`` checks them against PyTorch with onnxruntime
(``runtime``), and ``checkpoint`` runs all of it from a Lightning checkpoint
(``rebuild`` finds the class), as ``compress export-onnx`` does.

Example:
    >>> from compress.export.onnx import checkpoint_to_onnx
    >>> result = checkpoint_to_onnx("model.ckpt", "model.onnx")  # doctest: +SKIP
    >>> result.check_parity() <= TOLERANCE  # doctest: +SKIP
    True
"""

from compress.export.onnx.checkpoint import CheckpointExport, checkpoint_to_onnx
from compress.export.onnx.families import example_inputs, export_graphs, is_transducer
from compress.export.onnx.graph import DEFAULT_OPSET, MIN_OPSET, OnnxExport, to_onnx
from compress.export.onnx.initializers import quantize_initializers
from compress.export.onnx.parity import TOLERANCE, ParityError, check_parity
from compress.export.onnx.runtime import inference_session
from compress.export.onnx.snap import compressed_weights, snap_model

__all__ = [
    "CheckpointExport", "DEFAULT_OPSET", "MIN_OPSET", "OnnxExport", "ParityError", "TOLERANCE", "check_parity",
    "checkpoint_to_onnx", "compressed_weights", "example_inputs", "export_graphs", "inference_session",
    "is_transducer", "quantize_initializers", "snap_model", "to_onnx",
]
