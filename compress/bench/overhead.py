"""Train-step overhead of the two callbacks, next to Lightning's own ``ModelPruning``.

A speech-like model (2-layer LSTM, 256 hidden, over 80-dim features, batch 16, T = 200,
AdamW) is trained for a few short epochs under three configurations: no callback; both
compress callbacks (GradualSparsifier to 50% on the cubic schedule + 8-bit
QuantizationRegularizer, gradient form); the same at 4 bits, whose default is the
decoupled relax form (pulling from the first step); ``pytorch_lightning.callbacks.ModelPruning`` (L1 unstructured)
following the same sparsity schedule. Configurations are interleaved, repeat after
repeat; each repeat gives a ratio to the baseline run next to it (which cancels the
drift of a shared machine) and the figure is the median of those paired ratios. A step time is the interval between two consecutive
``on_train_batch_start`` calls, so it includes every hook of the step; the mean ratio
also counts the epoch-boundary work (mask computation, pruning).
"""

from __future__ import annotations

import statistics
import time


def add_arguments(group) -> None:
    group.add_argument("--repeats", type=int, default=7, help="interleaved repeats of each configuration (default 7)")
    group.add_argument("--epochs", type=int, default=3, help="epochs per fit (default 3; the schedule spans them)")
    group.add_argument("--steps", type=int, default=6, help="steps per epoch (default 6)")


def _module():
    import pytorch_lightning as pl
    import torch
    from torch import nn

    class SpeechLSTM(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(80, 256, num_layers=2, batch_first=True)
            self.head = nn.Linear(256, 32)

        def training_step(self, batch, i):
            x, y = batch  # (B, T, 80), (B, T)
            logits = self.head(self.lstm(x)[0])  # (B, T, 32)
            return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=0.01)

    return SpeechLSTM()


def _callbacks(config: str, model, epochs: int):
    from pytorch_lightning.callbacks import ModelPruning

    from compress.callbacks import GradualSparsifier, QuantizationRegularizer
    from compress.sparsity.schedule import sparsity_at

    if config == "baseline":
        return []
    if config == "compress":
        return [GradualSparsifier(final_sparsity=0.5), QuantizationRegularizer(bits=8)]
    if config == "compress-4bit":  # the default below 7 bits: the decoupled relax form, pulling from step 0
        return [GradualSparsifier(final_sparsity=0.5), QuantizationRegularizer(bits=4)]
    s = [sparsity_at(e, 0.5, 0, epochs - 1) for e in range(epochs + 1)]

    def amount(epoch: int) -> float:
        # ModelPruning prunes at the end of `epoch` for the next one, a fraction of what is left
        return (s[epoch + 1] - s[epoch]) / (1.0 - s[epoch]) if epoch + 1 < len(s) else 0.0

    params = [(model.lstm, n) for n in model.lstm._flat_weights_names if n.startswith("weight")]
    params.append((model.head, "weight"))
    return [ModelPruning("l1_unstructured", parameters_to_prune=params, amount=amount, verbose=0)]


def _fit(config: str, epochs: int, steps: int, data) -> list[float]:
    import pytorch_lightning as pl

    stamps: list[float] = []

    class Clock(pl.Callback):
        def on_train_batch_start(self, *args):
            stamps.append(time.perf_counter())

        def on_train_end(self, *args):
            stamps.append(time.perf_counter())

    pl.seed_everything(0, verbose=False)
    model = _module()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=_callbacks(config, model, epochs) + [Clock()],
    )
    trainer.fit(model, data)
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]  # drop the first (warm-up) step


def run(args) -> dict:
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401 (it sets its logger's level on import; quiet it after)
    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.steps * 16, 200, 80, generator=g)  # (N, T, F)
    y = torch.randint(0, 32, (args.steps * 16, 200), generator=g)  # (N, T)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    configs = ["baseline", "compress", "compress-4bit", "modelpruning"]
    runs: dict[str, list[list[float]]] = {c: [] for c in configs}  # per repeat, step times
    for r in range(args.repeats):
        for c in configs[r % len(configs) :] + configs[: r % len(configs)]:  # rotate the order every repeat
            runs[c].append(_fit(c, args.epochs, args.steps, data))
    # Paired ratios: each repeat's configurations ran back to back, so their ratio cancels
    # the load drift of a shared machine; the median over repeats drops the outliers.
    paired_median = {
        c: statistics.median(statistics.median(a) / statistics.median(b) for a, b in zip(runs[c], runs["baseline"]))
        for c in configs[1:]
    }
    paired_mean = {
        c: statistics.median(statistics.fmean(a) / statistics.fmean(b) for a, b in zip(runs[c], runs["baseline"]))
        for c in configs[1:]
    }
    med = {c: statistics.median(t for run in runs[c] for t in run) for c in configs}
    result = {
        "model": "LSTM 2x256 over 80-dim features, batch 16, T=200, AdamW",
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "steps_per_config": {c: sum(len(run) for run in runs[c]) for c in configs},
        "median_step_s": med,
        "ratio_median": paired_median,
        "ratio_mean": paired_mean,
    }
    print(f"threads: {result['threads']}  repeats: {args.repeats}  steps per configuration: {result['steps_per_config']['baseline']}")
    print("median step: " + ", ".join(f"{c} {med[c] * 1e3:.1f} ms" for c in configs))
    for c in configs[1:]:
        print(
            f"{c:>14} / baseline: median step {paired_median[c]:.3f}, "
            f"mean step with epoch-boundary work {paired_mean[c]:.3f} (medians of paired ratios)"
        )
    return result
