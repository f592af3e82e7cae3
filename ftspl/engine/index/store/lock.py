"""One writer at a time per index folder, via ``fcntl.flock`` on a lock file.

Why flock: the kernel drops the lock when the holder's file descriptor closes,
including when the process is killed, so a crashed ``index add`` never leaves a
stale lock behind and no PID-liveness guessing is needed. The holder writes
its PID into the file purely so a second writer can say *who* holds it.

The lock file itself is never deleted: unlinking a flock'ed file lets two
processes lock two different inodes under the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ftspl.engine.errors import IndexLockedError

if TYPE_CHECKING:  # typing.Self needs Python 3.11; annotations are not evaluated
    from typing_extensions import Self

log = logging.getLogger(__name__)

_POLL_START_S = 0.01
_POLL_MAX_S = 0.5


def read_lock_pid(path: str | Path) -> int | None:
    """The PID written by the current (or last) holder of the lock file, if readable."""
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


class WriterLock:
    """Exclusive writer lock on ``path``; raises :class:`IndexLockedError` if another process holds it.

    ``wait=True`` polls with exponential backoff (up to ``timeout`` seconds,
    forever if None) instead of failing at once. Use as a context manager::

        with WriterLock(index_dir / "write.lock"):
            ...  # the only writer

    Locks are per open file, so a second ``WriterLock`` on the same path in the
    same process is refused too (one writer, full stop). Not re-entrant.
    """

    def __init__(self, path: str | Path, wait: bool = False, timeout: float | None = None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be >= 0 or None")
        self.path = Path(path)
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: WriterLock is not re-entrant")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._lock_fd(fd)
            # Ours now: replace the previous holder's PID with ours. The PID is only
            # for the message a second writer prints; on a full disk the lock must
            # still work, so a failed write is not an error.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("writer lock %s acquired by PID %d", self.path, os.getpid())

    def _lock_fd(self, fd: int) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        delay = _POLL_START_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            if not self.wait or (deadline is not None and time.monotonic() >= deadline):
                raise IndexLockedError(self.path, read_lock_pid(self.path))
            sleep = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
            time.sleep(sleep)
            delay = min(delay * 2, _POLL_MAX_S)

    def release(self) -> None:
        """Give the lock up (a no-op when not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Clear our PID first so nobody blames us after we are gone.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # Closing the descriptor drops the flock; keeps a forgotten lock from leaking an fd.
        if getattr(self, "_fd", None) is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # type: ignore[arg-type]
