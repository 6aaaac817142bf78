"""The steps every front end runs: build from a recipe, evaluate, pack, reload, evaluate again.

``compress-train`` (``compress.train.run``), the benchmark (``compress.bench``) and the
``compress evaluate`` / ``compress transcribe`` commands are sequences of these steps;
none of them re-implements one.

Building (from a composed ``recipes/train.yaml`` config):

- ``instantiate(cfg, key)``: ``hydra.utils.instantiate`` whose errors are a ``ConfigError``
  naming the config key;
- ``build_datamodule``, ``build_model``, ``build_callbacks``: the recipe's ``data``,
  ``model`` and ``compression`` sections.

Evaluating and exporting:

- ``evaluate(model, loaders)``: WER/CER on every test split, one ``trainer.test`` each;
- ``pack_checkpoint``: a checkpoint into a ``.psq`` file (post-training int8 for runs without
  a regularizer); ``reload``: the recipe's model with the weights decoded from a ``.psq``.

Using a trained model (the commands):

- ``load_model(MODEL, recipe)``: a ``.ckpt`` or ``.psq`` and the recipe it came from (found
  beside the file: ``results.json`` or ``.hydra/config.yaml``; a ``.ckpt`` also works alone
  from its saved hyperparameters), as a ``LoadedModel``;
- ``evaluate_manifests``: WER/CER on the ``test*.jsonl`` manifests of a folder;
- ``transcribe_files``: the text of WAV files, with the recipe's features.

Each of the three takes ``engine``: ``"torch"`` (the PyTorch model) or ``"c"`` (a ``ctc_lstm``
``.psq`` run by the C engine, ``compress.native.engine``, with the recipe's strides and
``upsample``; the file is its only weight input).

Mistakes in the commands' inputs raise ``compress.errors.ArgumentError`` naming the argument.
Nothing here is imported by ``import compress``; hydra, torch and Lightning load on first use.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from compress.errors import ArgumentError
from compress.recipe_checks import ConfigError

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


# -- building from a recipe ---------------------------------------------------------------
def instantiate(cfg, key: str, **kwargs):
    """``hydra.utils.instantiate`` whose errors name the config key that failed."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        # _convert_="all": plain dicts/lists reach the constructors, so hyperparameters
        # saved in the checkpoint hold no OmegaConf objects and the checkpoint loads with
        # torch.load(weights_only=True), as `compress export` does by default.
        return hydra_instantiate(cfg, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"{key}: {cause}") from None


def build_callbacks(cfg) -> list:
    """The compression callbacks of ``cfg.compression``: a mapping name -> ``_target_`` config."""
    callbacks = []
    for name, sub in (cfg.get("compression") or {}).items():
        callbacks.append(instantiate(sub, f"compression.{name}"))
    return callbacks


def build_datamodule(cfg, **kwargs):
    """The recipe's data module (``cfg.data``); ``kwargs`` override its settings."""
    return instantiate(cfg.data, "data", **kwargs)


def build_model(cfg):
    """A fresh model of the recipe (``cfg.model``)."""
    return instantiate(cfg.model, "model")


# -- evaluating ------------------------------------------------------------------------------
def quiet_lightning() -> None:
    """Evaluation trainers are built once per split; their start-up banner is noise."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)


def eval_trainer():
    """A CPU trainer for ``trainer.test``: no logger, no progress bar, no checkpoints."""
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False)


def evaluate_loader(model, loader, trainer_factory=eval_trainer) -> dict:
    """``{"wer", "cer"}`` of ``model`` on one loader (one ``trainer.test``)."""
    (metrics,) = trainer_factory().test(model, dataloaders=loader, verbose=False)
    return {"wer": float(metrics["test/wer"]), "cer": float(metrics["test/cer"])}


def evaluate(model, loaders: Mapping, trainer_factory=eval_trainer) -> dict:
    """WER/CER on every test split: ``{split: {"wer", "cer"}}`` for ``{split: loader}``
    (``dm.test_dataloaders()``), one ``trainer.test`` per split."""
    return {split: evaluate_loader(model, loader, trainer_factory) for split, loader in loaders.items()}


# -- packing and reloading ------------------------------------------------------------------
@dataclass
class Packed:
    """What ``pack_checkpoint`` did: the file's summary, the callbacks' state it read, and
    the post-training bits it used (None when the regularizer's grid was used)."""

    path: Path
    summary: object
    state: object
    bits: dict | None


def pack_checkpoint(ckpt_path, packed_path, recipe: str | None = None, progress: bool = False) -> Packed:
    """Pack a compress-train checkpoint into ``packed_path``.

    Without a regularizer the weights were never trained toward a grid: pruned-only runs
    are rounded to int8 after training (post-training quantization); the fp32 baseline
    passes through unquantized.
    """
    import torch

    from compress.export.pack import pack
    from compress.export.sources import read_compression_state

    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    state = read_compression_state(checkpoint)
    bits = None if state.has_regularizer else {name: 8 for name in state.masks}
    summary = pack(checkpoint, str(packed_path), bits=bits, recipe=recipe, progress=progress)
    return Packed(Path(packed_path), summary, state, bits)


def reload(cfg, packed_path):
    """The recipe's model holding the weights decoded from ``packed_path``, in eval mode."""
    from compress.decoder.fast import load

    model = build_model(cfg)
    model.load_state_dict(load(packed_path), strict=True)
    model.eval()
    return model


# -- using a trained model: MODEL and its recipe ----------------------------------------------
RECIPE_FILES = ("results.json", ".hydra/config.yaml")  # beside MODEL, in this order
RECIPE_KINDS = "a results.json or a Hydra .hydra/config.yaml"


ENGINES = ("torch", "c")


@dataclass
class LoadedModel:
    """A trained model ready for inference, with the recipe settings it needs.

    ``model`` is the LightningModule (``engine="torch"``) or a ``compress.native.engine.Engine``
    (``engine="c"``); both have ``transcribe(features, feature_lengths)``."""

    model: object
    source: str  # where the recipe came from: a file, or "the checkpoint's hyperparameters"
    data: dict = field(default_factory=dict)  # the recipe's ``data`` section
    engine: str = "torch"

    @property
    def n_mels(self) -> int:
        return int(self.data.get("n_mels", 80))

    @property
    def normalize(self) -> bool:
        return bool(self.data.get("normalize", True))

    @property
    def eval_batch_size(self) -> int:
        return int(self.data.get("eval_batch_size", 64))

    def featurizer(self):
        """The data module's feature extraction with the recipe's settings."""
        from compress.data.features import LogMel

        return LogMel(n_mels=self.n_mels, normalize=self.normalize)


def read_recipe(path) -> dict:
    """``{"model": ..., "data": ...}`` of a ``results.json`` (its ``config``) or of a Hydra
    ``config.yaml``, resolved; ``ArgumentError("recipe", ...)`` when it holds neither."""
    path = Path(path)
    if not path.is_file():
        raise ArgumentError.must("recipe", RECIPE_KINDS, str(path), "no such file")
    if path.suffix == ".json":
        try:
            cfg = json.loads(path.read_text()).get("config")
        except (ValueError, AttributeError) as err:
            raise ArgumentError.must("recipe", "a compress-train results.json", str(path), str(err)) from None
    elif path.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        try:
            raw = OmegaConf.load(path)
            # Only model and data are resolved: `recipe` uses the hydra: resolver.
            cfg = {k: OmegaConf.to_container(raw[k], resolve=True) for k in ("model", "data") if k in raw}
        except Exception as err:  # noqa: BLE001 - any YAML or interpolation error
            raise ArgumentError.must("recipe", "a Hydra config.yaml", str(path), str(err)) from None
    else:
        raise ArgumentError.must("recipe", RECIPE_KINDS, str(path))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "_target_" not in cfg["model"]:
        raise ArgumentError.must("recipe", "a recipe config with a model._target_", str(path), "no model._target_")
    return {"model": cfg["model"], "data": cfg.get("data") or {}}


def find_recipe(model_path) -> Path | None:
    """The recipe file compress-train wrote beside ``model_path`` (None if there is none)."""
    folder = Path(model_path).resolve().parent
    for name in RECIPE_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _from_hyperparameters(ckpt: dict, path: Path):
    """The model of a checkpoint without a recipe: the class among ``compress.models`` that
    takes the checkpoint's hyperparameters and holds exactly its weights."""
    from compress.models import MODELS

    hp = dict(ckpt.get("hyper_parameters") or {})
    for cls in MODELS.values():
        try:
            model = cls(**hp)
            model.load_state_dict(ckpt["state_dict"], strict=True)
        except (TypeError, ValueError, RuntimeError):
            continue
        return model
    raise ArgumentError("model", f"{path}: found no recipe beside it ({' or '.join(RECIPE_FILES)}) and no model "
                                 f"of compress.models matches its hyperparameters and weights",
                        fix=("recipe", "RUN_DIR/results.json"))


def check_engine(engine) -> str:
    """``engine`` must be ``"torch"`` or ``"c"`` (``ArgumentError`` naming ``engine``)."""
    from compress.checks import check_choice

    return ArgumentError.check(check_choice, "engine", engine, choices=ENGINES)


def load_engine(path: Path, cfg: dict, recipe_path) -> LoadedModel:
    """The C engine on a ``ctc_lstm`` ``.psq``, configured by the recipe's ``model`` section."""
    from compress.native import NativeUnavailable
    from compress.native.engine import Engine, EngineConfig, EngineError

    try:
        config = EngineConfig.from_hparams(cfg["model"])
    except (ValueError, TypeError) as err:
        raise ArgumentError("recipe", f"{recipe_path}: {err}") from None
    try:
        engine = Engine(path, config)
    except EngineError as err:
        raise ArgumentError("model", f"{path}: the C engine cannot run it: {err}") from None
    except NativeUnavailable as err:
        raise ArgumentError("engine", f"'c' is unavailable: {err}") from None
    return LoadedModel(engine, str(recipe_path), cfg["data"], engine="c")


def load_model(model_path, recipe=None, engine: str = "torch") -> LoadedModel:
    """A ``.ckpt`` (written by compress-train) or ``.psq`` file as a model in eval mode.

    Args:
        model_path: the model file.
        recipe: a ``results.json`` or Hydra ``config.yaml``; default: the one beside
            ``model_path``. A ``.ckpt`` without one is rebuilt from its saved hyperparameters.
        engine: ``"torch"``, or ``"c"``: the C engine on a ``ctc_lstm`` ``.psq`` (the recipe
            gives its strides and ``upsample``).

    Raises:
        ArgumentError: naming ``model``, ``recipe`` or ``engine``: no such file, not a model
            file, no recipe found, a recipe whose model does not match the weights, or (``c``)
            a file that is not a packed ``ctc_lstm`` (naming the tensor it lacks).
    """
    import torch

    check_engine(engine)
    path = Path(model_path)
    if not path.is_file():
        raise ArgumentError.must("model", "a .ckpt or .psq file", str(path), "no such file")
    if path.suffix not in (".ckpt", ".psq"):
        raise ArgumentError.must("model", "a .ckpt (Lightning checkpoint) or .psq (packed file)", str(path))
    recipe_path = Path(recipe) if recipe is not None else find_recipe(path)
    cfg = read_recipe(recipe_path) if recipe_path is not None else None
    if path.suffix == ".psq":
        from compress.decoder.fast import load

        if cfg is None:
            raise ArgumentError("model", f"{path}: found no recipe beside it ({' or '.join(RECIPE_FILES)} in "
                                         f"{path.resolve().parent}); a .psq file holds weights only",
                                fix=("recipe", "RUN_DIR/results.json"))
        if engine == "c":
            return load_engine(path, cfg, recipe_path)
        state = load(path)
    elif engine == "c":
        raise ArgumentError.must("model", "a .psq file for the C engine (it runs packed files only)", str(path))
    else:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - torch reports a bad file in many ways
            first = str(err).splitlines()[0] if str(err) else ""
            raise ArgumentError.must("model", "a Lightning checkpoint", str(path),
                                     f"{type(err).__name__}: {first}") from None
        if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
            raise ArgumentError.must("model", "a Lightning checkpoint with a state_dict", str(path), "no state_dict")
        if cfg is None:
            model = _from_hyperparameters(ckpt, path)
            model.eval()
            data = dict(ckpt.get("datamodule_hyper_parameters") or {})
            return LoadedModel(model, "the checkpoint's hyperparameters", data)
        state = ckpt["state_dict"]
    from omegaconf import OmegaConf

    model = instantiate(OmegaConf.create(cfg["model"]), "model")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ArgumentError("recipe", f"the model of {recipe_path} does not match the weights of {path}: "
                                      f"{str(err).splitlines()[0]}") from None
    model.eval()
    return LoadedModel(model, str(recipe_path), cfg["data"])


# -- the commands' work ------------------------------------------------------------------------
def manifest_test_loaders(manifest_dir, loaded: LoadedModel) -> dict:
    """``{split: loader}`` of every ``test*.jsonl`` in ``manifest_dir`` (train/valid not needed),
    with the recipe's features and evaluation batch size."""
    from compress.data.datamodule import FeatureDataset, eval_loader
    from compress.data.manifest import ManifestDataset

    folder = Path(manifest_dir)
    if not folder.is_dir():
        raise ArgumentError.must("manifest_dir", "a folder with test*.jsonl manifests", str(folder), "no such folder")
    found = {p.stem: p for p in sorted(folder.glob("test*.jsonl"))}
    if not found:
        names = sorted(p.name for p in folder.glob("*.jsonl"))
        raise ArgumentError.must("manifest_dir", "a folder with at least one test*.jsonl", str(folder),
                                 f"holding {', '.join(names) or 'no .jsonl'}")
    featurizer = loaded.featurizer()
    loaders = {}
    for split, manifest in found.items():
        try:
            ds = FeatureDataset(ManifestDataset(manifest), featurizer, cache=True)
        except (ValueError, EOFError) as err:
            raise ArgumentError("manifest_dir", str(err)) from None
        loaders[split] = eval_loader(ds, loaded.eval_batch_size)
    return loaders


def evaluate_transcriber(model, loader) -> dict:
    """``{"wer", "cer"}`` of anything with ``transcribe(features, feature_lengths)`` (the C
    engine) on one loader, with the metrics the models' test step logs (corpus-level
    torchmetrics WER/CER), so equal transcripts give equal figures."""
    from torchmetrics.text import CharErrorRate, WordErrorRate

    wer, cer = WordErrorRate(), CharErrorRate()
    for batch in loader:
        preds = model.transcribe(batch["features"], batch["feature_lengths"])
        wer.update(preds, batch["texts"])
        cer.update(preds, batch["texts"])
    return {"wer": float(wer.compute()), "cer": float(cer.compute())}


def evaluate_manifests(model_path, manifest_dir, recipe=None, engine: str = "torch") -> dict:
    """WER/CER of a trained model on every ``test*.jsonl`` of ``manifest_dir``:
    ``{split: {"wer", "cer"}}``, the figures ``results.json`` records for the same data.
    ``engine="c"`` runs a ``ctc_lstm`` ``.psq`` in the C engine, one utterance at a time."""
    loaded = load_model(model_path, recipe, engine=engine)
    loaders = manifest_test_loaders(manifest_dir, loaded)
    if loaded.engine == "c":
        return {split: evaluate_transcriber(loaded.model, loader) for split, loader in loaders.items()}
    quiet_lightning()
    return evaluate(loaded.model, loaders)


def read_audio(path):
    """A WAV file as 16 kHz float32 mono (``read_wav``); ``ArgumentError("audio", ...)`` if it is
    missing or not a PCM WAV file."""
    import wave

    from compress.data.manifest import read_wav

    path = Path(path)
    if not path.is_file():
        raise ArgumentError.must("audio", "a WAV file", str(path), "no such file")
    try:
        return read_wav(path)
    except (wave.Error, EOFError, ValueError) as err:
        raise ArgumentError.must("audio", "a PCM WAV file", str(path), str(err) or "a truncated file") from None


def transcribe_files(model_path, audio_paths: Sequence, recipe=None, engine: str = "torch") -> list[tuple[str, str]]:
    """``[(path, text)]``: each WAV file decoded by the model, one at a time, on the features the
    data module computes (the recipe's ``n_mels`` and ``normalize``). Every file is read before
    the model is loaded, so a bad one fails at once. ``engine="c"``: see ``load_model``."""
    import torch

    check_engine(engine)
    if not audio_paths:
        raise ArgumentError.must("audio", "one or more WAV files", list(audio_paths))
    audio = [read_audio(p) for p in audio_paths]
    loaded = load_model(model_path, recipe, engine=engine)
    featurizer = loaded.featurizer()
    out = []
    with torch.no_grad():
        for p, a in zip(audio_paths, audio):
            feats = featurizer(a)
            (text,) = loaded.model.transcribe(feats[None], torch.tensor([feats.shape[0]]))
            out.append((os.fspath(p), text))
    return out
