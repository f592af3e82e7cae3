"""Checks every user file passes before a parser sees it (meshes, photos, views)."""

from __future__ import annotations

import os
from pathlib import Path

from ftspl.engine.errors import InputFileError


def check_input_file(path: Path, max_bytes: int, error: type[InputFileError], flag: str = "") -> int:
    """Raise ``error(path, reason)`` unless ``path`` is a readable, non-empty file within ``max_bytes``.

    The size is checked from the file system, before parsing, so a huge file
    never gets read. Returns the size in bytes.
    """
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise error(path, f"cannot read file ({exc.strerror or exc})") from None
    if not Path(path).is_file():
        raise error(path, "not a regular file")
    if size == 0:
        raise error(path, "file is empty")
    if size > max_bytes:
        hint = f"; raise {flag}" if flag else ""
        raise error(path, f"file is {size} bytes, over the limit of {max_bytes}{hint}")
    return size
