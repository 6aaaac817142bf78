"""Checks of a recipe config before anything is built, with messages that name the key.

Hydra itself reports an unknown config-group option ("Could not find 'compression/x'",
with the available options). What Hydra cannot know is which values make sense for our
callbacks; those are checked here, so a sweep fails at once with the key's full path
rather than minutes later inside a callback.
"""

from __future__ import annotations

from collections.abc import Mapping

from compress import checks


class ConfigError(ValueError):
    """A recipe config value is invalid; the message starts with the key's dotted path."""


def _check(check, key: str, value, **kwargs):
    """``check(key, value, ...)`` from ``compress.checks``, its error a ``ConfigError``."""
    try:
        return check(key, value, **kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def check_config(cfg) -> None:
    """Raise ``ConfigError`` naming the first invalid key of a ``recipes/train.yaml`` config.

    Example:
        >>> from omegaconf import OmegaConf
        >>> check_config(OmegaConf.create({"compression": {"s": {"_target_": "x.Y", "final_sparsity": 1.5}}}))
        Traceback (most recent call last):
        ...
        compress.recipe_checks.ConfigError: compression.s.final_sparsity must be a number in [0, 1), got 1.5
    """
    compression = cfg.get("compression") or {}
    if not isinstance(compression, Mapping):
        raise ConfigError(f"compression must be a mapping of callback name -> config with _target_, "
                          f"got {type(compression).__name__}")
    for name, sub in compression.items():
        key = f"compression.{name}"
        if not isinstance(sub, Mapping) or "_target_" not in sub:
            raise ConfigError(f"{key} must be a callback config with a _target_ key, got {sub!r}")
        if "final_sparsity" in sub:
            _check(checks.check_fraction, f"{key}.final_sparsity", sub["final_sparsity"], below_one=True)
        if "bits" in sub:
            _check(checks.check_bits, f"{key}.bits", sub["bits"])
    trainer = cfg.get("trainer") or {}
    _check(checks.check_int, "trainer.max_epochs", trainer.get("max_epochs", 1), min=1)
    _check(checks.check_int, "threads", cfg.get("threads", 1), min=1)
