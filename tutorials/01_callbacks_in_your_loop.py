"""Tutorial 01: the two compression callbacks in your own training loop.

You already have a LightningModule for speech. This tutorial starts from one that knows
nothing about compression (a small CTC recognizer over log-mel features, written below
the way a user would write it), adds ``GradualSparsifier`` and
``QuantizationRegularizer`` in two lines, trains briefly on the built-in eSpeak NG
corpus, and reads back what the callbacks logged to TensorBoard: the sparsity rising
epoch by epoch, the mean distance of the weights to the int8 grid falling, and the
weight histograms.

Run it:

    python tutorials/01_callbacks_in_your_loop.py --short --data-dir /tmp/corpus --out /tmp/t01
    tensorboard --logdir /tmp/t01            # the same curves, in the browser

``--short`` trains 6 epochs on 96 utterances (seconds on one CPU thread, plus the
corpus generation on first use); without it, 10 epochs on 800 utterances. ``--data-dir``
is where the corpus is generated and cached (default: ``$COMPRESS_DATA_DIR`` or
``~/.cache/compress/corpus``). ``--weight`` sets the regularizer's strength (step 3).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import pytorch_lightning as pl
import torch
from torch import nn


# ---------------------------------------------------------------------------------------
# Step 1. A plain speech LightningModule.
#
# Nothing here is specific to compress: a strided Conv1d front end over log-mels, a
# bidirectional GRU, a linear head, CTC loss, AdamW with cosine decay. It reads the
# batch dicts of `compress.data.SpeechDataModule` ({"features", "feature_lengths",
# "targets", "target_lengths"}); with your own data loader only `_loss` changes.
# ---------------------------------------------------------------------------------------
class TinyCTC(pl.LightningModule):
    """A small CTC recognizer: Conv1d (stride 2) -> BiGRU -> Linear -> log-softmax.

    Args:
        n_mels: input feature size.
        vocab_size: output symbols, blank (index 0) included.
        channels: width of the convolution.
        hidden: GRU units per direction.
        lr: AdamW learning rate.
    """

    def __init__(self, n_mels: int = 40, vocab_size: int = 29, channels: int = 64, hidden: int = 64,
                 lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.conv = nn.Conv1d(n_mels, channels, kernel_size=5, stride=2, padding=2)
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, vocab_size)
        self.ctc = nn.CTCLoss(blank=0, zero_infinity=True)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor):
        x = torch.relu(self.conv(features.transpose(1, 2))).transpose(1, 2)  # (B, T/2, C)
        x, _ = self.gru(x)
        return self.head(x).log_softmax(-1), (lengths + 1) // 2

    def _loss(self, batch) -> torch.Tensor:
        log_probs, lengths = self(batch["features"], batch["feature_lengths"])
        return self.ctc(log_probs.transpose(0, 1), batch["targets"], lengths, batch["target_lengths"])

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch["texts"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch), batch_size=len(batch["texts"]))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        steps = self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", action="store_true", help="a quick run: 6 epochs on 96 utterances")
    p.add_argument("--data-dir", default=None, help="corpus cache root (default: $COMPRESS_DATA_DIR "
                   "or ~/.cache/compress/corpus)")
    p.add_argument("--out", default=None, help="TensorBoard log directory (default: a new temporary one)")
    p.add_argument("--weight", type=float, default=1.0, help="the regularizer's strength λ (0 turns the pull off)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    # Keep the printed output to what the tutorial shows.
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    pl.seed_everything(0, workers=True, verbose=False)
    out = args.out or tempfile.mkdtemp(prefix="compress-t01-")

    from compress.data import SpeechDataModule

    n_train, epochs = (96, 6) if args.short else (800, 10)
    dm = SpeechDataModule(
        corpus={"num_train": n_train, "num_valid": 16, "num_test_voices": 8, "num_test_sentences": 8},
        data_dir=args.data_dir, batch_size=8, n_mels=40, progress=False,
    )
    model = TinyCTC(n_mels=40, vocab_size=dm.vocab_size)

    # -----------------------------------------------------------------------------------
    # Step 2. Which weights will be compressed?
    #
    # By default the callbacks target the weight matrices of Linear, Conv and RNN layers
    # (biases and norms stay float). `describe_targets` prints the list before training.
    # -----------------------------------------------------------------------------------
    from compress import describe_targets

    print("== targets")
    describe_targets(model)

    # -----------------------------------------------------------------------------------
    # Step 3. Add the two callbacks: these are the two lines.
    #
    # GradualSparsifier prunes the smallest weights at each epoch start, on a cubic
    # schedule that reaches 50% at the last epoch. QuantizationRegularizer adds, after
    # each backward pass, a pull of every weight toward its nearest int8 grid level, and
    # snaps the weights onto the grid when fitting ends. The forward pass is untouched.
    #
    # `weight` is the strength λ of that pull. The default suits full-length trainings,
    # where it acts over many thousands of steps; this tutorial runs 72 steps (--short)
    # or 1,000, so it asks for a stronger pull (1.0). Run with `--weight 0` to see the
    # baseline: the distance to the grid then stays near the 0.25 of weights that
    # ignore the grid.
    # -----------------------------------------------------------------------------------
    from compress import GradualSparsifier, QuantizationRegularizer

    callbacks = [GradualSparsifier(final_sparsity=0.5),
                 QuantizationRegularizer(bits=8, weight=args.weight)]

    logger = pl.loggers.TensorBoardLogger(out, name="", version="")
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=logger, accelerator="cpu", devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=1, deterministic=True,
    )
    print(f"\n== training {epochs} epochs on {n_train} utterances")
    trainer.fit(model, datamodule=dm)

    # -----------------------------------------------------------------------------------
    # Step 4. Read the TensorBoard logs back.
    #
    # The same numbers `tensorboard --logdir OUT` plots. The callbacks log once per epoch,
    # at the epoch's last global step; Lightning's own "epoch" scalar maps steps to epochs.
    # -----------------------------------------------------------------------------------
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(out, size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})  # 0 = keep all
    acc.Reload()
    tags = acc.Tags()
    print(f"\n== TensorBoard scalar tags ({len(tags['scalars'])})")
    for tag in sorted(tags["scalars"]):
        print(f"  {tag}")

    epoch_of = {e.step: int(e.value) for e in acc.Scalars("epoch")}

    def per_epoch(tag: str) -> list[float]:
        return [e.value for e in acc.Scalars(tag)]

    sparsity = per_epoch("compress/sparsity")
    target = per_epoch("compress/sparsity_target")
    distance = per_epoch("compress/grid_distance")
    steps = [e.step for e in acc.Scalars("compress/sparsity")]
    # `grid_distance` is the mean |w - snap(w)| in units of the grid step over all
    # targeted weights. Pruned weights are exact zeros, a grid point, so they pull that
    # mean down on their own; dividing by the kept fraction gives the mean over the
    # weights that survive, which is what the regularizer acts on. Weights spread at
    # random over the grid sit 0.25 of a step away on average (more in epoch 0, where
    # weights that grew past the range fixed at the epoch's start count their overshoot).
    kept = [d / (1 - s) for d, s in zip(distance, sparsity)]
    print("\n== per epoch")
    print(f"{'epoch':>5} {'step':>5} {'sparsity target':>16} {'sparsity':>9} {'grid distance':>14} "
          f"{'(kept weights)':>15}")
    for i, step in enumerate(steps):
        print(f"{epoch_of.get(step, i):>5} {step:>5} {target[i]:>16.4f} {sparsity[i]:>9.4f} "
              f"{distance[i]:>14.4f} {kept[i]:>15.4f}")

    # Sparsity follows the cubic schedule up to 50%. The distance to the grid falls below
    # the 0.25 of random weights as the regularizer pulls them in (and the learning rate
    # decays); after the final batch the weights are snapped, so the last epoch logs 0.
    rising = all(b > a for a, b in zip(sparsity, sparsity[1:]))
    print(f"\nsparsity: {100 * sparsity[0]:.1f}% -> {100 * sparsity[-1]:.1f}% ({'rising' if rising else 'NOT rising'})")
    before_snap = kept[:-1]
    print(f"grid distance of kept weights before the final snap: epoch 0 {before_snap[0]:.4f} -> "
          f"epoch {len(before_snap) - 1} {before_snap[-1]:.4f} (random: 0.25)")
    print(f"grid distance after the final snap: {distance[-1]:.4f}")

    # Histograms: the regularizer logs the weights of its first three targets each epoch.
    # On TensorBoard's HISTOGRAMS tab the distribution grows a spike at 0 (the pruned
    # weights) with a gap around it (the small magnitudes they had).
    print(f"\n== TensorBoard histogram tags ({len(tags['histograms'])})")
    for tag in sorted(tags["histograms"]):
        events = acc.Histograms(tag)
        last = events[-1].histogram_value
        print(f"  {tag}: {len(events)} epochs, last: {int(last.num)} weights in [{last.min:.4f}, {last.max:.4f}]")

    # -----------------------------------------------------------------------------------
    # Step 5. What the model now holds.
    #
    # The weights themselves are pruned and on the grid: count the zeros, and check that
    # w / scale is an integer with the scales the regularizer kept (its `scales`).
    # -----------------------------------------------------------------------------------
    regularizer = callbacks[1]
    params = dict(model.named_parameters())
    print("\n== weights after training")
    width = max(len(name) for name in regularizer.scales)
    for name, scale in regularizer.scales.items():
        w = params[name].detach()
        levels = w / scale.view(-1, *[1] * (w.dim() - 1))
        off_grid = float((levels - levels.round()).abs().max())
        print(f"  {name:<{width}}  zeros {100 * float((w == 0).float().mean()):5.1f}%  "
              f"max |w/scale - round(w/scale)| = {off_grid:.1e}")
    print(f"\nlogs: {out}")


if __name__ == "__main__":
    main()
