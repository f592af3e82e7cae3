"""The shape library: scan -> load -> render -> encode -> commit, and photo queries.

Data flows one way: files -> views (uint8) -> embeddings (ONNX) -> SQLite + HNSW.

Crash safety: SQLite (``shapes.sqlite``) is the source of truth and each batch
is committed in one transaction; the HNSW file is a derived cache saved
atomically with the store generation it reflects. Whoever opens the index
reconciles a stale HNSW against SQLite (adds what a killed run committed but
never saved to HNSW, drops what was removed), so a kill at any moment leaves an
index that opens with exactly the committed shapes, and the next add resumes by
skipping files whose content hash is already stored.

Concurrency: one writer (``writer.lock``, flock); readers open SQLite read-only
(WAL) and never block on or disturb the writer.

Pipeline of ``add``: a child process loads and renders (``engine/worker.py``:
per-file time limit, survives crashing files), a thread feeds its results to
this thread, which preprocesses, encodes (onnxruntime) and commits, so the two
cores work at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.encoders import MULTIVIEW_ENCODER, Encoders, RuntimeConfig
from ftspl.engine.errors import IndexStateError, InputFileError, UsageError
from ftspl.engine.home import Home
from ftspl.engine.scan import ShapeSource, scan

log = logging.getLogger(__name__)

STORE_NAME = "shapes.sqlite"
ANN_NAME = "shapes.hnsw"
LOCK_NAME = "writer.lock"


@dataclass(frozen=True)
class IndexConfig:
    """Options of ``ftspl index add`` and of opening the index."""

    label_from: str = "top"
    up: str | None = None  #: None: the index's up axis, or the model's default for a new index
    batch_shapes: int = 4  #: shapes per onnxruntime call (small: the last batch runs alone on one core)
    commit_every: int = 32  #: shapes per SQLite transaction
    save_ann_every_s: float = 30.0  #: how often a long add refreshes the HNSW file
    wait_lock: bool = False
    ann_m: int | None = None  #: HNSW M (None: the ann module's default)
    ann_ef_construction: int | None = None
    ann_ef_search: int | None = None
    rebuild: bool = False  #: drop an index made by another model/spec and start again
    #: file size / face / vertex caps (None: MeshLimits' defaults; typed loosely so that
    #: a query never imports the mesh loaders and trimesh)
    limits: object | None = None
    file_timeout_s: float = 60.0  #: per-file load+render limit; slower files are skipped


@dataclass
class AddReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  #: (path, reason)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.added + self.updated


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    distance: float
    label: str | None
    kind: str


@dataclass
class QueryResult:
    photo: str
    hits: list[Hit]


ProgressFn = Callable[[str, int, int], None]  #: (phase, done, total)


def content_hash(src: ShapeSource) -> str:
    """sha256 of a mesh file, or of a view folder's sorted names and bytes."""
    h = hashlib.sha256()
    if src.kind == "views":
        for p in sorted(src.path.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0")
                h.update(p.read_bytes())
        return h.hexdigest()
    with open(src.path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Library:
    """An index folder bound to one model: add/remove shapes, query photos."""

    def __init__(self, home: Home, runtime: RuntimeConfig = RuntimeConfig(), model_dir: Path | None = None) -> None:
        self.home = home
        self.dir = home.index_dir
        self.model_dir = model_dir or home.active_model_dir()
        self.encoders = Encoders(self.model_dir, runtime, graph_cache_dir=home.cache / "onnxruntime")
        self.manifest = self.encoders.manifest

    # -- helpers --------------------------------------------------------------
    @property
    def store_path(self) -> Path:
        return self.dir / STORE_NAME

    @property
    def ann_path(self) -> Path:
        return self.dir / ANN_NAME

    def exists(self) -> bool:
        return self.store_path.exists()

    def _spec_for_add(self, store, cfg: IndexConfig) -> RenderSpec:
        """The render spec of this index: stored one, else the model's with the chosen up axis."""
        model_spec = self.manifest.get_render_spec()
        stored = store.get_info().get("render_spec")
        if stored:
            spec = RenderSpec.from_dict(json.loads(stored))
            if cfg.up is not None and cfg.up != spec.up:
                raise IndexStateError(
                    f"{self.dir}: this index was rendered with --up {spec.up}; shapes rendered with "
                    f"--up {cfg.up} cannot be mixed into it (use another --home, or --rebuild)"
                )
            return spec
        return model_spec.with_up(cfg.up) if cfg.up else model_spec

    def _open_ann(self, store, cfg: IndexConfig | None = None):
        """Load the HNSW cache and bring it up to the store's generation (in memory).

        The cache records the store generation it was saved at; the store's
        ``changes_since`` gives exactly the upserts and removals after that, so a
        cache left behind by a killed add (or saved mid-add) catches up cheaply.
        A missing or unreadable cache is rebuilt from the embeddings in SQLite.
        """
        from ftspl.engine.ann import HnswIndex

        dim = self.manifest.embed_dim
        ann = None
        if self.ann_path.exists():
            try:
                ann = HnswIndex.load(self.ann_path)
            except IndexStateError as exc:
                log.warning("%s; rebuilding the HNSW cache from SQLite", exc)
            if ann is not None and ann.dim != dim:
                ann = None
        since = 0
        if ann is not None:
            since = int(ann.meta.get("generation", -1))
            if since < 0:
                ann = None
        if ann is None:
            kw = {}
            if cfg is not None:
                if cfg.ann_m:
                    kw["M"] = cfg.ann_m
                if cfg.ann_ef_construction:
                    kw["ef_construction"] = cfg.ann_ef_construction
                if cfg.ann_ef_search:
                    kw["ef_search"] = cfg.ann_ef_search
            ann, since = HnswIndex(dim, **kw), 0
        if cfg is not None and cfg.ann_ef_search:
            ann.ef_search = cfg.ann_ef_search
        if since != store.generation():
            try:
                ids, vecs, removed = store.changes_since(since)
            except IndexStateError as exc:  # cache newer than the store: rebuild it
                log.warning("%s; rebuilding the HNSW cache from SQLite", exc)
                ann = HnswIndex(dim, M=ann.M, ef_construction=ann.ef_construction, ef_search=ann.ef_search)
                ids, vecs = store.all_embeddings()
                removed = np.zeros(0, np.int64)
            if len(removed):
                ann.remove(removed)
            if len(ids):
                ann.add(ids, vecs)
            log.info("HNSW cache caught up from generation %d: +%d -%d", since, len(ids), len(removed))
        return ann

    # -- writing --------------------------------------------------------------
    def add(
        self,
        root: str | Path,
        cfg: IndexConfig = IndexConfig(),
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> AddReport:
        """Index every shape under ``root`` (incremental by content hash)."""
        from ftspl.engine.lock import WriterLock

        sources = scan(root, cfg.label_from)
        if not sources:
            from ftspl.engine.meshes import mesh_extensions

            raise InputFileError(root, f"no meshes ({' '.join(mesh_extensions())}) or view folders found")
        self.dir.mkdir(parents=True, exist_ok=True)
        report = AddReport()
        t0 = time.perf_counter()
        with WriterLock(self.dir / LOCK_NAME, wait=cfg.wait_lock):
            store = self._open_store_for_write(cfg)
            try:
                spec = self._spec_for_add(store, cfg)
                store.ensure_compatible(
                    self.manifest.model_id, self.manifest.model_hash, spec.digest(), self.manifest.embed_dim
                )
                if not store.get_info().get("render_spec"):
                    store.set_info("render_spec", json.dumps(spec.to_dict(), sort_keys=True))
                todo: list[tuple[ShapeSource, str, int | None]] = []
                from ftspl.engine.store import normalize_path

                stored = store.entries(Path(root).expanduser().resolve())  # one query, not one per file
                for i, src in enumerate(sources):
                    if progress:
                        progress("hash", i, len(sources))
                    try:
                        digest = content_hash(src)
                    except OSError as exc:
                        report.failed.append((str(src.path), f"cannot read ({exc.strerror or exc})"))
                        continue
                    known = stored.get(normalize_path(src.path))
                    if known is not None and known[1] == digest:
                        report.unchanged += 1
                        continue
                    todo.append((src, digest, None if known is None else known[0]))
                worker = self._render_worker(spec, cfg)
                try:
                    if todo:  # start-ups overlap: the render child, the encoder session, the HNSW file
                        worker.start()
                        self.encoders.warm(MULTIVIEW_ENCODER)
                    ann = self._open_ann(store, cfg=cfg)
                    self._process(todo, worker, store, ann, cfg, report, progress, should_stop)
                finally:
                    worker.close()
                    self.encoders.wait_warm()  # never leave while onnxruntime builds a session
                self._save_ann(ann, store)
            finally:
                store.close()
        report.seconds = time.perf_counter() - t0
        return report

    def _open_store_for_write(self, cfg: IndexConfig):
        from ftspl.engine.store import ShapeStore

        if cfg.rebuild and self.store_path.exists():
            for p in [self.store_path, self.ann_path, *self.dir.glob(STORE_NAME + "-*"), *self.dir.glob(ANN_NAME + ".*")]:
                p.unlink(missing_ok=True)  # the store, its WAL/SHM files, the HNSW cache
        return ShapeStore(self.store_path)

    @staticmethod
    def _render_worker(spec: RenderSpec, cfg: IndexConfig):
        """The child process that loads and renders (see :mod:`ftspl.engine.worker`)."""
        from ftspl.engine.meshes import MeshLimits
        from ftspl.engine.worker import RenderWorker

        limits = cfg.limits if cfg.limits is not None else MeshLimits()
        return RenderWorker(spec, limits, cfg.file_timeout_s, depth=4)

    @staticmethod
    def _prepare(todo, worker) -> Iterator[tuple[ShapeSource, str, int | None, np.ndarray | None, int | None, str | None]]:
        """Yield (src, digest, old_id, views uint8, faces, error) per shape, rendered in the child process."""
        from ftspl.engine.worker import RenderJob

        by_job = {}
        jobs = []
        for src, digest, old_id in todo:
            job = RenderJob(Path(src.path), src.kind)
            by_job[job] = (src, digest, old_id)
            jobs.append(job)
        for r in worker.map(jobs):
            src, digest, old_id = by_job[r.job]
            yield src, digest, old_id, r.views, r.faces, r.error

    def _process(self, todo, worker, store, ann, cfg: IndexConfig, report: AddReport, progress, should_stop) -> None:
        from ftspl.engine.photos import views_to_tensor
        from ftspl.engine.render import make_preview
        from ftspl.engine.store import ShapeRecord

        pre = self.encoders.preprocess
        pending: list[tuple[ShapeSource, str, int | None, np.ndarray, int | None]] = []
        records: list = []
        old_ids: list[int | None] = []
        last_save = time.monotonic()
        done = 0
        # batches being encoded, oldest first: (future of (embeddings, previews), their shapes)
        inflight: deque = deque()
        runs = self.encoders.parallel_runs(MULTIVIEW_ENCODER)
        pool = ThreadPoolExecutor(max_workers=runs, thread_name_prefix="ftspl-encode")

        def encode(items: list) -> tuple[np.ndarray, list[bytes]]:
            # runs in a pool thread: onnxruntime, numpy and PIL release the GIL
            batch = np.stack([views_to_tensor(v, pre) for _, _, _, v, _ in items])
            return self.encoders.embed_views(batch), [make_preview(v) for _, _, _, v, _ in items]

        def collect_oldest() -> None:
            fut, items = inflight.popleft()
            emb, previews = fut.result()
            for (src, digest, old_id, _views, faces), e, preview in zip(items, emb, previews):
                records.append(
                    ShapeRecord(
                        path=str(src.path), content_hash=digest, label=src.label, faces=faces,
                        kind=src.kind, embedding=np.asarray(e, np.float32), preview=preview,
                    )
                )
                old_ids.append(old_id)

        def encode_pending() -> None:
            if pending:
                log.debug("phase encode %d", len(pending))
                items = list(pending)
                inflight.append((pool.submit(encode, items), items))
                pending.clear()
            while len(inflight) >= runs:
                # every pool thread is busy: take the oldest batch's results (in order)
                # while the prefetch thread keeps receiving renders
                collect_oldest()

        def commit(final: bool = False) -> None:
            nonlocal last_save
            encode_pending()
            while final and inflight:
                collect_oldest()
            if not records:
                return
            log.debug("phase commit %d", len(records))
            ids = store.upsert_batch(records)
            log.debug("phase committed %d", len(ids))
            ann.add(np.asarray(ids, np.int64), np.stack([r.embedding for r in records]))
            for old in old_ids:
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
            records.clear()
            old_ids.clear()
            if time.monotonic() - last_save > cfg.save_ann_every_s:
                self._save_ann(ann, store)
                last_save = time.monotonic()

        from ftspl.engine.prefetch import prefetch

        # load + render in a child process (fed by a thread) while pool threads encode
        # and this thread commits
        try:
            ahead = prefetch(lambda: self._prepare(todo, worker), depth=2 * cfg.batch_shapes)
            for src, digest, old_id, views, faces, error in ahead:
                done += 1
                if progress:
                    progress("index", done, len(todo))
                if error is not None:
                    report.failed.append((str(src.path), error))
                else:
                    pending.append((src, digest, old_id, views, faces))
                    if len(pending) >= cfg.batch_shapes:
                        encode_pending()
                    if len(records) >= cfg.commit_every:
                        commit()
                if should_stop is not None and should_stop():
                    break
            commit(final=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _save_ann(self, ann, store) -> None:
        ann.save(self.ann_path, meta={"generation": store.generation()})

    def remove(self, paths: list[str], cfg: IndexConfig = IndexConfig()) -> list[str]:
        """Remove shapes by path (a file, a view folder, or every shape under a folder)."""
        from ftspl.engine.lock import WriterLock
        from ftspl.engine.store import ShapeStore

        if not self.exists():
            raise IndexStateError(f"{self.dir}: no index yet; run 'ftspl index add FOLDER' first")
        with WriterLock(self.dir / LOCK_NAME, wait=cfg.wait_lock):
            store = ShapeStore(self.store_path)
            try:
                self._check_model(store)
                ann = self._open_ann(store)
                removed_paths: list[str] = []
                removed_ids: list[int] = []
                with store.batch():
                    for p in paths:
                        under = store.entries(Path(p).expanduser().resolve())
                        if under:
                            removed_paths += sorted(under)
                            removed_ids += store.remove_paths(list(under))
                if removed_ids:
                    ann.remove(np.asarray(removed_ids, np.int64))
                self._save_ann(ann, store)
            finally:
                store.close()
        return removed_paths

    def _check_model(self, store) -> None:
        info = store.get_info()
        if info.get("model_hash") and info["model_hash"] != self.manifest.model_hash:
            raise IndexStateError(
                f"{self.dir}: index was built by model {info.get('model_id')}, not the active model "
                f"{self.manifest.model_id}; rebuild it with 'ftspl index add FOLDER --rebuild'"
            )

    # -- reading --------------------------------------------------------------
    def open_reader(self) -> "Reader":
        return Reader(self)


class Reader:
    """Read-only view of the index for queries; safe while a writer runs."""

    def __init__(self, lib: Library) -> None:
        from ftspl.engine.store import ShapeStore

        if not lib.exists():
            raise IndexStateError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
        self.lib = lib
        from ftspl.engine.encoders import IMAGE_ENCODER

        self.store = ShapeStore(lib.store_path, readonly=True)
        try:
            lib._check_model(self.store)
            lib.encoders.warm(IMAGE_ENCODER)  # photo queries need it: build it while the index loads
            self.ann = lib._open_ann(self.store)
        except BaseException:
            # never exit while onnxruntime is still building a session in the warm thread:
            # tearing down its thread pool mid-build aborts the process (SIGABRT)
            lib.encoders.wait_warm()
            self.store.close()
            raise

    def close(self) -> None:
        self.lib.encoders.wait_warm()  # see __init__: no exit while a session is being built
        self.store.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def search(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Nearest shapes for each embedding; ``k`` is clamped to the index size."""
        if k < 1:
            raise UsageError("--top must be at least 1")
        n = len(self.ann)
        if n == 0 or len(embeddings) == 0:
            return [[] for _ in range(len(embeddings))]
        kk = min(n, k)
        ids, dists = self.ann.query(np.asarray(embeddings, np.float32), kk)
        out: list[list[Hit]] = []
        for row_ids, row_d in zip(ids, dists):
            rows = {r.id: r for r in self.store.get([int(i) for i in row_ids])}
            hits = []
            for i, d in zip(row_ids, row_d):
                r = rows.get(int(i))
                if r is None:  # removed by a writer since this reader opened
                    continue
                hits.append(Hit(len(hits) + 1, int(i), r.path, float(d), r.label, r.kind))
            out.append(hits[:k])
        return out

    def query_photos(self, photos: list[str | Path], k: int) -> list[QueryResult]:
        """Decode the photos and search in one batch; a bad photo raises ImageLoadError."""
        from ftspl.engine.photos import load_photo

        return self.query_images([load_photo(p) for p in photos], [str(p) for p in photos], k)

    def query_images(self, images: list, names: list[str], k: int) -> list[QueryResult]:
        """Search with already decoded RGB images (one batch), e.g. after per-file checks."""
        from ftspl.engine.photos import to_tensor

        pre = self.lib.encoders.preprocess
        if not images:
            return []
        emb = self.lib.encoders.embed_photos(np.stack([to_tensor(im, pre) for im in images]))
        return [QueryResult(n, h) for n, h in zip(names, self.search(emb, k))]


__all__ = ["Library", "Reader", "IndexConfig", "AddReport", "Hit", "QueryResult"]
