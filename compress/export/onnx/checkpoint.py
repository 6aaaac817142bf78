"""``checkpoint_to_onnx``: a Lightning checkpoint to its ONNX graph(s), sized against the packed file.

What ``compress export-onnx`` runs: rebuild the model (``rebuild``), trace it on random
features of the checkpoint's feature size, write the graphs of its family
(``families``) and measure the packed file of the same weights, so that the two formats
are compared on one model. ``CheckpointExport.check_parity`` is the separate last step,
so that a caller can report the sizes before a failing check.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch

from compress.checks import check_int
from compress.errors import ArgumentError
from compress.export.onnx.families import example_inputs, export_graphs
from compress.export.onnx.graph import DEFAULT_OPSET, OnnxExport
from compress.export.onnx.parity import check_parity
from compress.export.onnx.rebuild import feature_size, rebuild, resolve_class
from compress.export.onnx.snap import snap_model
from compress.export.sources import CompressionState, load_checkpoint, read_compression_state


@dataclass(frozen=True)
class CheckpointExport:
    """What ``checkpoint_to_onnx`` wrote and measured, and what ``check_parity`` needs.

    ``packed_bytes`` is None where the packed file could not be written (``packed_error``
    says why); the ONNX files stand either way.
    """

    graphs: dict[str, OnnxExport]
    packed_bytes: int | None
    packed_error: str | None
    model: torch.nn.Module = field(repr=False)
    state: CompressionState = field(repr=False)
    example: tuple[torch.Tensor, torch.Tensor] = field(repr=False)  # features (B, T, F), lengths (B,)

    @property
    def onnx_bytes(self) -> int:
        return sum(g.size_bytes for g in self.graphs.values())

    @property
    def fp32_bytes(self) -> int:
        """The same graphs with float32 initializers."""
        return sum(g.fp32_bytes for g in self.graphs.values())

    @property
    def not_int8(self) -> tuple[str, ...]:
        """Compressed parameters stored as int8 in no graph (the exporter changed them; still exact)."""
        return tuple(sorted(set.intersection(*(set(g.not_int8) for g in self.graphs.values()))))

    def check_parity(self) -> float:
        """``check_parity`` on the tracing example and on one of another batch size and length."""
        x, _ = self.example
        batch, frames, feats = x.shape
        other = example_inputs(batch + 1, frames + frames // 2 + 3, feats, seed=1)
        return check_parity(self.model, self.state, self.graphs, [self.example, other])


def checkpoint_to_onnx(checkpoint: str | os.PathLike, output: str | os.PathLike, *, model_class: str | None = None,
                       features: int | None = None, frames: int = 200, batch: int = 2, opset: int = DEFAULT_OPSET,
                       trust_checkpoint: bool = False) -> CheckpointExport:
    """Export a checkpoint's model to ONNX with int8 weights (``export_graphs``), atomically.

    Args:
        checkpoint: a Lightning checkpoint with a ``QuantizationRegularizer`` state.
        output: the ``.onnx`` path (a transducer's other graphs go beside it).
        model_class: the LightningModule class as a dotted path (default: from the
            checkpoint, see ``rebuild``).
        features: input features per frame (default: from the hyper-parameters).
        frames, batch: the size of the random tracing example.
        opset: ONNX opset, >= 13.
        trust_checkpoint: allow pickled objects beyond tensors and plain types.

    Raises:
        ArgumentError: a bad argument, or a checkpoint this cannot export.
    """
    output = os.fspath(output)
    if not output.endswith(".onnx"):
        raise ArgumentError.must("output", "a path ending in .onnx", output)
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ArgumentError.must("output", "a path in an existing directory", output, f"no directory {out_dir}")
    for name, value in (("frames", frames), ("batch", batch), ("features", features)):
        if value is not None:
            ArgumentError.check(check_int, name, value, min=1)
    try:
        ckpt = load_checkpoint(checkpoint, trust_checkpoint=trust_checkpoint)
        state = read_compression_state(ckpt)
    except (ValueError, TypeError) as err:
        raise ArgumentError("checkpoint", str(err)) from None
    if not state.scales:
        raise ArgumentError("checkpoint", "no QuantizationRegularizer state with scales; nothing to store as int8")
    model = rebuild(checkpoint, resolve_class(ckpt, model_class), trust_checkpoint)
    x, lengths = example_inputs(batch, frames, feature_size(ckpt, features))
    graphs = export_graphs(model, state, output, x, lengths, opset)
    try:
        packed, error = _packed_bytes(model, state, ckpt, out_dir), None
    except (ValueError, TypeError) as err:
        packed, error = None, str(err).splitlines()[0]
    return CheckpointExport(graphs, packed, error, model, state, (x, lengths))


def _packed_bytes(model, state, ckpt: dict, directory: str) -> int:
    """Size of the packed file of the same snapped weights, written to a temporary file and removed."""
    from compress.export.pack import pack

    snapped = {k: v.detach() for k, v in snap_model(model, state).state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".psq", dir=directory)
    os.close(fd)
    try:
        return pack({"state_dict": snapped, "callbacks": ckpt.get("callbacks") or {}}, tmp).file_bytes
    finally:
        os.unlink(tmp)
