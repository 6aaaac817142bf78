"""The baselines of the accuracy/size benchmark, each packed into a PSQ file.

* Post-training quantization (PTQ): the trained weights rounded to the grid of
  ``compress.quant.grid`` once, after training, with per-channel scales from
  ``grid.compute_scale`` (MSE-optimal clipping at <= 4 bits, as the regularizer uses).
* One-shot magnitude pruning: the trained weights pruned once, per tensor, to an exact
  count (``compress.sparsity.masks.magnitude_masks``, the rule the sparsifier uses), then PTQ.
* Lightning's ``ModelPruning`` callback on the same targets, with its per-epoch amount
  chosen so that the cumulative sparsity follows the sparsifier's schedule (see
  ``incremental_amounts``), then PTQ.

``plan`` lists the five trainings of ``compress.bench.accuracy`` and the rows each yields;
``pack_row`` writes one row's packed file.

Example:
    >>> import torch
    >>> pruned, masks = prune_oneshot({"w": torch.tensor([0.3, -0.1, 0.2, 0.4])}, 0.5)
    >>> pruned["w"].tolist()
    [0.30000001192092896, 0.0, 0.0, 0.4000000059604645]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch

from compress.quant import grid
from compress.sparsity.masks import magnitude_masks
from compress.sparsity.schedule import Schedule, check_sparsity, sparsity_at

default_clip = grid.default_clip  # the one rule; kept importable from here


def ptq(weights: Mapping[str, torch.Tensor], bits: int, clip: str | None = None,
        granularity: str = "channel") -> tuple[dict, dict]:
    """Round ``weights`` to the ``bits``-bit grid once (post-training quantization).

    Args:
        weights: name -> float tensor to quantize (the compressed targets only).
        bits: grid bit width, 2..8.
        clip: "max", "mse", or None for ``default_clip(bits)``.
        granularity: "channel" (one scale per output channel, axis 0) or "tensor".

    Returns:
        ``(snapped, scales)``: name -> weights on the grid (zeros stay exactly zero), and
        name -> float32 scale of shape ``(C,)`` or ``()``.
    """
    clip = default_clip(bits) if clip is None else clip
    snapped, scales = {}, {}
    for name, w in weights.items():
        if not w.is_floating_point():
            raise TypeError(f"weights[{name!r}] must be a floating tensor, got {w.dtype}")
        s = grid.compute_scale(w, bits, granularity, clip)
        snapped[name] = grid.snap(w.detach().to(torch.float32), s, bits).to(w.dtype)
        scales[name] = s
    return snapped, scales


def prune_oneshot(weights: Mapping[str, torch.Tensor], sparsity: float) -> tuple[dict, dict]:
    """Prune each tensor once to exactly ``floor(sparsity * numel + 0.5)`` zeros by magnitude.

    Args:
        weights: name -> trained weight tensor.
        sparsity: fraction of each tensor to prune, in [0, 1).

    Returns:
        ``(pruned, masks)``: name -> weights with the smallest magnitudes set to 0, and
        name -> bool mask (True = kept).
    """
    sparsity = check_sparsity(sparsity, "sparsity")
    masks = magnitude_masks({n: w.detach() for n, w in weights.items()}, sparsity, "layer")
    pruned = {n: w.detach() * masks[n].to(w.dtype) for n, w in weights.items()}
    return pruned, masks


def pack_ptq(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, targets: Sequence[str],
             bits: int, clip: str | None = None, granularity: str = "channel", recipe: str | None = None):
    """PTQ of ``targets`` in ``state_dict``, then ``compress.export.pack`` with those scales.

    The scales are computed here (so that 4-bit rows get MSE clipping) and passed to the
    packer with the snapped weights; the packer checks they sit on the grid. Zeros are
    recorded as masks, so a pruned weight is stored as omitted, not as a level.

    Returns:
        The ``PackSummary`` of the written file.
    """
    from compress.export import pack

    missing = [n for n in targets if n not in state_dict]
    if missing:
        raise ValueError(f"targets {missing} are not in the state dict")
    sd = {k: v.detach().cpu() for k, v in state_dict.items()}
    snapped, scales = ptq({n: sd[n] for n in targets}, bits, clip, granularity)
    sd.update(snapped)
    masks = {n: snapped[n] != 0 for n in targets}
    return pack(sd, path, bits={n: bits for n in targets}, scales=scales, masks=masks,
                granularity=granularity, recipe=recipe)


def pack_fp32(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, recipe: str | None = None):
    """Pack every tensor as fp32 passthrough (the uncompressed reference row)."""
    from compress.export import pack

    return pack({k: v.detach().cpu() for k, v in state_dict.items()}, path, bits={}, recipe=recipe)


def incremental_amounts(final_sparsity: float, max_epochs: int, schedule: Schedule = "cubic",
                        start_epoch: int = 0, end_epoch: int | None = None,
                        initial_sparsity: float = 0.0) -> Callable[[int], float]:
    """``ModelPruning``'s ``amount(epoch)`` that tracks ``GradualSparsifier``'s schedule.

    The sparsifier installs ``sparsity_at(t)`` at the *start* of epoch ``t``, with
    ``end_epoch`` defaulting to ``max_epochs - 1`` as the callback does. ``ModelPruning``
    (``prune_on_train_epoch_end=True``) calls ``amount(e)`` at the *end* of epoch ``e``,
    which is the same point of training as the start of epoch ``e + 1``; so at that call
    the cumulative sparsity must go from ``sparsity_at(e)`` (0 for ``e = 0``: nothing is
    pruned before the first epoch ends) to ``sparsity_at(e + 1)``. Each torch pruning step
    removes a float ``amount`` of the weights still unpruned, hence the ratio
    ``(c − p) / (1 − p)``. The two runs then prune at the same moments, except that a
    schedule that is already non-zero at epoch 0 (``initial_sparsity > 0`` or a one-epoch
    run) is applied by the sparsifier before training and by ``ModelPruning`` only after
    the first epoch. torch rounds each step's count (``round(amount * remaining)``), so a
    tensor may end up to one weight per pruning step away from the exact count.

    Args:
        final_sparsity: target sparsity at and after ``end_epoch``.
        max_epochs: the trainer's ``max_epochs``.
        schedule: "cubic", "linear" or a callable, as ``compress.sparsity.schedule.sparsity_at``.
        start_epoch: first epoch of the schedule.
        end_epoch: epoch from which the target is final; None = ``max(max_epochs - 1, start_epoch)``.
        initial_sparsity: target before ``start_epoch``.

    Returns:
        A function of the 0-based epoch giving the fraction of the remaining weights to prune.
    """
    if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"max_epochs must be an integer >= 1, got {max_epochs!r}")
    end = max(max_epochs - 1, start_epoch) if end_epoch is None else end_epoch

    def target(epoch: int) -> float:
        return sparsity_at(epoch, final_sparsity, start_epoch, end, schedule, initial_sparsity)

    target(0)  # validate the arguments now, not at the end of the first epoch

    def amount(epoch: int) -> float:
        before = 0.0 if epoch == 0 else target(epoch)
        after = target(epoch + 1)
        return (after - before) / (1.0 - before) if after > before else 0.0

    return amount


def cumulative_sparsity(amount: Callable[[int], float], epochs: int) -> float:
    """Sparsity reached after ``epochs`` end-of-epoch steps of ``amount`` (ignoring rounding)."""
    kept = 1.0
    for e in range(epochs):
        kept *= 1.0 - amount(e)
    return 1.0 - kept


def lightning_pruning(model: torch.nn.Module, final_sparsity: float, max_epochs: int, schedule: Schedule = "cubic",
                      start_epoch: int = 0, end_epoch: int | None = None, targets: Sequence[str] | None = None):
    """Lightning's ``ModelPruning`` on the sparsifier's targets and schedule (L1, per tensor).

    ``use_lottery_ticket_hypothesis`` is turned off: Lightning's default would reset the
    kept weights to their initial values after every pruning step, which is a different
    method (re-training a winning ticket), not gradual magnitude pruning during training.

    Args:
        model: the LightningModule to be trained.
        final_sparsity: sparsity at the end of the schedule.
        max_epochs: the trainer's ``max_epochs``.
        schedule, start_epoch, end_epoch: as ``GradualSparsifier``.
        targets: parameter FQNs; None = ``compress.find_targets(model)``.
    """
    from pytorch_lightning.callbacks import ModelPruning

    from compress.targets import find_targets

    names = [t.name for t in find_targets(model)] if targets is None else list(targets)
    pairs = []
    for name in names:
        owner, _, local = name.rpartition(".")
        try:
            module = model.get_submodule(owner) if owner else model
        except AttributeError:
            module = None
        if not isinstance(getattr(module, local, None), torch.nn.Parameter):
            raise ValueError(f"targets: {name!r} is not a parameter of the model")
        pairs.append((module, local))
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=pairs,
        amount=incremental_amounts(final_sparsity, max_epochs, schedule, start_epoch, end_epoch),
        use_global_unstructured=False,
        use_lottery_ticket_hypothesis=False,
        make_pruning_permanent=True,
        prune_on_train_epoch_end=True,
        verbose=0,
    )


def pack_row(row: Mapping, state_dict: Mapping[str, torch.Tensor], checkpoint: str | os.PathLike,
             path: str | os.PathLike, targets: Sequence[str]) -> None:
    """Write the packed file of one benchmark row.

    Args:
        row: ``{"method": "fp32"|"ptq"|"oneshot"|"lightning"|"ours", "key": str}`` plus
            ``bits``, ``clip``, ``granularity`` (PTQ methods) and ``target_sparsity`` (one-shot).
        state_dict: the trained weights (``checkpoint["state_dict"]``).
        checkpoint: the checkpoint file (``ours`` takes bits, scales and masks from it).
        path: the packed file to write.
        targets: the compressed parameters' names.
    """
    from compress.export import pack

    method = row["method"]
    if method == "fp32" or unrounded(row):
        pack_fp32(state_dict, path, recipe=row["key"])  # a pruned model not rounded: what pruning alone costs
    elif method in ("ptq", "lightning", "sparse"):  # sparse: GradualSparsifier alone, then PTQ
        pack_ptq(state_dict, path, targets, row["bits"], row["clip"], row["granularity"], recipe=row["key"])
    elif method == "oneshot":
        pruned, _ = prune_oneshot({n: state_dict[n] for n in targets}, row["target_sparsity"])
        pack_ptq({**state_dict, **pruned}, path, targets, row["bits"], row["clip"], row["granularity"],
                 recipe=row["key"])
    elif method in ("ours", "fakequant"):  # bits, scales and masks from the callbacks' state
        pack(os.fspath(checkpoint), os.fspath(path), recipe=row["key"], trust_checkpoint=True)
    else:
        raise ValueError(f"row {row.get('key')!r}: method must be one of {METHODS}, got {method!r}")


def read_setting(cfg, recipe: str) -> dict:
    """Sparsity schedule and grid of a recipe's callbacks (what the baselines must match).

    Args:
        cfg: the composed ``recipes/train.yaml`` config with ``compression=<recipe>``.
        recipe: that compression recipe's name (the name of our row).
    """
    from compress.pipeline import build_callbacks

    out = {"recipe": recipe}
    for cb in build_callbacks(cfg):
        if type(cb).__name__.startswith("GradualSparsifier"):
            if callable(cb.schedule):
                raise ValueError("compression: the benchmark needs a named sparsity schedule, got a callable")
            out.update(sparsity=cb.final_sparsity, schedule=cb.schedule, start_epoch=cb.start_epoch,
                       end_epoch=cb.end_epoch)
        elif type(cb).__name__.startswith("QuantizationRegularizer"):
            out.update(bits=cb.bits, clip=cb.clip, granularity=cb.granularity)
    if "sparsity" not in out or "bits" not in out:
        raise ValueError("compression: each bench setting needs a GradualSparsifier and a QuantizationRegularizer")
    return out


def plan(settings: dict) -> list[dict]:
    """The five trainings and the rows each one yields.

    Args:
        settings: setting name -> ``read_setting`` of our recipe for it.

    Returns:
        One dict per training: ``name``, ``compression`` (the recipe group option),
        ``pruning`` (``lightning_pruning`` arguments or None) and ``rows`` (``pack_row`` rows).
    """
    grid = {k: {"bits": s["bits"], "clip": s["clip"], "granularity": s["granularity"]} for k, s in settings.items()}
    fp32_rows = [{"key": "fp32", "method": "fp32", "setting": None}]
    for k, s in settings.items():
        fp32_rows.append({"key": f"ptq{s['bits']}", "method": "ptq", "setting": k, **grid[k]})
        fp32_rows.append({"key": f"oneshot{round(100 * s['sparsity'])}_ptq{s['bits']}", "method": "oneshot",
                          "setting": k, "target_sparsity": s["sparsity"], **grid[k]})
    jobs = [{"name": "fp32", "compression": "none", "pruning": None, "rows": fp32_rows}]
    for k, s in settings.items():
        pct = round(100 * s["sparsity"])
        jobs.append({"name": f"lightning{pct}", "compression": "none",
                     "pruning": {"final_sparsity": s["sparsity"], **{n: s[n] for n in ("schedule", "start_epoch", "end_epoch")}},
                     "rows": [{"key": f"lightning{pct}_ptq{s['bits']}", "method": "lightning", "setting": k,
                               "target_sparsity": s["sparsity"], **grid[k]}]})
    for k, s in settings.items():
        recipe = s["recipe"]
        jobs.append({"name": f"ours{round(100 * s['sparsity'])}", "compression": recipe, "pruning": None,
                     "rows": [{"key": recipe, "method": "ours", "setting": k, "target_sparsity": s["sparsity"],
                               "bits": s["bits"]}]})
    keys = [r["key"] for job in jobs for r in job["rows"]]
    if len(set(keys)) != len(keys):
        raise ValueError(f"settings: the bench settings must differ in bits and sparsity, got rows {keys}")
    return jobs


METHODS = ("fp32", "ptq", "oneshot", "lightning", "sparse", "fakequant", "ours")


def unrounded(row: Mapping) -> bool:
    """A pruned model's row with no bits: packed in fp32, what pruning alone costs."""
    return row["method"] in ("lightning", "sparse") and row.get("bits") is None


def label(row: dict) -> str:
    """Human name of a row, e.g. "one-shot prune 75% + PTQ int4"."""
    method, q = row["method"], f"PTQ int{row.get('bits')}"
    if unrounded(row):
        method += "_fp32"
    pct = f"{100 * row.get('target_sparsity', 0):g}%"
    return {"fp32": "fp32" if row["key"] == "fp32" else "fp32 fine-tuned, no compression", "ptq": q, "oneshot": f"one-shot prune {pct} + {q}",
            "lightning": f"Lightning ModelPruning {pct} + {q}", "sparse": f"GradualSparsifier {pct} alone + {q}",
            "lightning_fp32": f"Lightning ModelPruning {pct}, fp32 (not rounded)",
            "sparse_fp32": f"GradualSparsifier {pct} alone, fp32 (not rounded)",
            "fakequant": f"fake-quant QAT (STE) {pct} int{row.get('bits')}", "ours": f"ours: {row['key']}"}[method]
