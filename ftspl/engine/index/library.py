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

Pipeline of ``add`` (:mod:`ftspl.engine.index.add_pipeline`): a child process
loads and renders (per-file time limit, survives crashing files), pool threads
preprocess and encode batches side by side, and the calling thread commits them
in order, so the two cores work at once. A Ray cluster (``ftspl.scale``) can
render and encode instead; this process still commits. ``write_shards`` sends
the encoded shapes to Parquet shards instead of the index, and ``merge``
ingests shards written by any engine (:mod:`ftspl.engine.index.shards`). Queries go through
:class:`~ftspl.engine.index.reader.Reader`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import IndexStateError, InputFileError
from ftspl.engine.home import Home
from ftspl.engine.index.add_pipeline import (
    AddReport,
    IndexSink,
    LocalProducer,
    Producer,
    ProgressFn,
    content_hash,
    pending_shapes,
)
from ftspl.engine.index.reader import Reader
from ftspl.engine.index.store.schema import normalize_path
from ftspl.engine.loading.scan import scan
from ftspl.engine.model.encoders import Encoders, RuntimeConfig

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
    ann_backend: str | None = None  #: a key of ann.ANN_BACKENDS for a new index (None: ann.DEFAULT_BACKEND)
    ann_m: int | None = None  #: HNSW M (None: the ann module's default)
    ann_ef_construction: int | None = None
    ann_ef_search: int | None = None
    rebuild: bool = False  #: drop an index made by another model/spec and start again
    #: file size / face / vertex caps (None: MeshLimits' defaults; typed loosely so that
    #: a query never imports the mesh loaders and trimesh)
    limits: object | None = None
    file_timeout_s: float = 60.0  #: per-file load+render limit; slower files are skipped


def known_under(store, root: str | Path, sources: list) -> dict[str, tuple[int, str]]:
    """Stored ``path -> (id, content hash)`` for the shapes a scan of ``root`` can reach.

    One query for the folder's own prefix; a scan that followed symbolic links out
    of the folder reads the whole table instead (still one query), since the store
    keys shapes by their resolved paths.
    """
    base = Path(root).expanduser().resolve()
    if all(Path(normalize_path(s.path)).is_relative_to(base) for s in sources):
        return store.entries(base)
    return store.entries()


def graph_params(backend: str, cfg: IndexConfig | None) -> dict:
    """The ``--hnsw-*`` settings a backend's constructor takes (graph backends; none for ``exact``)."""
    from ftspl.engine.index.ann import accepted_params, backend_class

    if cfg is None:
        backend_class(backend)  # raises the error that lists the valid backends
        return {}
    return accepted_params(backend, {"M": cfg.ann_m, "ef_construction": cfg.ann_ef_construction,
                                     "ef_search": cfg.ann_ef_search})


def rebuilt_like(ann):
    """A new empty index of ``ann``'s backend with its settings, to refill."""
    from ftspl.engine.index.ann import empty_like

    return empty_like(ann)


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

    def open_ann(self, store, cfg: IndexConfig | None = None):
        """Load the HNSW cache and bring it up to the store's generation (in memory).

        The cache records the store generation it was saved at; the store's
        ``changes_since`` gives exactly the upserts and removals after that, so a
        cache left behind by a killed add (or saved mid-add) catches up cheaply.
        A missing or unreadable cache is rebuilt from the embeddings in SQLite.
        """
        from ftspl.engine.index.ann import DEFAULT_BACKEND, load_index, make_index

        dim = self.manifest.embed_dim
        ann = None
        if self.ann_path.exists():
            try:
                ann = load_index(self.ann_path)  # whatever backend built it
            except IndexStateError as exc:
                log.warning("%s; rebuilding the ANN cache from SQLite", exc)
            if ann is not None and ann.dim != dim:
                ann = None
        since = 0
        if ann is not None:
            since = int(ann.meta.get("generation", -1))
            if since < 0:
                ann = None
        if ann is None:
            backend = (cfg.ann_backend if cfg is not None else None) or DEFAULT_BACKEND
            ann, since = make_index(backend, dim, **graph_params(backend, cfg)), 0
        if cfg is not None and cfg.ann_ef_search:
            ann.ef_search = cfg.ann_ef_search
        if since != store.generation():
            try:
                ids, vecs, removed = store.changes_since(since)
            except IndexStateError as exc:  # cache newer than the store: rebuild it
                log.warning("%s; rebuilding the ANN cache from SQLite", exc)
                ann = rebuilt_like(ann)
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
        producer: Producer | None = None,
    ) -> AddReport:
        """Index every shape under ``root`` (incremental by content hash).

        ``producer`` renders and encodes (default: :class:`LocalProducer` on this
        machine; ``ftspl.scale`` passes a Ray one); this process stays the only
        writer either way.
        """
        from ftspl.engine.index.store.lock import WriterLock

        sources = self._scan(root, cfg)
        self.dir.mkdir(parents=True, exist_ok=True)
        report = AddReport()
        t0 = time.perf_counter()
        producer = producer or LocalProducer(self.encoders, cfg)
        with WriterLock(self.dir / LOCK_NAME, wait=cfg.wait_lock):
            store = self._open_store_for_write(cfg)
            try:
                spec = self._spec_for_add(store, cfg)
                store.ensure_compatible(
                    self.manifest.model_id, self.manifest.model_hash, spec.digest(), self.manifest.embed_dim
                )
                if not store.get_info().get("render_spec"):
                    store.set_info("render_spec", json.dumps(spec.to_dict(), sort_keys=True))
                stored = known_under(store, root, sources)
                todo = pending_shapes(sources, stored, report, progress)
                try:
                    producer.start(todo, spec)  # its start-up overlaps loading the HNSW file
                    ann = self.open_ann(store, cfg=cfg)
                    sink = IndexSink(store, ann, cfg, report, lambda: self._save_ann(ann, store))
                    if todo:
                        producer.run(todo, sink, report, progress, should_stop)
                finally:
                    producer.close()
                self._save_ann(ann, store)
            finally:
                store.close()
        report.seconds = time.perf_counter() - t0
        return report

    def write_shards(
        self,
        root: str | Path,
        folder: str | Path,
        cfg: IndexConfig = IndexConfig(),
        progress: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
        producer: Producer | None = None,
    ) -> tuple[AddReport, list[Path]]:
        """Encode the shapes under ``root`` into Parquet shards in ``folder`` instead of the index.

        The index is not opened: the render spec is the model's (with ``cfg.up``).
        Shapes already in ``folder``'s shards with the same content are skipped, so
        a killed run resumes. Returns the report and the shard files written.
        """
        from ftspl.engine.index.store.lock import WriterLock
        from ftspl.engine.index.shards import ShardIdentity, ShardWriter, known_shapes

        sources = self._scan(root, cfg)
        folder = Path(folder).expanduser().resolve()
        spec = self.manifest.get_render_spec()
        spec = spec.with_up(cfg.up) if cfg.up else spec
        identity = ShardIdentity.of(self.manifest, spec)
        report = AddReport()
        t0 = time.perf_counter()
        producer = producer or LocalProducer(self.encoders, cfg)
        folder.mkdir(parents=True, exist_ok=True)
        with WriterLock(folder / ".writer.lock", wait=cfg.wait_lock):
            todo = pending_shapes(sources, known_shapes(folder, identity), report, progress)
            writer = ShardWriter(folder, identity, report)
            try:
                producer.start(todo, spec)
                if todo:
                    producer.run(todo, writer, report, progress, should_stop)
            finally:
                try:
                    producer.close()
                finally:
                    writer.close()  # whole records only: what was encoded before an error is kept
        report.seconds = time.perf_counter() - t0
        return report, writer.files

    def merge(self, folders: list[str | Path], cfg: IndexConfig = IndexConfig(),
              progress: ProgressFn | None = None) -> AddReport:
        """Ingest Parquet shards (``index merge``): the active model's only, unchanged paths skipped."""
        from ftspl.engine.index import shards
        from ftspl.engine.index.store.lock import WriterLock

        files = shards.shard_files(folders)
        found = shards.read_identity(files)
        shards.check_model(found, self.manifest, ", ".join(str(f) for f in folders))
        self.dir.mkdir(parents=True, exist_ok=True)
        report = AddReport()
        t0 = time.perf_counter()
        with WriterLock(self.dir / LOCK_NAME, wait=cfg.wait_lock):
            store = self._open_store_for_write(cfg)
            try:
                info = store.get_info()
                if info.get("render_spec") and store.count():
                    spec = RenderSpec.from_dict(json.loads(info["render_spec"]))
                    if spec.digest() != found.render_spec_hash:
                        raise IndexStateError(
                            f"{self.dir}: the index holds shapes rendered with spec {spec.digest()}, the shards "
                            f"with {found.render_spec_hash}; merge them into another --home or --rebuild"
                        )
                else:
                    spec = shards.resolve_spec(found, self.manifest.get_render_spec())
                store.ensure_compatible(
                    self.manifest.model_id, self.manifest.model_hash, spec.digest(), self.manifest.embed_dim
                )
                spec_json = json.dumps(spec.to_dict(), sort_keys=True)
                if store.get_info().get("render_spec") != spec_json:
                    store.set_info("render_spec", spec_json)
                ann = self.open_ann(store, cfg=cfg)
                sink = IndexSink(store, ann, cfg, report, lambda: self._save_ann(ann, store))
                shards.merge_rows(files, store.entries(), sink, report, cfg.commit_every,
                                  self.manifest.embed_dim, progress)
                self._save_ann(ann, store)
            finally:
                store.close()
        report.seconds = time.perf_counter() - t0
        return report

    @staticmethod
    def _scan(root: str | Path, cfg: IndexConfig) -> list:
        sources = scan(root, cfg.label_from)
        if not sources:
            from ftspl.engine.loading.meshes import mesh_extensions

            raise InputFileError(root, f"no meshes ({' '.join(mesh_extensions())}) or view folders found")
        return sources

    def _open_store_for_write(self, cfg: IndexConfig):
        from ftspl.engine.index.store import ShapeStore

        if cfg.rebuild and self.store_path.exists():
            for p in [self.store_path, self.ann_path, *self.dir.glob(STORE_NAME + "-*"), *self.dir.glob(ANN_NAME + ".*")]:
                p.unlink(missing_ok=True)  # the store, its WAL/SHM files, the HNSW cache
        return ShapeStore(self.store_path)

    def _save_ann(self, ann, store) -> None:
        ann.save(self.ann_path, meta={"generation": store.generation()})

    def remove(self, paths: list[str], cfg: IndexConfig = IndexConfig()) -> list[str]:
        """Remove shapes by path (a file, a view folder, or every shape under a folder)."""
        from ftspl.engine.index.store.lock import WriterLock
        from ftspl.engine.index.store import ShapeStore

        if not self.exists():
            raise IndexStateError(f"{self.dir}: no index yet; run 'ftspl index add FOLDER' first")
        with WriterLock(self.dir / LOCK_NAME, wait=cfg.wait_lock):
            store = ShapeStore(self.store_path)
            try:
                self.check_model(store)
                ann = self.open_ann(store)
                removed_paths: list[str] = []
                removed_ids: list[int] = []
                with store.batch():
                    for p in paths:
                        under = store.entries(Path(p).expanduser().resolve())
                        if Path(p).is_dir():  # and what the folder reaches through symbolic links
                            reached = scan(p, cfg.label_from)
                            keys = {normalize_path(src.path) for src in reached}
                            under.update({k: v for k, v in known_under(store, p, reached).items() if k in keys})
                        if under:
                            removed_paths += sorted(under)
                            removed_ids += store.remove_paths(list(under))
                if removed_ids:
                    ann.remove(np.asarray(removed_ids, np.int64))
                self._save_ann(ann, store)
            finally:
                store.close()
        return removed_paths

    def check_model(self, store) -> None:
        """Refuse an index built by another model than the active one."""
        info = store.get_info()
        if info.get("model_hash") and info["model_hash"] != self.manifest.model_hash:
            raise IndexStateError(
                f"{self.dir}: index was built by model {info.get('model_id')}, not the active model "
                f"{self.manifest.model_id}; re-embed it with 'ftspl index reembed' (or rebuild it with "
                "'ftspl index add FOLDER --rebuild')"
            )

    def reembed(self, cfg: IndexConfig = IndexConfig(), progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, drop_missing: bool = False):
        """Re-encode every stored shape with this (the active) model: :mod:`ftspl.engine.index.reembed`."""
        from ftspl.engine.index.reembed import reembed

        return reembed(self, cfg, progress, should_stop, drop_missing)

    # -- reading --------------------------------------------------------------
    def open_reader(self) -> Reader:
        return Reader(self)


__all__ = ["Library", "IndexConfig", "AddReport", "content_hash"]
