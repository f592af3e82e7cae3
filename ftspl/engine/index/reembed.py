"""``ftspl index reembed``: re-encode every stored shape with the active model, then swap in one commit.

After ``ftspl train --continue`` and ``ftspl export`` the index still holds the
old model's embeddings; ``index add --rebuild`` would throw the index away and
rescan folders. Re-embedding keeps every stored shape (path, label, id) and
recomputes what the add pipeline stores per shape with the new model.

How:

1. Under the writer lock, every stored shape becomes a pending shape of the
   write pipeline (:mod:`ftspl.engine.index.pipeline`): its file is hashed
   again (a file that changed is embedded as it is now) and its views come
   from the render cache (``<home>/cache/views``, the one ``ftspl train``
   fills, keyed by content hash and render spec) or are rendered again from the
   stored path (view folders are read again). The same encode threads turn
   them into the same :class:`~ftspl.engine.index.store.schema.ShapeRecord` that
   ``index add`` commits, per-view codes and previews included.
2. The records go to *part files* in ``<index>/reembed/``
   (:mod:`ftspl.engine.index.reembed_parts`, ``commit_every``
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

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ftspl.engine.constants import RenderSpec
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import PARTS_DIR, IndexFolder
from ftspl.engine.index.pipeline.cached import CachedFirstProducer
from ftspl.engine.index.pipeline.plan import content_hash, render_spec
from ftspl.engine.index.pipeline.records import AddReport, PendingShape, ProgressFn, StopFn
from ftspl.engine.index.reembed_parts import Parts, PartSink
from ftspl.engine.index.session import timed, write_session
from ftspl.engine.index.store.schema import COMPAT_KEYS
from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)

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


def reembed(folder: IndexFolder, manifest, encoders, views_cache: Path | None, cfg: IndexConfig,
            progress: ProgressFn | None = None, should_stop: StopFn | None = None,
            drop_missing: bool = False) -> ReembedReport:
    """Re-encode every shape of the index with ``manifest``'s (the active) model; see the module doc.

    ``views_cache``: the render cache ``ftspl train`` fills (``<home>/cache/views``).
    """
    folder.require()
    report = ReembedReport()
    with timed(report), write_session(folder, manifest, cfg) as session:
        store = session.store
        info = store.get_info()
        spec = render_spec(manifest, info, None)
        target = {"model_id": manifest.model_id, "model_hash": manifest.model_hash,
                  "render_spec_hash": spec.digest(), "embed_dim": int(manifest.embed_dim)}
        report.model_before, report.model = info.get("model_id"), manifest.model_id
        report.total = store.count()
        parts = Parts(folder.parts, target)
        current = all(str(info.get(k)) == str(target[k]) for k in COMPAT_KEYS)
        if current:
            parts.open()  # parts of another model are dropped; this model's finish a killed swap
        if current and not parts.files():
            parts.clear()
            report.up_to_date = True
            session.cache.rebuild(store, stale_only=True)
            return report
        parts.open()
        stored = store.entries()  # path -> (id, content hash)
        done = parts.paths()
        report.resumed = len(done & set(stored))
        todo, faces = _pending(store, stored, done, report, progress)
        producer = CachedFirstProducer(encoders, cfg, views_cache, faces)
        sink = PartSink(parts)
        add_report = AddReport()
        try:
            producer.start(todo, spec)
            if todo:
                producer.run(todo, sink, add_report, progress, should_stop)
        finally:
            producer.close()
            report.encoded, report.from_cache = sink.encoded, producer.from_cache
        report.failed += add_report.failed
        covered = parts.paths()
        failed = {p for p, _ in report.failed}
        if set(stored) - covered - failed:  # stopped early: the parts stay for the next run
            return report
        if failed and not drop_missing:
            return report
        _swap(store, parts, target, spec, set(stored), sorted(failed), report)
        session.cache.rebuild(store)
        parts.clear()
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


__all__ = ["PARTS_DIR", "ReembedReport", "reembed"]
