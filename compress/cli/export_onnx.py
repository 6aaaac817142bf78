"""``compress export-onnx CKPT -o model.onnx``: a checkpoint to ONNX with int8 weights.

The work is ``compress.export.onnx.checkpoint_to_onnx`` (which class is rebuilt, which
graphs a model family gives) and its ``check_parity``; this module parses, calls and
prints. CTC models give one graph; RNN-T models three: the encoder in ``-o``, one
prediction-network step in ``<stem>.predictor.onnx`` and the joiner in
``<stem>.joiner.onnx``. After writing, the graphs are checked against the PyTorch model
with snapped weights on two inputs of different batch size and length (``--no-check``
skips it).
"""

from __future__ import annotations

import sys

from compress.cli import CliError

# The library's parameter names as this command spells them in its error messages.
FLAGS = {"checkpoint": "CKPT", "output": "-o/--output", "model_class": "--model-class", "features": "--features",
         "frames": "--frames", "batch": "--batch"}


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


def run(args) -> int:
    from compress.errors import ArgumentError
    from compress.export.onnx import TOLERANCE, ParityError, checkpoint_to_onnx

    try:
        result = checkpoint_to_onnx(args.checkpoint, args.output, model_class=args.model_class,
                                    features=args.features, frames=args.frames, batch=args.batch,
                                    opset=args.opset, trust_checkpoint=args.trust_checkpoint)
    except ArgumentError as err:
        raise CliError(err.spell(FLAGS)) from None
    except (ValueError, TypeError) as err:  # bad settings, named by to_onnx
        raise CliError(str(err).splitlines()[0]) from None
    for role, g in result.graphs.items():
        print(f"{role}: {g.path}  {_size(g.size_bytes)}, {len(g.int8_initializers)} int8 initializers")
    if result.not_int8:  # in no graph as int8: the exporter changed them (still exact, only not smaller)
        print(f"compressed but stored float32: {', '.join(result.not_int8)}")
    onnx_bytes, fp32_bytes = result.onnx_bytes, result.fp32_bytes
    print(f"ONNX (int8 weights): {_size(onnx_bytes)}")
    print(f"ONNX fp32 (same graph, float32 weights): {_size(fp32_bytes)}  ratio {fp32_bytes / onnx_bytes:.2f}x")
    if result.packed_error is not None:  # the ONNX files stand; only the comparison is missing
        print(f"packed sparse-int8 file: not measured ({result.packed_error})", file=sys.stderr)
    else:
        print(f"packed sparse-int8 file: {_size(result.packed_bytes)}  ratio {fp32_bytes / result.packed_bytes:.2f}x"
              " vs ONNX fp32")
    if not args.no_check:
        try:
            worst = result.check_parity()
        except ParityError as err:
            raise CliError(str(err)) from None
        print(f"parity: max abs difference {worst:.2e} (<= {TOLERANCE:g}), identical greedy output")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-onnx",
        help="export a checkpoint to ONNX with int8 weights (DequantizeLinear)",
        description="Rebuild the LightningModule of CKPT, snap its compressed weights to their grid and "
        "write ONNX with int8 initializers and per-channel scales (biases and norms stay float32). "
        "Batch and time axes are dynamic. RNN-T models give three graphs: encoder, one "
        "prediction-network step (<stem>.predictor.onnx) and joiner (<stem>.joiner.onnx). "
        "Prints the ONNX, fp32 and packed sizes; then checks parity with PyTorch.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="Lightning checkpoint with a QuantizationRegularizer state")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .onnx path (written atomically)")
    p.add_argument("--model-class", metavar="DOTTED.PATH",
                   help="LightningModule class, e.g. compress.models.CTCLSTM (default: from the checkpoint)")
    p.add_argument("--features", type=int, metavar="N", help="input feature size (default: hyper-parameter n_mels)")
    p.add_argument("--frames", type=int, default=200, metavar="T", help="frames of the tracing example (default 200)")
    p.add_argument("--batch", type=int, default=2, metavar="B", help="batch of the tracing example (default 2)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, >= 13 (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow pickled objects beyond tensors and plain types in CKPT")
    p.set_defaults(func=run)
