"""``index add ROOT --prune``: the index made to match a folder, not only grown from it.

Besides what ``index add`` does (new and changed files rendered, encoded and
committed in batches), a sync

* **re-points** a moved file: a new path whose content hash is stored for a
  path that is gone from disk takes over that row (its id, embedding, preview
  and view codes), with the label of its new place; nothing is rendered;
* **prunes** the shapes stored under ROOT whose files are gone from disk.

Both happen in one SQLite transaction inside the writer's session, before the
first new shape is rendered (DEBUG lines ``phase prune <n>`` and ``phase
pruned <n>`` mark it), so a kill at any moment leaves either none or all of
them, and the next run resumes like ``index add`` (by content hash). Only
files that are gone are pruned: a stored file that still exists but that the
scan passes over (a hidden file, a folder that stopped being a view folder)
is kept. An empty or missing ROOT is refused rather than read as "everything
was deleted" (an unmounted disk looks like an empty folder): ``index remove
ROOT`` forgets a whole folder on purpose.

``dry_run`` plans without the writer lock and writes nothing: the report
lists what a sync would remove and re-point, and counts what it would add
and update.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ftspl.engine.index.add import produce, scan_shapes
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import IndexFolder
from ftspl.engine.index.pipeline.local import LocalProducer
from ftspl.engine.index.pipeline.plan import pending_shapes, render_spec
from ftspl.engine.index.pipeline.records import AddReport, PendingShape, Producer, ProgressFn, StopFn
from ftspl.engine.index.session import timed, write_session
from ftspl.engine.index.store.schema import normalize_path
from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)


@dataclass
class SyncReport(AddReport):
    """An add's counts, plus the paths pruned and the ``(old, new)`` moves re-pointed (or, dry, that would be)."""

    removed: list[str] = field(default_factory=list)
    moved: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False


@dataclass
class SyncPlan:
    moves: list[tuple[str, PendingShape]]  #: stored path that is gone -> the new shape with its content
    gone: list[str]  #: stored paths under ROOT whose files are gone (and that no new path took over)
    todo: list[PendingShape]  #: what is left to render and encode


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def plan_sync(entries: dict[str, tuple[int, str]], root: str | Path, sources: list[ShapeSource],
              todo: list[PendingShape], prune: bool = True,
              exists: Callable[[str], bool] = os.path.exists) -> SyncPlan:
    """What a sync of ``root`` changes, from the stored ``path -> (id, hash)`` and the pending shapes.

    A new shape re-points a stored row of the same content whose file is gone
    (under ROOT or anywhere else); pairs are made in path order. With
    ``prune``, the other gone rows under ROOT are removed.
    """
    if not prune:
        return SyncPlan([], [], todo)
    base = normalize_path(root)
    scanned = {normalize_path(s.path) for s in sources}
    new_hashes = {p.digest for p in todo if p.old_id is None}
    candidates: dict[str, list[str]] = {}
    for path in sorted(entries):
        digest = entries[path][1]
        if path in scanned or (digest not in new_hashes and not _under(path, base)):
            continue
        if not exists(path):
            candidates.setdefault(digest, []).append(path)
    moves: list[tuple[str, PendingShape]] = []
    rest: list[PendingShape] = []
    for p in todo:
        olds = candidates.get(p.digest) if p.old_id is None else None
        if olds:
            moves.append((olds.pop(0), p))
        else:
            rest.append(p)
    taken = {old for old, _ in moves}
    gone = sorted(path for paths in candidates.values() for path in paths if _under(path, base) and path not in taken)
    return SyncPlan(moves, gone, rest)


def sync(folder: IndexFolder, manifest, encoders, root: str | Path, cfg: IndexConfig,
         progress: ProgressFn | None = None, should_stop: StopFn | None = None, producer: Producer | None = None,
         dry_run: bool = False, prune: bool = True) -> SyncReport:
    """Index ``root`` like ``index add``, re-point moved files and (``prune``) remove the gone ones."""
    sources = scan_shapes(root, cfg)
    report = SyncReport(dry_run=dry_run)
    if dry_run:
        with timed(report):
            _dry_run(folder, root, sources, report, progress, prune)
        return report
    producer = producer or LocalProducer(encoders, cfg)
    with timed(report), write_session(folder, manifest, cfg, rebuild=cfg.rebuild) as session:
        spec = render_spec(manifest, session.store.get_info(), cfg.up, folder.dir)
        session.claim(spec)
        entries = session.store.entries()
        plan = plan_sync(entries, root, sources, pending_shapes(sources, entries, report, progress), prune)
        if plan.moves or plan.gone:
            _apply(session, plan, sources, report)
        produce(producer, plan.todo, spec, lambda: session.sink(report), report, progress, should_stop)
    return report


def _apply(session, plan: SyncPlan, sources: list[ShapeSource], report: SyncReport) -> None:
    """Re-point and prune in one transaction; then drop the pruned ids from the ANN."""
    store = session.store
    ann = session.open_ann()
    log.debug("phase prune %d", len(plan.moves) + len(plan.gone))
    with store.batch():
        store.repoint([(old, p.source.path, p.source.label) for old, p in plan.moves])
        removed_ids = store.remove_paths(plan.gone)
    log.debug("phase pruned %d", len(plan.moves) + len(plan.gone))
    if removed_ids:
        ann.remove(np.asarray(removed_ids, np.int64))
    report.moved += [(old, normalize_path(p.source.path)) for old, p in plan.moves]
    report.removed += plan.gone


def _dry_run(folder: IndexFolder, root, sources: list[ShapeSource], report: SyncReport, progress, prune: bool) -> None:
    """Fill ``report`` with what a sync would do, from a read-only look at the store (no lock, no write)."""
    entries: dict[str, tuple[int, str]] = {}
    if folder.exists():
        from ftspl.engine.index.store import ShapeStore

        with ShapeStore(folder.store, readonly=True) as store:
            entries = store.entries()
    plan = plan_sync(entries, root, sources, pending_shapes(sources, entries, report, progress), prune)
    report.moved = [(old, normalize_path(p.source.path)) for old, p in plan.moves]
    report.removed = list(plan.gone)
    report.added = sum(1 for p in plan.todo if p.old_id is None)
    report.updated = len(plan.todo) - report.added


__all__ = ["SyncPlan", "SyncReport", "plan_sync", "sync"]
