"""Library care, the verbs of :class:`ftspl.api.Library` that keep a library tidy: ``sync`` and ``duplicates``.

* :meth:`LibraryCare.sync` makes the index match a folder: ``add``, plus
  moved files re-pointed (no render) and gone files pruned, in one writer
  session (:mod:`ftspl.engine.index.sync`); ``dry_run`` only lists the changes.
* :meth:`LibraryCare.duplicates` groups the same model stored twice: exact
  copies (one content hash), then near duplicates found through the ANN index
  (:mod:`ftspl.engine.index.duplicates`); :meth:`LibraryCare.duplicates_sheet`
  draws the groups.

"Find shapes like this shape" is :meth:`ftspl.api.Library.query` with a mesh
path (:mod:`ftspl.shape_query`). A mixin so that ``ftspl/api.py`` stays one
page of the verbs everyone uses; the results are :mod:`ftspl.results` records.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ftspl.results import DuplicateGroup, DuplicateReport, SyncReport


class LibraryCare:
    """Mixed into :class:`ftspl.api.Library` (uses its ``engine`` and ``reader``)."""

    engine: Any
    #: :func:`ftspl.api.index_config` (set by the class this is mixed into: no import of ftspl.api here)
    index_config: Any

    def sync(self, path: str | Path, *, dry_run: bool = False, prune: bool = True, progress=None,
             **options: Any) -> SyncReport:
        """:meth:`~ftspl.api.Library.add` ``path``, re-point moved files and (``prune``) remove the shapes
        under ``path`` whose files are gone, in the same writer session; ``dry_run``: only say what would
        change. Options are :func:`ftspl.api.index_config`'s."""
        from ftspl.engine.index.sync import sync

        eng = self.engine
        report = sync(eng.folder, eng.manifest, eng.encoders, path, self.index_config(**options), progress,
                      dry_run=dry_run, prune=prune)
        return SyncReport.from_engine(report)

    def duplicates(self, max_distance: float | None = None, *, neighbours: int | None = None,
                   progress=None) -> DuplicateReport:
        """Exact duplicate groups (same content hash), then near ones (embeddings closer than ``max_distance``;
        default :data:`~ftspl.engine.index.duplicates.DEFAULT_MAX_DISTANCE`), each with its representative first."""
        from ftspl.engine.index import duplicates as dup

        t0 = time.perf_counter()
        scan = dup.scan_index(self.engine, dup.DEFAULT_MAX_DISTANCE if max_distance is None else float(max_distance),
                              dup.DEFAULT_NEIGHBOURS if neighbours is None else int(neighbours), progress)
        return DuplicateReport(scan.shapes, scan.max_distance, scan.neighbours,
                               [DuplicateGroup.from_engine(g) for g in scan.exact],
                               [DuplicateGroup.from_engine(g) for g in scan.near], time.perf_counter() - t0,
                               scan.searches, scan.generation)

    def duplicates_sheet(self, report: DuplicateReport, path: str | Path) -> Path:
        """Draw ``report``'s groups as a PNG: one row per group, its representative first (the first 40 groups)."""
        from ftspl.engine.index.duplicates import sheet_rows
        from ftspl.engine.index.store import ShapeStore
        from ftspl.engine.rendering.sheet import save_sheet

        with ShapeStore(self.engine.store_path, readonly=True) as store:
            return save_sheet(sheet_rows(store, report.groups), path)


__all__ = ["LibraryCare"]
