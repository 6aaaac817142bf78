"""``ArgumentError``: a bad argument of a library function, kept in parts for each front end.

The same mistake reads ``model_class must be …`` in Python and ``--model-class must be …``
on the command line; the library names its parameters and a command re-spells them. The
message follows ``compress.checks``: ``name must be <what>, got <value!r>``; a failure that
is not about the value's kind (a class that will not import, weights that do not fit) reads
``name: <what happened>``.

Example:
    >>> err = ArgumentError.must("frames", "an integer >= 1", 0)
    >>> str(err), err.spell({"frames": "--frames"})
    ('frames must be an integer >= 1, got 0', '--frames must be an integer >= 1, got 0')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


class ArgumentError(ValueError):
    """A bad or missing argument: which one, what was expected and what was found.

    Args:
        argument: the parameter at fault, or None where no single one is.
        message: what follows its name: ``must be <what>, got <value>`` (see ``must``), or
            what happened (shown after ``argument: ``).
        fix: ``(parameter, example)`` that resolves it when passed, e.g. ``("features", "N")``.
    """

    def __init__(self, argument: str | None, message: str, fix: tuple[str, str] | None = None):
        self.argument, self.message, self.fix = argument, message, fix
        super().__init__(self.spell())

    @classmethod
    def must(cls, argument: str, what: str, value, why: str | None = None,
             fix: tuple[str, str] | None = None) -> ArgumentError:
        """``argument must be <what>, got <value!r>`` (`` (<why>)`` added when given)."""
        return cls(argument, f"must be {what}, got {value!r}" + (f" ({why})" if why else ""), fix)

    @classmethod
    def check(cls, check: Callable, argument: str, value, **kwargs):
        """``check(argument, value, **kwargs)``, a ``compress.checks`` helper, raising its
        message as an ``ArgumentError`` (so a command can re-spell the name)."""
        try:
            return check(argument, value, **kwargs)
        except (ValueError, TypeError) as err:
            raise cls(argument, str(err).removeprefix(f"{argument} ")) from None

    def __reduce__(self):  # picklable with its parts (the default would pass only the text)
        return type(self), (self.argument, self.message, self.fix)

    def spell(self, names: Mapping[str, str] | None = None) -> str:
        """The message, parameters spelled by ``names`` (``{parameter: flag}``), else as in Python."""
        name = (lambda p: p) if names is None else (lambda p: names.get(p, p))
        if self.argument is None:
            text = self.message
        else:
            text = f"{name(self.argument)}{' ' if self.message.startswith('must ') else ': '}{self.message}"
        if self.fix is not None:
            param, example = self.fix
            text += f"; pass {param}={example}" if names is None else f"; pass {name(param)} {example}"
        return text
