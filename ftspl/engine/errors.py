"""Narrow exceptions for everything a user can get wrong.

Each message states the rule that was broken and the fix, in one line, so the
CLI can print ``str(exc)`` and exit non-zero without a traceback. Library code
raises these and never prints; only ``ftspl.cli`` turns them into output.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class FtsplError(Exception):
    """Base class: a user-facing problem with a one-line explanation."""

    exit_code = 1


class UsageError(FtsplError):
    """The command line itself is wrong (exit code 2)."""

    exit_code = 2


class UnknownKeyError(UsageError, KeyError):
    """A registry lookup (backbone, loader, preset...) with an unknown key."""

    def __init__(self, what: str, key: object, valid: Iterable[object]) -> None:
        self.what, self.key = what, key
        self.valid = sorted(str(v) for v in valid)
        super().__init__(f"unknown {what} {key!r}; valid: {', '.join(self.valid)}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.args[0]


class InputFileError(FtsplError):
    """One input file cannot be used; the message is ``path: reason``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class MeshLoadError(InputFileError):
    """A mesh file is corrupt, empty, unsupported, too big or degenerate."""


class ImageLoadError(InputFileError):
    """A photo or view image cannot be decoded or is too large."""


class ImageTooLargeError(ImageLoadError):
    """A photo over the byte or pixel cap (``ftspl serve`` answers 413 for it, not 400)."""


class RenderError(FtsplError):
    """The OpenGL stack is missing or failed; the message names the package."""


class ModelError(FtsplError):
    """No usable model: missing, tampered with, or not the index's model."""


class IndexStateError(FtsplError):
    """The on-disk index is missing, corrupt, or belongs to another model/spec."""


class LookMismatchError(IndexStateError):
    """An index holds shapes rendered in one look (grey or materials) and the model renders the other.

    Views of the two looks give embeddings that do not compare, so one index never mixes them.
    """

    def __init__(self, where: str | Path, index_look: str, model_look: str) -> None:
        self.index_look, self.model_look = index_look, model_look
        super().__init__(
            f"{where}: this index holds shapes rendered in the {index_look} look and the active model renders "
            f"the {model_look} look; one index never mixes looks. Re-embed it in the {model_look} look with "
            f"'ftspl index reembed', rebuild it with 'ftspl index add FOLDER --rebuild', or make a "
            f"{index_look} model active (ftspl export --look {index_look})"
        )


class IndexLockedError(IndexStateError):
    """Another process is writing to the index."""

    def __init__(self, path: str | Path, pid: int | None) -> None:
        who = f"PID {pid}" if pid else "another process"
        super().__init__(
            f"{path}: index is locked by {who}; wait for it to finish or pass --wait"
        )
        self.pid = pid


class WriteError(FtsplError, OSError):
    """A file could not be written: disk full, quota or file-size limit, I/O error, read-only folder.

    Every ftspl write is atomic (temp file + rename) or transactional (SQLite),
    so what was written before is intact; the message says so. Also an
    ``OSError`` with the original ``errno``, so callers that tolerate a failed
    cache write (``except OSError``) keep working.
    """

    def __init__(self, path: str | Path, reason: str, errno: int | None = None) -> None:
        self.path, self.reason = str(path), reason
        self.message = (
            f"{path}: cannot write ({reason}); is the disk full? What was saved before is intact; "
            "free some space and run the command again"
        )
        OSError.__init__(self, errno, self.message)

    def __str__(self) -> str:
        return self.message


class DeviceError(FtsplError):
    """An execution device was asked for (``--device cuda``) but is not active."""
