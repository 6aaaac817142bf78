"""The one exception type a malformed packed file may raise."""


class FormatError(ValueError):
    """A packed file is malformed or does not match its spec.

    The message names the field and the byte offset where the problem was found.
    """
