"""The commit step: encoded shapes in batches of ``commit_every`` to a sink, and the index's own sink.

:class:`Committer` is the loop every producer drives (this machine's, Ray's,
the shard merge's): a shape that failed becomes one ``(path, reason)`` line in
the report, an encoded one waits in the batch, and a full batch goes to the
sink in one call. :class:`IndexSink` is the single writer's sink: one SQLite
transaction per batch, then the ANN index.

DEBUG lines ``phase commit|committed`` mark the stages (the crash tests kill
the process at each one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from ftspl.engine.index.pipeline.records import AddReport, EncodedShape, ProgressFn, Sink

log = logging.getLogger(__name__)


class Committer:
    """Hands encoded shapes to ``sink``, ``commit_every`` at a time, in the order they arrive.

    ``seen`` counts the shapes a producer is done with (encoded or failed) for the
    ``progress`` phase ``phase``; ``flush`` commits what is left (call it last).
    """

    def __init__(self, sink: Sink, report: AddReport, commit_every: int, total: int = 0,
                 progress: ProgressFn | None = None, phase: str = "index") -> None:
        self.sink, self.report, self.commit_every = sink, report, max(1, int(commit_every))
        self.total, self.progress, self.phase = total, progress, phase
        self.done = 0
        self.batch: list[EncodedShape] = []

    def seen(self, n: int = 1) -> None:
        """``n`` more shapes are through the producer; tell ``progress``."""
        self.done += n
        if self.progress:
            self.progress(self.phase, self.done, self.total)

    def fail(self, path: str, reason: str) -> None:
        """One shape that cannot be used: a ``path: reason`` line in the report."""
        self.report.failed.append((str(path), reason))

    def add(self, shape: EncodedShape) -> None:
        """Queue one encoded shape; a full batch is committed at once."""
        self.batch.append(shape)
        if len(self.batch) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        """Commit what is queued (nothing when empty)."""
        if self.batch:
            batch, self.batch = self.batch, []
            self.sink.commit(batch)


class IndexSink:
    """Commits encoded shapes to the store (one transaction per call) and the ANN index; counts added/updated.

    ``save_ann`` refreshes the ANN file, at most every ``save_every_s`` seconds.
    """

    def __init__(self, store, ann, report: AddReport, save_ann: Callable[[], None], save_every_s: float) -> None:
        self.store, self.ann, self.report, self.save_ann = store, ann, report, save_ann
        self.save_every_s = save_every_s
        self.last_save = time.monotonic()

    def commit(self, shapes: list[EncodedShape]) -> None:
        if not shapes:
            return
        log.debug("phase commit %d", len(shapes))
        ids = self.store.upsert_batch([s.record for s in shapes])
        log.debug("phase committed %d", len(ids))
        self.ann.add(np.asarray(ids, np.int64), np.stack([s.record.embedding for s in shapes]))
        for s in shapes:
            if s.old_id is None:
                self.report.added += 1
            else:
                self.report.updated += 1
        if time.monotonic() - self.last_save > self.save_every_s:
            self.save_ann()
            self.last_save = time.monotonic()

    def close(self) -> None:
        """Nothing buffered: every ``commit`` is already durable."""


__all__ = ["Committer", "IndexSink"]
