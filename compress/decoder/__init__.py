"""Decoders of the PSQ format: ``reference`` (pure Python, C-like) and ``fast`` (``compress.load``).

Example:
    >>> from compress.decoder import load, reference
    >>> callable(load) and callable(reference.decode_file)
    True
"""

from compress.decoder.fast import from_bytes, load, load_bytes, read_file

__all__ = ["load", "load_bytes", "read_file", "from_bytes"]
