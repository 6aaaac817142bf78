"""``ArgumentError``: a bad argument of a library function, kept in parts for each front end.

The same mistake reads ``model_class: ...`` in Python and ``--model-class: ...`` on the
command line; the library names its parameters and a command re-spells them.

Example:
    >>> err = ArgumentError("frames", "expected an integer >= 1, got 0")
    >>> str(err), err.spell({"frames": "--frames"})
    ('frames: expected an integer >= 1, got 0', '--frames: expected an integer >= 1, got 0')
"""

from __future__ import annotations

from collections.abc import Mapping


class ArgumentError(ValueError):
    """A bad or missing argument: which one, what was expected and what was found.

    Args:
        argument: the parameter at fault, or None where no single one is.
        message: what was expected and what was found.
        fix: ``(parameter, example)`` that resolves it when passed, e.g. ``("features", "N")``.
    """

    def __init__(self, argument: str | None, message: str, fix: tuple[str, str] | None = None):
        self.argument, self.message, self.fix = argument, message, fix
        super().__init__(self.spell())

    def __reduce__(self):  # picklable with its parts (the default would pass only the text)
        return type(self), (self.argument, self.message, self.fix)

    def spell(self, names: Mapping[str, str] | None = None) -> str:
        """The message, parameters spelled by ``names`` (``{parameter: flag}``), else as in Python."""
        name = (lambda p: p) if names is None else (lambda p: names.get(p, p))
        text = self.message if self.argument is None else f"{name(self.argument)}: {self.message}"
        if self.fix is not None:
            param, example = self.fix
            text += f"; pass {param}={example}" if names is None else f"; pass {name(param)} {example}"
        return text
