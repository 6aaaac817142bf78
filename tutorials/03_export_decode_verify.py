"""Tutorial 03: from a checkpoint to a packed file, back into a model, and to ONNX.

A model trained with the two callbacks (tutorial 01) ends with pruned weights snapped
onto their grid, and its checkpoint carries the callbacks' masks and scales. This
tutorial trains one briefly, then:

1. ``compress export``: packs the checkpoint into the sparse-int8 ``.psq`` file;
2. ``compress inspect``: what the file holds, tensor by tensor, against fp32 and int8;
3. ``compress verify`` (in Python, ``compress.export.verify``): every decoded tensor
   equals the checkpoint's, bit for bit;
4. ``compress.load``: rebuilds the model from the packed file and checks it computes
   exactly what the trained model computes on test utterances;
5. ``compress export-onnx`` and onnxruntime: the same weights as int8 initializers
   behind ``DequantizeLinear``, run on the test utterances and compared.

Run it:

    python tutorials/03_export_decode_verify.py --short --data-dir /tmp/corpus --out /tmp/t03

``--short`` trains a tiny CTC-LSTM for 3 epochs on 32 utterances (seconds); without it,
a larger one for 8 epochs on 400 utterances (a few minutes on 2 cores). The CLI commands
are run in this process through ``compress.cli.main``, which is what the ``compress``
console script calls; the printed ``$`` lines are what you would type.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="a tiny model, 3 epochs on 32 utterances")
    p.add_argument("--data-dir", default=None, help="corpus cache root (default: $COMPRESS_DATA_DIR "
                   "or ~/.cache/compress/corpus)")
    p.add_argument("--out", default=None, help="where the checkpoint and exports go (default: a new temporary one)")
    return p.parse_args(argv)


def compress_cli(*args: str) -> int:
    """``compress ARGS``, in this process; raises if the command fails."""
    from compress.cli import main

    print("$ compress " + " ".join(args))
    code = main(list(args))
    print(f"(exit code {code})")
    if code not in (0, None):
        raise SystemExit(f"compress {args[0]} failed with exit code {code}")
    return code


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    pl.seed_everything(0, workers=True, verbose=False)
    out = Path(args.out or tempfile.mkdtemp(prefix="compress-t03-"))
    out.mkdir(parents=True, exist_ok=True)

    from compress import GradualSparsifier, QuantizationRegularizer, load
    from compress.data import SpeechDataModule
    from compress.models import CTCLSTM

    # -----------------------------------------------------------------------------------
    # Step 0. Train and save a checkpoint.
    #
    # Any LightningModule works; here, the built-in CTC-LSTM. `trainer.save_checkpoint`
    # stores the callbacks' state (masks, scales, bits) beside the weights: that is all
    # the exporter needs.
    # -----------------------------------------------------------------------------------
    if args.short:
        n_train, epochs, size = 32, 3, {"conv_channels": 32, "hidden_size": 32, "num_layers": 1}
    else:
        n_train, epochs, size = 400, 8, {"conv_channels": 128, "hidden_size": 128, "num_layers": 2}
    dm = SpeechDataModule(
        corpus={"num_train": n_train, "num_valid": 8, "num_test_voices": 8, "num_test_sentences": 16},
        data_dir=args.data_dir, batch_size=8, eval_batch_size=16, progress=False,
    )
    model = CTCLSTM(**size)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, deterministic=True,
        callbacks=[GradualSparsifier(final_sparsity=0.5), QuantizationRegularizer(bits=8)],
    )
    print(f"== training CTCLSTM({size}) for {epochs} epochs on {n_train} utterances")
    trainer.fit(model, datamodule=dm)
    ckpt = out / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    print(f"checkpoint: {ckpt} ({ckpt.stat().st_size:,} bytes, optimizer state included)")

    # -----------------------------------------------------------------------------------
    # Step 1. Export.
    #
    # Bits, scales and masks come from the checkpoint's callback state. The table shows,
    # per tensor, the encoding the writer picked (dense, bitmask or Golomb-coded gaps,
    # whichever is smallest) and the bits per weight it costs. Biases stay float32.
    # (In Python: `compress.export.pack("model.ckpt", "model.psq")`.)
    # -----------------------------------------------------------------------------------
    psq = out / "model.psq"
    print("\n== step 1: export")
    compress_cli("export", str(ckpt), "-o", str(psq), "--recipe", "tutorial-03")

    # -----------------------------------------------------------------------------------
    # Step 2. Inspect.
    #
    # Reads and validates header, metadata and tensor table, without decoding the data.
    # The totals compare the file with fp32, with dense int8, and with the entropy
    # bound b*d + H(d) for bits b and density d (the cost of the values plus the least
    # any index of the zeros can cost).
    # -----------------------------------------------------------------------------------
    print("\n== step 2: inspect")
    compress_cli("inspect", str(psq))

    # -----------------------------------------------------------------------------------
    # Step 3. Verify.
    #
    # Decodes every tensor and compares it bit for bit with the checkpoint's weights on
    # their grid. Exit code 0 and "OK" only if every tensor matches. In Python,
    # `compress.export.verify` returns the mismatches, each naming its tensor and why.
    # -----------------------------------------------------------------------------------
    print("\n== step 3: verify")
    compress_cli("verify", str(psq), str(ckpt))

    from compress.export import verify

    mismatches = verify(psq, ckpt)  # [] when the file holds the checkpoint's weights
    print(f"compress.export.verify(psq, ckpt): {len(mismatches)} mismatches {[str(m) for m in mismatches]}")

    # -----------------------------------------------------------------------------------
    # Step 4. Load into a model.
    #
    # `compress.load` returns a state dict; build the model as usual and load it. The
    # trained weights were snapped onto the grid when fitting ended, so the rebuilt model
    # holds the very same floats: its outputs on test utterances are identical.
    # -----------------------------------------------------------------------------------
    print("\n== step 4: load into a model")
    state = load(psq)
    rebuilt = CTCLSTM(**size)
    rebuilt.load_state_dict(state, strict=True)
    model.eval()
    rebuilt.eval()
    batch = next(iter(dm.test_dataloaders()["test_sentences"]))
    x, n = batch["features"], batch["feature_lengths"]
    with torch.no_grad():
        want, want_n = model(x, n)
        got, got_n = rebuilt(x, n)
    same_weights = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    print(f"weights identical to the trained model's: {same_weights}")
    print(f"test batch {tuple(x.shape)}: max abs diff packed vs trained log-probs: "
          f"{float((got - want).abs().max()):.1e}")
    print(f"transcripts identical: {rebuilt.transcribe(x, n) == model.transcribe(x, n)}")

    # -----------------------------------------------------------------------------------
    # Step 5. ONNX.
    #
    # `compress export-onnx` rebuilds the LightningModule from the checkpoint, snaps its
    # compressed weights and writes int8 initializers with per-channel scales (biases
    # stay float32); batch and time axes are dynamic. It checks parity with PyTorch on
    # random inputs itself. (In Python: `compress.export.checkpoint_to_onnx`, or
    # `compress.export.to_onnx` for any module and compression state.) Then run the graph
    # with onnxruntime on the real test batch and compare with the packed model.
    # -----------------------------------------------------------------------------------
    print("\n== step 5: ONNX")
    onnx_path = out / "model.onnx"
    compress_cli("export-onnx", str(ckpt), "-o", str(onnx_path))

    from compress.export.onnx import inference_session

    sess = inference_session(onnx_path)  # one thread, float32 accumulation
    print(f"graph inputs: {[i.name for i in sess.get_inputs()]}, outputs: {[o.name for o in sess.get_outputs()]}")
    ort_log_probs, ort_n = sess.run(None, {"features": x.numpy(), "feature_lengths": n.numpy()})
    lengths_equal = np.array_equal(ort_n, got_n.numpy())
    # Compare only the valid frames of each utterance: padding frames are not defined.
    worst = max(float(np.abs(ort_log_probs[b, :k] - got.numpy()[b, :k]).max()) for b, k in enumerate(got_n.tolist()))
    greedy_equal = all(
        np.array_equal(ort_log_probs[b, :k].argmax(-1), got.numpy()[b, :k].argmax(-1)) for b, k in enumerate(got_n.tolist())
    )
    print(f"onnxruntime vs packed model on {x.shape[0]} test utterances: output lengths equal: {lengths_equal}, "
          f"max abs diff {worst:.1e}, greedy paths equal: {greedy_equal}")

    print("\n== sizes")
    for path in (ckpt, onnx_path, psq):
        print(f"  {path.name:<12} {path.stat().st_size:>10,} bytes")


if __name__ == "__main__":
    main()
