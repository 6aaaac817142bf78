"""Where a training run's time goes, and how long it has left.

``StageTimer`` splits every training step into the stages a profile of the default run
needs: fetching the batch, forward (with the loss), backward, the other callbacks' hooks
(the compression callbacks), and the optimizer step (with gradient clipping); and it
times validation. It works from hook timestamps, so it adds no synchronisation and no
wrapper: it must be the first callback, and its companion ``timer.closing`` the last, so
that what runs between the two in one hook is the other callbacks' time::

    >>> timer = StageTimer()
    >>> callbacks = timer.around([])       # [timer, *your callbacks, timer.closing]
    >>> len(callbacks), sorted(timer.summary())[:3]
    (2, ['backward', 'callbacks', 'data'])

``RunProgress`` is a Lightning progress bar with one bar for the whole fit. After the
first ``warmup_steps`` steps it prints how long the run will take (training steps at the
measured speed, validation, and the evaluation after training); the bar's ETA then
counts every epoch left, validation included.
"""

from __future__ import annotations

import sys
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks.progress import ProgressBar

from compress.checks import check_int

STAGES = ("data", "forward", "backward", "callbacks", "optimizer", "validation")


class _Closing(pl.Callback):
    """The last callback: stamps the end of each hook for ``StageTimer``."""

    def __init__(self, timer: StageTimer):
        self.timer = timer

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.timer._switch("forward")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.timer._switch("backward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self.timer._switch(None)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.timer._switch("optimizer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.timer._switch("data")


class StageTimer(pl.Callback):
    """Seconds spent per stage of training (see the module docstring).

    ``summary()`` returns ``{stage: seconds}`` for ``STAGES`` plus ``steps``, the number
    of training steps timed. ``data`` is the time between two steps outside validation:
    the DataLoader (collate, SpecAugment) and Lightning's own bookkeeping.
    """

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.closing = _Closing(self)
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.steps = 0
        self._stage: str | None = None  # the stage running since self._t (None: not timed)
        self._t = 0.0

    def around(self, callbacks: list) -> list:
        """``[self, *callbacks, self.closing]``: the order the timer needs."""
        return [self, *callbacks, self.closing]

    def summary(self) -> dict:
        return {**{k: round(v, 3) for k, v in self.seconds.items()}, "steps": self.steps}

    def _switch(self, stage: str | None) -> None:
        """Charge the time since the last switch to the running stage; start ``stage``."""
        now = self.clock()
        if self._stage is not None:
            self.seconds[self._stage] += now - self._t
        self._stage, self._t = stage, now

    # A hook on this, the first callback, starts the other callbacks' time; the same hook on
    # the closing companion, the last callback, ends it and starts the next stage.
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._switch("data")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._switch("callbacks")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._switch("callbacks")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._switch("callbacks")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Between on_after_backward's closing stamp and here: nothing of the step (the
        # other callbacks' on_after_backward ran before the stamp).
        self._switch("callbacks")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._switch("callbacks")
        self.steps += 1

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._switch("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._switch("data")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._switch(None)


def format_seconds(s: float) -> str:
    """``"1 min 05 s"``, ``"42 s"``."""
    s = int(round(max(s, 0.0)))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


class RunProgress(ProgressBar):
    """One progress bar for the whole fit, with an up-front estimate and an ETA.

    Args:
        warmup_steps: training steps measured before the estimate is printed (the first
            step is left out of the rate: it pays one-off start-up costs).
        after_fit_batches: evaluation batches run after ``fit`` (the test splits, once per
            model evaluated); the estimate prices them like validation batches.
        stream: where the bar and the estimate go.

    Example:
        >>> bar = RunProgress(warmup_steps=5)
        >>> bar.estimate(steps_left=100, val_runs=3, step_s=0.5, val_s=4.0, after_s=10.0)
        72.0
    """

    def __init__(self, warmup_steps: int = 5, after_fit_batches: int = 0, stream=None):
        super().__init__()
        self.warmup_steps = check_int("warmup_steps", warmup_steps, min=1)
        self.after_fit_batches = after_fit_batches
        self.stream = stream
        self._enabled = True
        self._bar = None
        self._steps = 0
        self._step_t0 = None  # after the first step
        self._train_s = 0.0   # training time since the first step, validation excluded
        self._val_s = None    # seconds of one validation run, once measured
        self._val_batch_s = None
        self._val_t = 0.0

    # ------------------------------------------------------------ ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    @staticmethod
    def estimate(steps_left: float, val_runs: int, step_s: float, val_s: float, after_s: float) -> float:
        """Seconds left: training steps, validation runs and the evaluation after fit."""
        return steps_left * step_s + val_runs * val_s + after_s

    def _total_steps(self, trainer) -> int:
        return int(trainer.estimated_stepping_batches)

    def _val_runs_left(self, trainer) -> int:
        if not trainer.enable_validation:
            return 0
        return max(int(trainer.max_epochs) - int(trainer.current_epoch), 0)

    def _val_batches(self, trainer) -> int:
        return int(sum(trainer.num_val_batches)) if trainer.num_val_batches else 0

    def _seconds_left(self, trainer) -> float | None:
        if self._steps <= 1 or self._train_s <= 0:
            return None
        step_s = self._train_s / (self._steps - 1)
        # Until a validation run is measured, a validation batch is priced like a third of
        # a training step (forward only, larger batches).
        val_batch_s = self._val_batch_s if self._val_batch_s is not None else step_s / 3
        val_s = self._val_s if self._val_s is not None else val_batch_s * self._val_batches(trainer)
        after_s = val_batch_s * self.after_fit_batches
        return self.estimate(self._total_steps(trainer) - self._steps, self._val_runs_left(trainer),
                             step_s, val_s, after_s)

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._enabled or trainer.global_rank != 0:
            return
        from tqdm.auto import tqdm

        self._bar = tqdm(total=self._total_steps(trainer), desc="training", unit="step",
                         file=self._out(), dynamic_ncols=True, leave=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
        self._bar.set_postfix_str("ETA ?")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self._steps += 1
        if self._steps == 1:
            self._step_t0 = now
        else:
            self._train_s += now - self._step_t0
            self._step_t0 = now
        if self._bar is None:
            return
        if self._steps == self.warmup_steps + 1:
            self._print_estimate(trainer)
        left = self._seconds_left(trainer)
        metrics = self.get_metrics(trainer, pl_module)
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if "train/loss" in metrics:
            parts.append(f"loss {float(metrics['train/loss']):.3f}")
        if "val/wer" in metrics:
            parts.append(f"val WER {100 * float(metrics['val/wer']):.1f}%")
        self._bar.set_description_str(", ".join(parts))
        self._bar.set_postfix_str("ETA " + (format_seconds(left) if left is not None else "?"))
        self._bar.update(1)

    def _print_estimate(self, trainer) -> None:
        left = self._seconds_left(trainer)
        step_s = self._train_s / (self._steps - 1)
        self._bar.write(
            f"speed: {step_s:.2f} s per training step (steps 2-{self._steps}); "
            f"{trainer.max_epochs} epochs x {self.total_train_batches} steps, validation and the "
            f"final evaluation will take about {format_seconds(left + self._train_s)} in all, "
            f"{format_seconds(left)} from now", file=self._out())

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._step_t0 is not None:  # the time since the last step was training's
            self._train_s += time.perf_counter() - self._step_t0
        self._val_t = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self._val_s = time.perf_counter() - self._val_t
        self._val_batch_s = self._val_s / max(self._val_batches(trainer), 1)
        self._step_t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str("done")
            self._bar.close()
            self._bar = None
