"""The add pipeline: plan -> render -> encode -> commit, with the producer and the sink swappable.

``index add`` plans the work (content hashes, :func:`pending_shapes`), then a
*producer* turns pending shapes into encoded records and hands them, in batches
of ``commit_every``, to a *sink*:

* producers: :class:`LocalProducer` (this machine: a render child plus encode
  threads) or ``ftspl.scale.driver.RayProducer`` (actor pools on a Ray cluster);
* sinks: :class:`IndexSink` (SQLite + HNSW, the single writer) or
  ``ftspl.engine.index.shards.ShardWriter`` (Parquet shards to merge later).

The local producer overlaps three workers so both cores stay busy: the render
child (fed by a prefetch thread) loads and renders, a small thread pool
preprocesses and encodes batches side by side (onnxruntime, numpy and PIL
release the GIL), and the calling thread hands finished batches to the sink in
the order the shapes arrived. Each stage hands over a named record
(:class:`PreparedShape`, then :class:`~ftspl.engine.index.store.schema.ShapeRecord`).

DEBUG lines ``phase encode|commit|committed`` mark the stages (the crash tests
kill the process at each one).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ftspl.engine.files import sha256_file
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


def content_hash(src: ShapeSource) -> str:
    """sha256 of a mesh file, or of a view folder's sorted names and bytes."""
    if src.kind == "views":
        h = hashlib.sha256()
        for p in sorted(src.path.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0")
                h.update(p.read_bytes())
        return h.hexdigest()
    return sha256_file(src.path)


def pending_shapes(sources: list[ShapeSource], known: dict[str, tuple[int | None, str]], report: AddReport,
                   progress: ProgressFn | None = None) -> list[PendingShape]:
    """The sources whose content is not in ``known`` (normalised path -> (id, content hash)).

    Unchanged shapes count in ``report.unchanged``; unreadable ones become failures.
    """
    from ftspl.engine.index.store.schema import normalize_path

    todo: list[PendingShape] = []
    for i, src in enumerate(sources):
        if progress:
            progress("hash", i, len(sources))
        try:
            digest = content_hash(src)
        except OSError as exc:
            report.failed.append((str(src.path), f"cannot read ({exc.strerror or exc})"))
            continue
        entry = known.get(normalize_path(src.path))
        if entry is not None and entry[1] == digest:
            report.unchanged += 1
            continue
        todo.append(PendingShape(src, digest, None if entry is None else entry[0]))
    return todo


def make_record(pending: PendingShape, faces: int | None, embedding: np.ndarray, preview: bytes | None,
                view_embeddings: np.ndarray | None = None, view_strip: bytes | None = None):
    """The :class:`~ftspl.engine.index.store.schema.ShapeRecord` of one encoded shape (every producer uses it)."""
    from ftspl.engine.index.store.schema import ShapeRecord

    src = pending.source
    return ShapeRecord(path=str(src.path), content_hash=pending.digest, label=src.label, faces=faces,
                       kind=src.kind, embedding=np.asarray(embedding, np.float32), preview=preview,
                       view_embeddings=view_embeddings, view_strip=view_strip)


class Sink(Protocol):
    """Where encoded records go; ``commit`` gets at most ``commit_every`` records at a time."""

    def commit(self, records: list, old_ids: list[int | None]) -> None: ...

    def close(self) -> None: ...


class Producer(Protocol):
    """Turns pending shapes into records for a sink (render failures go to ``report.failed``).

    ``start`` may begin slow start-ups (a child process, a session, a cluster
    connection) that overlap with the caller opening its sink; ``close`` always runs.
    """

    def start(self, todo: list[PendingShape], spec) -> None: ...

    def run(self, todo: list[PendingShape], sink: Sink, report: AddReport, progress: ProgressFn | None,
            should_stop: Callable[[], bool] | None) -> None: ...

    def close(self) -> None: ...


class IndexSink:
    """Commits records to the store (one transaction per call) and the ANN index; counts added/updated.

    ``save_ann`` refreshes the ANN file, at most every ``cfg.save_ann_every_s`` seconds.
    """

    def __init__(self, store, ann, cfg, report: AddReport, save_ann: Callable[[], None]) -> None:
        self.store, self.ann, self.cfg, self.report, self.save_ann = store, ann, cfg, report, save_ann
        self.last_save = time.monotonic()

    def commit(self, records: list, old_ids: list[int | None]) -> None:
        if not records:
            return
        log.debug("phase commit %d", len(records))
        ids = self.store.upsert_batch(records)
        log.debug("phase committed %d", len(ids))
        self.ann.add(np.asarray(ids, np.int64), np.stack([r.embedding for r in records]))
        for old in old_ids:
            if old is None:
                self.report.added += 1
            else:
                self.report.updated += 1
        if time.monotonic() - self.last_save > self.cfg.save_ann_every_s:
            self.save_ann()
            self.last_save = time.monotonic()

    def close(self) -> None:
        """Nothing buffered: every ``commit`` is already durable."""


@dataclass
class _Batch:
    shapes: list[PreparedShape]
    result: Future  #: -> (embeddings (B, D), preview PNGs, per-view (B, V, D) or None, view strips or None)


def render_all(todo: list[PendingShape], worker) -> Iterator[PreparedShape]:
    """Render every pending shape in the worker's child process, in order."""
    from ftspl.engine.rendering.worker import RenderJob

    jobs = [RenderJob(Path(p.source.path), p.source.kind) for p in todo]
    by_job = dict(zip(jobs, todo))
    for r in worker.map(jobs):
        yield PreparedShape(by_job[r.job], r.views, r.faces, r.error)


def render_worker(spec, cfg, depth: int = 4):
    """The child process that loads and renders (see :mod:`ftspl.engine.rendering.worker`)."""
    from ftspl.engine.loading.meshes import MeshLimits
    from ftspl.engine.rendering.worker import RenderWorker

    limits = cfg.limits if cfg.limits is not None else MeshLimits()
    return RenderWorker(spec, limits, cfg.file_timeout_s, depth=depth)


class LocalProducer:
    """This machine: a render child (per-file time limit, crash isolation) and encode threads."""

    def __init__(self, encoders, cfg) -> None:
        self.encoders, self.cfg = encoders, cfg
        self.worker = None

    def start(self, todo: list[PendingShape], spec) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self.worker = render_worker(spec, self.cfg)
        if todo:  # start-ups overlap: the render child, the encoder session, the caller's HNSW load
            self.worker.start()
            self.encoders.warm(MULTIVIEW_ENCODER)

    def _shapes(self, todo: list[PendingShape]) -> Iterator[PreparedShape]:
        """The prepared shapes of ``todo``, in order (a subclass may take some from elsewhere)."""
        return render_all(todo, self.worker)

    def run(self, todo, sink: Sink, report: AddReport, progress, should_stop) -> None:
        from ftspl.engine.index.prefetch import prefetch

        shapes = prefetch(lambda: self._shapes(todo), depth=2 * self.cfg.batch_shapes)
        AddPipeline(self.encoders, sink, self.cfg, report).run(shapes, len(todo), progress, should_stop)

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            self.encoders.wait_warm()  # never leave while onnxruntime builds a session


class AddPipeline:
    """Encode rendered shapes and hand them to the sink in order; ``run`` returns when all are committed."""

    def __init__(self, encoders, sink: Sink, cfg, report: AddReport) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self.encoders, self.sink, self.cfg, self.report = encoders, sink, cfg, report
        self.runs = encoders.parallel_runs(MULTIVIEW_ENCODER)
        self.pending: list[PreparedShape] = []  # rendered, waiting for a full batch
        self.inflight: deque[_Batch] = deque()  # being encoded, oldest first
        self.records: list = []  # encoded, waiting for the next commit
        self.old_ids: list[int | None] = []

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

    def _encode(self, shapes: list[PreparedShape]) -> tuple:
        """Runs in a pool thread: preprocess, embed and make previews (and view strips) for one batch."""
        from ftspl.engine.index.store.viewcodes import make_strip
        from ftspl.engine.model.preprocess import views_to_tensor
        from ftspl.engine.rendering.renderer import make_preview

        pre = self.encoders.preprocess
        batch = np.stack([views_to_tensor(s.views, pre) for s in shapes])
        emb, per_view = self.encoders.embed_views_full(batch)
        strips = None if per_view is None else [make_strip(s.views) for s in shapes]
        return emb, [make_preview(s.views) for s in shapes], per_view, strips

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
        batch = self.inflight.popleft()
        emb, previews, per_view, strips = batch.result.result()
        for j, (shape, e, preview) in enumerate(zip(batch.shapes, emb, previews)):
            self.records.append(make_record(shape.pending, shape.faces, e, preview,
                                            None if per_view is None else per_view[j],
                                            None if strips is None else strips[j]))
            self.old_ids.append(shape.pending.old_id)

    def _commit(self, pool: ThreadPoolExecutor, final: bool = False) -> None:
        self._encode_pending(pool)
        while final and self.inflight:
            self._collect_oldest()
        if not self.records:
            return
        self.sink.commit(self.records, self.old_ids)
        self.records = []
        self.old_ids = []
