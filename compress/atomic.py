"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader sees either the old file or the complete new one, never a half-written file,
and an exception at any point leaves an existing target intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable


def write_bytes(path: str | os.PathLike, parts: Iterable[bytes]) -> int:
    """Write the concatenation of ``parts`` to ``path`` atomically; return its size.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
        >>> write_bytes(p, [b"ab", b"c"])
        3
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for block in parts:
                f.write(block)
                size += len(block)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return size


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, [text.encode("utf-8")])
