"""``ftspl index reembed``: re-encode every stored shape with the active model, then swap in one commit.

After ``ftspl train --continue`` and ``ftspl export`` the index still holds the
old model's embeddings; ``index add --rebuild`` would throw the index away and
rescan folders. Re-embedding keeps every stored shape (path, label, id) and
recomputes what the add pipeline stores per shape with the new model.

How:

1. Under the writer lock, every stored shape becomes a pending shape of the
   add pipeline (:mod:`ftspl.engine.index.add_pipeline`): its file is hashed
   again (a file that changed is embedded as it is now) and its views come
   from the render cache (``<home>/cache/views``, the one ``ftspl train``
   fills, keyed by content hash and render spec) or are rendered again from the
   stored path (view folders are read again). The same encode threads turn
   them into the same :class:`~ftspl.engine.index.store.schema.ShapeRecord` that
   ``index add`` commits, per-view codes and previews included.
2. The records go to *part files* in ``<index>/reembed/`` (``commit_every``
   records each, written atomically), not into the store: a run killed half way
   leaves whole parts, and the next run encodes only the shapes no part holds.
   ``target.json`` there names the model the parts belong to; parts of another
   model are discarded.
3. When every shape is encoded, one SQLite transaction sets the index's model
   identity (:data:`~ftspl.engine.index.store.schema.COMPAT_KEYS`) and upserts every
   record through :meth:`ShapeStore.upsert_batch` (ids kept). A reader sees the
   old model's store or the new one, never a mix: a live reader of the old
   model (``ftspl serve``) notices the identity change and keeps answering from
   what it has (:meth:`Reader.refresh`); a reader opened afterwards gets the new
   model. Then the ANN file is rebuilt from the new embeddings and the parts
   are deleted.

A shape whose file is gone or no longer loads gets one ``(path, reason)``
failure and blocks the swap: the index stays wholly on the old model, the parts
stay for the next run, and nothing stored is lost. Restore the files, or pass
``drop_missing`` (``--drop-missing``) to swap anyway and remove those shapes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import IndexStateError
from ftspl.engine.files import atomic_write_bytes
from ftspl.engine.index.add_pipeline import (
    AddReport,
    LocalProducer,
    PendingShape,
    PreparedShape,
    ProgressFn,
    content_hash,
    render_all,
    render_worker,
)
from ftspl.engine.index.store.schema import COMPAT_KEYS, ShapeRecord
from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)

PARTS_DIR = "reembed"  #: under the index folder
TARGET_FILE = "target.json"
MISSING_HINT = "restore it, or pass --drop-missing to remove such shapes from the index"


@dataclass
class ReembedReport:
    """What one ``index reembed`` did."""

    total: int = 0  #: shapes in the index
    encoded: int = 0  #: encoded by this run
    resumed: int = 0  #: already encoded by an earlier, interrupted run (parts on disk)
    from_cache: int = 0  #: of those encoded now: views read from the render cache, not rendered
    changed: int = 0  #: files whose content changed since they were indexed (embedded as they are now)
    failed: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  #: removed at the swap (``drop_missing``)
    swapped: bool = False  #: the index now holds the active model's embeddings (this run committed them)
    up_to_date: bool = False  #: nothing to do: the index already held the active model's embeddings
    model_before: str | None = None
    model: str | None = None
    seconds: float = 0.0


def view_cache_key(digest: str, spec: RenderSpec) -> str:
    """The render cache's file name stem for a shape's content hash and a render spec.

    The same key :mod:`ftspl.train.viewcache` writes (tests/test_reembed.py checks
    both agree), so shapes ``ftspl train`` rendered are not rendered again.
    """
    return hashlib.sha256(f"{digest}:{spec.digest()}".encode()).hexdigest()[:32]


def index_spec(manifest, info: dict) -> RenderSpec:
    """The spec to render with: the active model's, turned to the index's up axis."""
    spec = manifest.get_render_spec()
    stored = info.get("render_spec")
    if stored:
        up = RenderSpec.from_dict(json.loads(stored)).up
        if up != spec.up:
            spec = spec.with_up(up)
    return spec


# -- part files: encoded records waiting for the swap -------------------------------------------
class Parts:
    """``<index>/reembed/``: records encoded for one target model, in atomically written files."""

    def __init__(self, folder: Path, target: dict) -> None:
        self.folder, self.target = folder, target

    def open(self) -> None:
        """Keep parts made for this target; discard the folder's contents when they are another model's."""
        meta = self.folder / TARGET_FILE
        if meta.exists():
            try:
                same = json.loads(meta.read_text()) == self.target
            except (OSError, ValueError):
                same = False
            if not same:
                log.info("%s: parts of another model; starting over", self.folder)
                self.clear()
        self.folder.mkdir(parents=True, exist_ok=True)
        if not meta.exists():
            atomic_write_bytes(meta, json.dumps(self.target, sort_keys=True).encode())

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("part-*.npz")) if self.folder.is_dir() else []

    def clear(self) -> None:
        """Remove the folder and all it holds (parts, the target file, and the temporary file a
        write killed half way leaves behind)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def write(self, records: list) -> None:
        files = self.files()
        n = int(files[-1].stem.split("-")[1]) + 1 if files else 1
        atomic_write_bytes(self.folder / f"part-{n:06d}.npz", _pack(records))

    def paths(self) -> set[str]:
        """The paths the parts hold records for (reads only each part's small JSON member)."""
        out: set[str] = set()
        for p in self.files():
            try:
                with np.load(p, allow_pickle=False) as z:
                    out.update(str(m["path"]) for m in json.loads(bytes(z["meta"]).decode()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise IndexStateError(f"{p}: unreadable re-embed part ({exc}); delete {p.parent} and run again") from None
        return out

    def records(self) -> Iterator[list[ShapeRecord]]:
        for p in self.files():
            yield _unpack(p)


def _pack(records: list) -> bytes:
    """Records -> npz bytes, field by field (arrays and bytes as arrays, the rest as JSON; no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for i, rec in enumerate(records):
        m: dict = {}
        for f in dataclasses.fields(rec):
            v = getattr(rec, f.name)
            if isinstance(v, np.ndarray):
                arrays[f"{i}.{f.name}"] = v
                m[f.name] = {"$": "array"}
            elif isinstance(v, (bytes, bytearray, memoryview)):
                arrays[f"{i}.{f.name}"] = np.frombuffer(bytes(v), np.uint8)
                m[f.name] = {"$": "bytes"}
            else:
                m[f.name] = str(v) if isinstance(v, Path) else v
        meta.append(m)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _unpack(path: Path) -> list[ShapeRecord]:
    known = {f.name for f in dataclasses.fields(ShapeRecord)}
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            out = []
            for i, m in enumerate(meta):
                kw = {}
                for k, v in m.items():
                    if k not in known:
                        continue
                    if isinstance(v, dict) and v.get("$") == "array":
                        v = z[f"{i}.{k}"]
                    elif isinstance(v, dict) and v.get("$") == "bytes":
                        v = z[f"{i}.{k}"].tobytes()
                    kw[k] = v
                out.append(ShapeRecord(**kw))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexStateError(f"{path}: unreadable re-embed part ({exc}); delete {path.parent} and run again") from None
    return out


class PartSink:
    """The add pipeline's sink for a re-embed: each batch of records becomes one part file."""

    def __init__(self, parts: Parts, report: ReembedReport) -> None:
        self.parts, self.report = parts, report

    def commit(self, records: list, old_ids: list) -> None:
        if records:
            log.debug("phase part %d", len(records))
            self.parts.write(records)
            self.report.encoded += len(records)

    def close(self) -> None:
        """Nothing buffered: every part is on disk when ``commit`` returns."""


# -- the producer: cached views first, the rest rendered ----------------------------------------
class CachedFirstProducer(LocalProducer):
    """Views from the render cache where it has them, else rendered by the render child; then encoded
    (:class:`LocalProducer`'s run and close)."""

    def __init__(self, encoders, cfg, cache: Path | None, faces: dict[str, int | None], report: ReembedReport):
        super().__init__(encoders, cfg)
        self.cache, self.faces, self.report = cache, faces, report
        self.cached: list[tuple[PendingShape, Path]] = []
        self.render: list[PendingShape] = []

    def start(self, todo: list[PendingShape], spec: RenderSpec) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self._spec = spec
        for p in todo:
            hit = self.cache / f"{view_cache_key(p.digest, spec)}.npz" if self.cache else None
            if hit is not None and hit.is_file():
                self.cached.append((p, hit))
            else:
                self.render.append(p)
        if self.render:
            self.worker = render_worker(spec, self.cfg)
            self.worker.start()
        if todo:
            self.encoders.warm(MULTIVIEW_ENCODER)

    def _shapes(self, todo: list[PendingShape]) -> Iterator[PreparedShape]:
        for p, f in self.cached:
            try:
                with np.load(f, allow_pickle=False) as z:
                    views = z["views"]
            except (OSError, ValueError, KeyError):  # a damaged cache entry: render that shape instead
                self.render.append(p)
                continue
            self.report.from_cache += 1
            yield PreparedShape(p, views, self.faces.get(str(p.source.path)), None)
        if self.render:
            if self.worker is None:
                self.worker = render_worker(self._spec, self.cfg)
                self.worker.start()
            yield from render_all(self.render, self.worker)



# -- the command ---------------------------------------------------------------------------------
def reembed(lib, cfg, progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
            drop_missing: bool = False) -> ReembedReport:
    """Re-encode every shape of ``lib``'s index with ``lib``'s (the active) model; see the module doc."""
    from ftspl.engine.index.library import LOCK_NAME
    from ftspl.engine.index.store.lock import WriterLock
    from ftspl.engine.index.store import ShapeStore

    t0 = time.perf_counter()
    if not lib.exists():
        raise IndexStateError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
    report = ReembedReport()
    man = lib.manifest
    with WriterLock(lib.dir / LOCK_NAME, wait=cfg.wait_lock):
        store = ShapeStore(lib.store_path)
        try:
            info = store.get_info()
            spec = index_spec(man, info)
            target = {"model_id": man.model_id, "model_hash": man.model_hash,
                      "render_spec_hash": spec.digest(), "embed_dim": int(man.embed_dim)}
            report.model_before, report.model = info.get("model_id"), man.model_id
            report.total = store.count()
            parts = Parts(lib.dir / PARTS_DIR, target)
            current = all(str(info.get(k)) == str(target[k]) for k in COMPAT_KEYS)
            if current:
                parts.open()  # parts of another model are dropped; this model's finish a killed swap
            if current and not parts.files():
                parts.clear()
                report.up_to_date = True
                _refresh_ann(lib, store, stale_only=True)
                report.seconds = time.perf_counter() - t0
                return report
            parts.open()
            stored = store.entries()  # path -> (id, content hash)
            done = parts.paths()
            report.resumed = len(done & set(stored))
            todo, faces = _pending(store, stored, done, report, progress)
            producer = CachedFirstProducer(lib.encoders, cfg, lib.home.cache / "views", faces, report)
            add_report = AddReport()
            try:
                producer.start(todo, spec)
                if todo:
                    producer.run(todo, PartSink(parts, report), add_report, progress, should_stop)
            finally:
                producer.close()
            report.failed += add_report.failed
            covered = parts.paths()
            failed = {p for p, _ in report.failed}
            if set(stored) - covered - failed:  # stopped early: the parts stay for the next run
                report.seconds = time.perf_counter() - t0
                return report
            if failed and not drop_missing:
                report.seconds = time.perf_counter() - t0
                return report
            _swap(store, parts, target, spec, set(stored), sorted(failed), report)
            _refresh_ann(lib, store)
            parts.clear()
        finally:
            store.close()
    report.seconds = time.perf_counter() - t0
    return report


def _pending(store, stored: dict, done: set, report: ReembedReport,
             progress: ProgressFn | None) -> tuple[list[PendingShape], dict[str, int | None]]:
    """The stored shapes no part holds, as pending shapes (hashed again); unreadable files become failures."""
    ids = {i: path for path, (i, _h) in stored.items() if path not in done}
    rows = store.get(sorted(ids))
    todo: list[PendingShape] = []
    faces: dict[str, int | None] = {}
    for n, row in enumerate(rows):
        if progress:
            progress("hash", n, len(rows))
        src = ShapeSource(Path(row.path), row.kind, row.label)
        if not src.path.exists():
            what = "view folder" if row.kind == "views" else "file"
            report.failed.append((row.path, f"missing: the {what} is gone ({MISSING_HINT})"))
            continue
        try:
            digest = content_hash(src)
        except OSError as exc:
            report.failed.append((row.path, f"cannot read ({exc.strerror or exc}); {MISSING_HINT}"))
            continue
        if digest != row.content_hash:
            report.changed += 1
        faces[row.path] = row.faces
        todo.append(PendingShape(src, digest, row.id))
    return todo, faces


def _swap(store, parts: Parts, target: dict, spec: RenderSpec, stored: set, drop: list[str],
          report: ReembedReport) -> None:
    """One transaction: the new model identity, every re-encoded record, and the dropped shapes removed."""
    log.debug("phase swap %d", len(stored))
    with store.batch():
        store.set_info(**target, render_spec=json.dumps(spec.to_dict(), sort_keys=True))
        for recs in parts.records():
            keep = [r for r in recs if str(r.path) in stored]  # shapes removed meanwhile stay removed
            if keep:
                store.upsert_batch(keep)
        if drop:
            store.remove_paths(drop)
    report.dropped = drop
    report.swapped = True
    log.debug("phase swapped %d", len(stored))


def _refresh_ann(lib, store, stale_only: bool = False) -> None:
    """Rebuild the ANN file from the store's embeddings (same backend and settings); ``stale_only``: if behind."""
    from ftspl.engine.index.ann import (
        DEFAULT_BACKEND,
        load_index,
        make_index,
        read_manifest,
    )

    backend, params = DEFAULT_BACKEND, {}
    try:
        if stale_only and int(read_manifest(lib.ann_path).get("meta", {}).get("generation", -1)) == store.generation():
            return
        old = load_index(lib.ann_path)
        backend, params = old.backend, old.config()
    except IndexStateError as exc:
        log.info("%s; building a new %s index", exc, DEFAULT_BACKEND)
    with store.snapshot():
        ids, vecs = store.all_embeddings()
    fresh = make_index(backend, int(lib.manifest.embed_dim), **params)
    if len(ids):
        fresh.add(ids, vecs)
    lib._save_ann(fresh, store)


__all__ = ["PARTS_DIR", "ReembedReport", "index_spec", "reembed", "view_cache_key"]
