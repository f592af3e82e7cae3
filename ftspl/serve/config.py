"""What ``ftspl serve`` runs with, and the bind policy that keeps it private by default."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from ftspl.engine.constants import MAX_FACES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_VERTICES
from ftspl.engine.errors import UsageError

DEFAULT_MAX_BODY = 64 * 1024 * 1024  #: 8 phone photos, or base64 JSON of 6


def default_workers() -> int:
    """One query per core at a time (each runs onnxruntime on one thread)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeConfig:
    """Options of the server; :meth:`check` enforces the rules between them."""

    home: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  #: bearer token every /api call must carry
    insecure: bool = False  #: allow a non-loopback bind without a token
    cors_origins: tuple[str, ...] = ()  #: origins allowed to call the API from other pages
    workers: int = field(default_factory=default_workers)  #: queries computed at once
    queue: int = 16  #: queries waiting beyond ``workers``; more get 503 + Retry-After
    max_photos: int = 8  #: photos per request
    max_top: int = 100  #: largest ``top``
    max_file_bytes: int = MAX_FILE_BYTES  #: per photo, as ``ftspl query --max-file-bytes``
    max_pixels: int = MAX_IMAGE_PIXELS  #: per photo, as ``ftspl query --max-pixels``
    #: the whole request body, counted while it streams in, before any parsing (a server
    #: holds bodies in memory or spools them, so it is far below the per-photo file cap)
    max_body_bytes: int = DEFAULT_MAX_BODY
    poll_s: float = 0.5  #: how often the index is checked for new commits
    #: an uploaded mesh (a shape query) gets ``index add``'s caps: ``max_file_bytes`` above, these
    #: two, and the per-file load + render time limit (in the render worker's child process)
    max_faces: int = MAX_FACES
    max_vertices: int = MAX_VERTICES
    file_timeout: float = 60.0
    device: str = "auto"


    def check(self) -> None:
        """Refuse combinations that would expose the index or cannot work."""
        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: must be 0..65535")
        if self.workers < 1 or self.queue < 0:
            raise UsageError("--workers must be at least 1 and --queue at least 0")
        if min(self.max_photos, self.max_top, self.max_file_bytes, self.max_pixels, self.max_body_bytes) < 1:
            raise UsageError("--max-photos, --max-file-bytes, --max-pixels, --max-body-bytes and the largest top must be at least 1")
        if self.poll_s <= 0:
            raise UsageError("--poll must be positive")
        if min(self.max_faces, self.max_vertices) < 1 or not self.file_timeout > 0:
            raise UsageError("the mesh caps (faces, vertices) must be at least 1 and the file time limit positive")
        if self.token is not None and len(self.token) < 16:
            raise UsageError("--token must be at least 16 characters (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise UsageError(
                f"--host {self.host} is reachable from other machines: pass --token TOKEN (clients send "
                "'Authorization: Bearer TOKEN') or --insecure to serve without one"
            )


def is_loopback(host: str) -> bool:
    """True for localhost and 127.0.0.0/8 or ::1 addresses (the only binds allowed without a token)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
