"""This machine's producer: render children, then encode threads, in the order the shapes arrive.

:class:`LocalProducer` overlaps three kinds of worker so every core stays busy:
render children (:class:`~ftspl.engine.rendering.pool.RenderPool`, one per core
by default, fed by a prefetch thread) load and render, a small thread pool
preprocesses and encodes batches side by side (onnxruntime, numpy and PIL
release the GIL), and the calling thread hands finished shapes to the
:class:`~ftspl.engine.index.pipeline.commit.Committer` in the order they came.

DEBUG lines ``phase encode`` mark the encode stage (the crash tests kill the
process there).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ftspl.engine.index.pipeline.commit import Committer
from ftspl.engine.index.pipeline.encode import EncodedViews, encode_views
from ftspl.engine.index.pipeline.records import AddReport, PendingShape, PreparedShape, ProgressFn, Sink, StopFn

log = logging.getLogger(__name__)


def render_worker(spec, cfg, depth: int = 4, jobs: int | None = None):
    """The child processes that load and render (:mod:`ftspl.engine.rendering.pool`): ``cfg.render_processes``
    of them (0: one per core, at most 4), never more than ``jobs``."""
    from ftspl.engine.loading.meshes import MeshLimits
    from ftspl.engine.rendering.pool import RenderPool, auto_processes

    limits = cfg.limits if cfg.limits is not None else MeshLimits()
    processes = cfg.render_processes or auto_processes()
    if jobs is not None:
        processes = max(1, min(processes, jobs))
    return RenderPool(spec, limits, cfg.file_timeout_s, depth=depth, processes=processes)


def render_all(todo: list[PendingShape], worker) -> Iterator[PreparedShape]:
    """Render every pending shape in the worker's child processes, in order."""
    from ftspl.engine.rendering.worker import RenderJob

    jobs = [RenderJob(Path(p.source.path), p.source.kind) for p in todo]
    by_job = dict(zip(jobs, todo))
    for r in worker.map(jobs):
        yield PreparedShape(by_job[r.job], r.views, r.faces, r.error)


class LocalProducer:
    """This machine: render children (per-file time limit, crash isolation) and encode threads."""

    def __init__(self, encoders, cfg) -> None:
        self.encoders, self.cfg = encoders, cfg
        self.worker = None

    def start(self, todo: list[PendingShape], spec) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self.worker = render_worker(spec, self.cfg, jobs=len(todo))
        if todo:  # start-ups overlap: the render child, the encoder session, the caller's HNSW load
            self.worker.start()
            self.encoders.warm(MULTIVIEW_ENCODER)

    def _shapes(self, todo: list[PendingShape]) -> Iterator[PreparedShape]:
        """The prepared shapes of ``todo``, in order (a subclass may take some from elsewhere)."""
        return render_all(todo, self.worker)

    def run(self, todo: list[PendingShape], sink: Sink, report: AddReport, progress: ProgressFn | None,
            should_stop: StopFn | None) -> None:
        from ftspl.engine.index.pipeline.prefetch import prefetch

        shapes = prefetch(lambda: self._shapes(todo), depth=2 * self.cfg.batch_shapes)
        committer = Committer(sink, report, self.cfg.commit_every, len(todo), progress)
        EncodeThreads(self.encoders, self.cfg.batch_shapes, committer).run(shapes, should_stop)

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            self.encoders.wait_warm()  # never leave while onnxruntime builds a session


@dataclass
class _Batch:
    shapes: list[PreparedShape]
    result: Future  #: -> EncodedViews


class EncodeThreads:
    """Encode rendered shapes in batches on a thread pool; hand them to the committer in order."""

    def __init__(self, encoders, batch_shapes: int, committer: Committer) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self.encoders, self.batch_shapes, self.committer = encoders, batch_shapes, committer
        self.runs = encoders.parallel_runs(MULTIVIEW_ENCODER)
        self.pending: list[PreparedShape] = []  # rendered, waiting for a full batch
        self.inflight: deque[_Batch] = deque()  # being encoded, oldest first

    def run(self, shapes: Iterator[PreparedShape], should_stop: StopFn | None) -> None:
        """Returns when every shape taken from ``shapes`` is committed (or failed)."""
        pool = ThreadPoolExecutor(max_workers=self.runs, thread_name_prefix="ftspl-encode")
        try:
            for shape in shapes:
                self.committer.seen()
                if shape.error is not None:
                    self.committer.fail(str(shape.pending.source.path), shape.error)
                else:
                    self.pending.append(shape)
                    # a full batch, or any shapes at all while no batch is being encoded (the
                    # first shapes of a run: the encoder starts on the first one rendered)
                    if len(self.pending) >= self.batch_shapes or not self._busy():
                        self._encode_pending(pool)
                while self.inflight and self.inflight[0].result.done():
                    self._collect_oldest()
                if should_stop is not None and should_stop():
                    break
            # the last shapes, split over the pool's threads rather than one batch on one core
            n, parts = len(self.pending), min(self.runs, len(self.pending))
            for k in range(parts):
                self._submit(pool, self.pending[k * n // parts : (k + 1) * n // parts])
            self.pending.clear()
            while self.inflight:
                self._collect_oldest()
            self.committer.flush()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _busy(self) -> int:
        """Batches being encoded now (submitted and not finished)."""
        return sum(not b.result.done() for b in self.inflight)

    def _submit(self, pool: ThreadPoolExecutor, shapes: list[PreparedShape]) -> None:
        log.debug("phase encode %d", len(shapes))
        self.inflight.append(_Batch(shapes, pool.submit(self._encode, shapes)))

    def _encode(self, shapes: list[PreparedShape]) -> EncodedViews:
        """Runs in a pool thread: preprocess, embed and make previews (and view strips) for one batch."""
        return encode_views(self.encoders, [s.views for s in shapes])

    def _encode_pending(self, pool: ThreadPoolExecutor) -> None:
        if self.pending:
            self._submit(pool, list(self.pending))
            self.pending.clear()
        while len(self.inflight) >= self.runs:
            # every pool thread is busy: take the oldest batch's results (in order)
            # while the prefetch thread keeps receiving renders
            self._collect_oldest()

    def _collect_oldest(self) -> None:
        batch = self.inflight.popleft()
        encoded: EncodedViews = batch.result.result()
        for j, shape in enumerate(batch.shapes):
            self.committer.add(encoded.encoded_shape(j, shape.pending, shape.faces))


__all__ = ["EncodeThreads", "LocalProducer", "render_all", "render_worker"]
