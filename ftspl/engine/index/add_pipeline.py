"""The add pipeline: rendered shapes -> encoded batches -> committed rows, in order.

Three workers overlap so both cores stay busy: the render child (fed by a
prefetch thread) loads and renders, a small thread pool preprocesses and encodes
batches side by side (onnxruntime, numpy and PIL release the GIL), and the
calling thread commits finished batches to SQLite and the ANN index in the order
the shapes arrived. Each stage hands over a named record (:class:`PreparedShape`,
then :class:`~ftspl.engine.index.schema.ShapeRecord`), never a positional tuple.

DEBUG lines ``phase encode|commit|committed`` mark the stages (the crash tests
kill the process at each one).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  #: (phase, done, total)


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


@dataclass
class _Batch:
    shapes: list[PreparedShape]
    result: Future  #: -> (embeddings (B, D), preview PNGs)


def render_all(todo: list[PendingShape], worker) -> Iterator[PreparedShape]:
    """Render every pending shape in the worker's child process, in order."""
    from ftspl.engine.rendering.worker import RenderJob

    jobs = [RenderJob(Path(p.source.path), p.source.kind) for p in todo]
    by_job = dict(zip(jobs, todo))
    for r in worker.map(jobs):
        yield PreparedShape(by_job[r.job], r.views, r.faces, r.error)


class AddPipeline:
    """Encode and commit the shapes of one ``add``; ``run`` returns when all are committed.

    ``store`` and ``ann`` are open for writing; ``save_ann`` refreshes the ANN
    file (called at most every ``cfg.save_ann_every_s`` seconds during the run).
    """

    def __init__(self, encoders, store, ann, cfg, report: AddReport, save_ann: Callable[[], None]) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self.encoders, self.store, self.ann, self.cfg = encoders, store, ann, cfg
        self.report, self.save_ann = report, save_ann
        self.runs = encoders.parallel_runs(MULTIVIEW_ENCODER)
        self.pending: list[PreparedShape] = []  # rendered, waiting for a full batch
        self.inflight: deque[_Batch] = deque()  # being encoded, oldest first
        self.records: list = []  # encoded, waiting for the next commit
        self.old_ids: list[int | None] = []
        self.last_save = time.monotonic()

    def run(self, shapes: Iterator[PreparedShape], total: int, progress: ProgressFn | None,
            should_stop: Callable[[], bool] | None) -> None:
        pool = ThreadPoolExecutor(max_workers=self.runs, thread_name_prefix="ftspl-encode")
        try:
            for done, shape in enumerate(shapes, 1):
                if progress:
                    progress("index", done, total)
                if shape.error is not None:
                    self.report.failed.append((str(shape.pending.source.path), shape.error))
                else:
                    self.pending.append(shape)
                    if len(self.pending) >= self.cfg.batch_shapes:
                        self._encode_pending(pool)
                    if len(self.records) >= self.cfg.commit_every:
                        self._commit(pool)
                if should_stop is not None and should_stop():
                    break
            self._commit(pool, final=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _encode(self, shapes: list[PreparedShape]) -> tuple[np.ndarray, list[bytes]]:
        """Runs in a pool thread: preprocess, embed and make previews for one batch."""
        from ftspl.engine.model.preprocess import views_to_tensor
        from ftspl.engine.rendering.renderer import make_preview

        pre = self.encoders.preprocess
        batch = np.stack([views_to_tensor(s.views, pre) for s in shapes])
        return self.encoders.embed_views(batch), [make_preview(s.views) for s in shapes]

    def _encode_pending(self, pool: ThreadPoolExecutor) -> None:
        if self.pending:
            log.debug("phase encode %d", len(self.pending))
            shapes = list(self.pending)
            self.inflight.append(_Batch(shapes, pool.submit(self._encode, shapes)))
            self.pending.clear()
        while len(self.inflight) >= self.runs:
            # every pool thread is busy: take the oldest batch's results (in order)
            # while the prefetch thread keeps receiving renders
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        from ftspl.engine.index.schema import ShapeRecord

        batch = self.inflight.popleft()
        emb, previews = batch.result.result()
        for shape, e, preview in zip(batch.shapes, emb, previews):
            src = shape.pending.source
            self.records.append(
                ShapeRecord(
                    path=str(src.path), content_hash=shape.pending.digest, label=src.label, faces=shape.faces,
                    kind=src.kind, embedding=np.asarray(e, np.float32), preview=preview,
                )
            )
            self.old_ids.append(shape.pending.old_id)

    def _commit(self, pool: ThreadPoolExecutor, final: bool = False) -> None:
        self._encode_pending(pool)
        while final and self.inflight:
            self._collect_oldest()
        if not self.records:
            return
        log.debug("phase commit %d", len(self.records))
        ids = self.store.upsert_batch(self.records)
        log.debug("phase committed %d", len(ids))
        self.ann.add(np.asarray(ids, np.int64), np.stack([r.embedding for r in self.records]))
        for old in self.old_ids:
            if old is None:
                self.report.added += 1
            else:
                self.report.updated += 1
        self.records.clear()
        self.old_ids.clear()
        if time.monotonic() - self.last_save > self.cfg.save_ann_every_s:
            self.save_ann()
            self.last_save = time.monotonic()
