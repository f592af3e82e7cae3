"""Bodies of ``index add --ray/--shards`` and ``index merge``: scale-out indexing through :mod:`ftspl.api`.

Kept apart from ``commands.py`` so that Ray (``ftspl.scale``) and pyarrow are
imported only when one of these options is given.
"""

from __future__ import annotations

from pathlib import Path

from ftspl.cli import console
from ftspl.cli.commands import finish_add


def index_add_scaled(root: Path, options: dict, home, runtime, as_json: bool, ray: str | None,
                     shards: Path | None) -> None:
    """``index add`` with Ray rendering and encoding, and/or Parquet shards instead of the index."""
    from ftspl.api import Library

    lib = Library(home, device=runtime.device, threads=runtime.intra_op_threads)
    with console.progress(not as_json) as update:
        report = lib.add(root, progress=update, ray=ray, shards=shards, **options)
    if shards is not None:
        line = (f"wrote {report.added} shapes to {len(report.shards or [])} shard(s) in {shards}, unchanged "
                f"{report.unchanged}, failed {len(report.failures)} in {report.seconds:.1f} s "
                f"({report.shapes_per_s:.2f} shapes/s); ingest them with: ftspl index merge {shards}")
    else:
        line = (f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
                f"failed {len(report.failures)} in {report.seconds:.1f} s ({report.shapes_per_s:.2f} shapes/s)")
    finish_add(report, report.to_dict(), as_json, line)


def index_merge_cmd(folders: list[Path], wait: bool, commit_every: int, home, as_json: bool) -> None:
    """Ingest Parquet shards into the index (the active model's only)."""
    from ftspl.api import Library

    with console.progress(not as_json) as update:
        report = Library(home).merge(folders, wait=wait, commit_every=commit_every, progress=update)
    line = (f"merged: added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"failed {len(report.failures)} in {report.seconds:.1f} s ({report.shapes_per_s:.0f} shapes/s)")
    finish_add(report, report.to_dict(), as_json, line)
