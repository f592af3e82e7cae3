"""The library-care commands: ``index duplicates``, and ``index add --prune`` / ``--dry-run`` (a sync).

``index duplicates`` is declared here and registered on the ``index`` group by
:mod:`ftspl.cli.main`; this module imports only Typer at start-up, the
library inside each command. Both print one line per group or change, or
``--json`` (:class:`ftspl.results.DuplicateReport`, :class:`ftspl.results.SyncReport`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ftspl.cli import console

_MAX_DISTANCE_HELP = ("Shapes whose embeddings are closer than this are near duplicates (unit embeddings, 0 to 2; "
                      "default: the one benchmarks/duplicates.py chose, see docs/LIBRARY.md).")


def index_duplicates(
    max_distance: Optional[float] = typer.Option(None, "--max-distance", min=0.0, help=_MAX_DISTANCE_HELP),
    neighbours: Optional[int] = typer.Option(None, "--neighbours", min=1, help="Nearest shapes searched per shape (default 10; widened where copies crowd the list)."),
    sheet: Optional[Path] = typer.Option(None, "--sheet", help="Draw the groups (representative first) as a PNG contact sheet here."),
    home: Optional[Path] = typer.Option(None, "--home", help="Folder for models and index (default: $FTSPL_HOME or ./.ftspl)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Groups of the same model stored twice: exact copies (same file content) first, then near duplicates."""
    from ftspl.api import Library
    from ftspl.engine.home import Home

    lib = Library(Home.resolve(home))
    with console.progress(not as_json) as update:
        report = lib.duplicates(max_distance, neighbours=neighbours, progress=update)
    if sheet is not None and report.groups:
        lib.duplicates_sheet(report, sheet)
    if as_json:
        console.print_json(report.to_dict())
        return
    for n, g in enumerate(report.groups, start=1):
        rep = g.representative
        console.out(f"{g.kind} group {n} ({len(g.members)} shapes): {rep.path}")
        for m in g.members[1:]:
            console.out(f"  {m.distance:.4f}  {m.path}")
    console.out(f"{len(report.exact)} exact and {len(report.near)} near duplicate groups among {report.shapes} shapes "
                f"(max distance {report.max_distance:g}) in {report.seconds:.1f} s")
    if sheet is not None:
        console.out(f"contact sheet: {sheet}" if report.groups else "no groups: no contact sheet written")


def index_sync_cmd(root: Path, options: dict, prune: bool, dry_run: bool, home, runtime, as_json: bool) -> None:
    """``index add --prune`` / ``--dry-run``: :meth:`ftspl.api.Library.sync`; exit 1 when a file failed."""
    from ftspl.api import Library
    from ftspl.cli.commands import finish_add

    lib = Library(home, device=runtime.device, threads=runtime.intra_op_threads)
    with console.progress(not as_json) as update:
        report = lib.sync(root, dry_run=dry_run, prune=prune, progress=update, **options)
    add = report.add
    if not as_json:
        would = "would " if dry_run else ""
        for old, new in report.moved:
            console.out(f"{would}move {old} -> {new}")
        for path in report.removed:
            console.out(f"{would}remove {path}")
    line = (f"{'would add' if dry_run else 'added'} {add.added}, {'update' if dry_run else 'updated'} {add.updated}, "
            f"{'move' if dry_run else 'moved'} {len(report.moved)}, {'remove' if dry_run else 'removed'} "
            f"{len(report.removed)}, unchanged {add.unchanged}, failed {len(add.failures)} in {add.seconds:.1f} s")
    finish_add(add, report.to_dict(), as_json, line)


__all__ = ["index_duplicates", "index_sync_cmd"]
