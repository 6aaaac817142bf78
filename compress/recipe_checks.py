"""Checks of a recipe config before anything is built, with messages that name the key.

Hydra itself reports an unknown config-group option ("Could not find 'compression/x'",
with the available options). What Hydra cannot know is which values make sense for our
callbacks; those are checked here, so a sweep fails at once with the key's full path
rather than minutes later inside a callback.
"""

from __future__ import annotations

from collections.abc import Mapping


class ConfigError(ValueError):
    """A recipe config value is invalid; the message starts with the key's dotted path."""


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def check_config(cfg) -> None:
    """Raise ``ConfigError`` naming the first invalid key of a ``recipes/train.yaml`` config.

    Example:
        >>> from omegaconf import OmegaConf
        >>> check_config(OmegaConf.create({"compression": {"s": {"_target_": "x.Y", "final_sparsity": 1.5}}}))
        Traceback (most recent call last):
        ...
        recipe_checks.ConfigError: compression.s.final_sparsity: expected a number in [0, 1), got 1.5
    """
    compression = cfg.get("compression") or {}
    if not isinstance(compression, Mapping):
        raise ConfigError(
            f"compression: expected a mapping of callback name -> config with _target_, got {type(compression).__name__}"
        )
    for name, sub in compression.items():
        key = f"compression.{name}"
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise ConfigError(f"{key}: expected a callback config with a _target_ key, got {sub!r}")
        if "final_sparsity" in sub:
            s = sub["final_sparsity"]
            if not _is_number(s) or not 0.0 <= s < 1.0:
                raise ConfigError(f"{key}.final_sparsity: expected a number in [0, 1), got {s!r}")
        if "bits" in sub:
            b = sub["bits"]
            if not _is_int(b) or not 2 <= b <= 8:
                raise ConfigError(f"{key}.bits: expected an integer in 2..8, got {b!r}")
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs", 1)
    if not _is_int(epochs) or epochs < 1:
        raise ConfigError(f"trainer.max_epochs: expected an integer >= 1, got {epochs!r}")
    threads = cfg.get("threads", 1)
    if not _is_int(threads) or threads < 1:
        raise ConfigError(f"threads: expected an integer >= 1, got {threads!r}")
