"""The records that travel through the write pipeline, and the two roles that drive it.

Each stage hands the next a named record: a planned :class:`PendingShape`, a
rendered :class:`PreparedShape`, then an :class:`EncodedShape` (the store's
:class:`~ftspl.engine.index.store.schema.ShapeRecord` plus the row it replaces)
that a :class:`Sink` commits. A :class:`Producer` turns pending shapes into
encoded ones on this machine, on a Ray cluster or from a cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ftspl.engine.index.store.schema import ShapeRecord
from ftspl.engine.loading.scan import ShapeSource

ProgressFn = Callable[[str, int, int], None]  #: (phase, done, total)
StopFn = Callable[[], bool]  #: True: stop after the shape at hand (what was encoded is committed)


@dataclass
class AddReport:
    """What one ``index add`` did: counts, failures as ``(path, reason)``, wall time."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.added + self.updated


@dataclass(frozen=True)
class PendingShape:
    """A scanned shape whose content is new or changed: what to render, and the row it replaces."""

    source: ShapeSource
    digest: str  #: sha256 of the file (or view folder)
    old_id: int | None  #: the stored row it updates, None for a new shape


@dataclass(frozen=True)
class PreparedShape:
    """A shape back from the render worker: its views, or the reason it failed."""

    pending: PendingShape
    views: np.ndarray | None  #: uint8 (V, S, S, 3)
    faces: int | None
    error: str | None


@dataclass(frozen=True)
class EncodedShape:
    """What a sink commits: the shape's record, and the stored row it replaces (None: a new shape)."""

    record: ShapeRecord
    old_id: int | None = None

    @classmethod
    def of(cls, pending: PendingShape, faces: int | None, embedding: np.ndarray, preview: bytes | None,
           view_embeddings: np.ndarray | None = None, view_strip: bytes | None = None) -> EncodedShape:
        """The encoded shape of ``pending`` (every producer builds its records here)."""
        src = pending.source
        record = ShapeRecord(path=str(src.path), content_hash=pending.digest, label=src.label, faces=faces,
                             kind=src.kind, embedding=np.asarray(embedding, np.float32), preview=preview,
                             view_embeddings=view_embeddings, view_strip=view_strip)
        return cls(record, pending.old_id)


class Sink(Protocol):
    """Where encoded shapes go; ``commit`` gets at most ``commit_every`` of them at a time."""

    def commit(self, shapes: list[EncodedShape]) -> None: ...

    def close(self) -> None: ...


class Producer(Protocol):
    """Turns pending shapes into encoded shapes for a sink (render failures go to ``report.failed``).

    ``start`` may begin slow start-ups (a child process, a session, a cluster
    connection) that overlap with the caller opening its sink; ``close`` always runs.
    """

    def start(self, todo: list[PendingShape], spec) -> None: ...

    def run(self, todo: list[PendingShape], sink: Sink, report: AddReport, progress: ProgressFn | None,
            should_stop: StopFn | None) -> None: ...

    def close(self) -> None: ...


__all__ = ["AddReport", "EncodedShape", "PendingShape", "PreparedShape", "Producer", "ProgressFn", "Sink",
           "StopFn"]
