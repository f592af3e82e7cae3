"""The ``ftspl index`` commands: add (with --ray/--shards and --prune/--dry-run), merge, remove, stats,
verify, reembed and duplicates.

Each command parses its flags and calls one function of :mod:`ftspl.cli.commands`,
:mod:`ftspl.cli.scale_cmd` or :mod:`ftspl.cli.care_cmds`, imported inside it so
that the help screens and a query never pay for the index's imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ftspl.cli import care_cmds
from ftspl.cli.options import UP_HELP, DeviceOpt, HomeOpt, JsonOpt, ThreadsOpt
from ftspl.cli.options import home_of as _home, runtime_of as _runtime
from ftspl.engine.constants import MAX_FACES, MAX_FILE_BYTES, MAX_VERTICES
from ftspl.engine.errors import UsageError as FtsplUsage

index_app = typer.Typer(help="Build and inspect the shape index.", no_args_is_help=True)


@index_app.command("add")
def index_add(
    root: Path = typer.Argument(..., help="A folder of meshes (searched recursively) or one mesh file."),
    up: Optional[str] = typer.Option(None, "--up", help=UP_HELP),
    label_from: str = typer.Option("top", "--label-from", help="top (first folder under ROOT), parent, or none."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of failing."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Start a new index (drops one made by another model)."),
    hnsw_ef: Optional[int] = typer.Option(None, "--hnsw-ef", min=1, help="HNSW search breadth, stored in the index (default: size-aware, 128 up to 100k shapes, 384 at 1M)."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", min=2, help="HNSW graph degree M for a new index (default 32)."),
    hnsw_ef_construction: Optional[int] = typer.Option(None, "--hnsw-ef-construction", min=1, help="HNSW build breadth for a new index (default 200)."),
    ann_backend: Optional[str] = typer.Option(None, "--ann-backend", help="Nearest-neighbour engine of a new index: hnsw (default), faiss-hnsw (near 1M shapes), usearch or exact; an existing index keeps its own."),
    commit_every: int = typer.Option(32, "--commit-every", min=1, help="Shapes per committed batch."),
    file_timeout: float = typer.Option(60.0, "--file-timeout", min=0.1, help="Seconds one file may take to load and render before it is skipped."),
    max_faces: int = typer.Option(MAX_FACES, "--max-faces", min=1, help="Refuse meshes with more faces."),
    max_vertices: int = typer.Option(MAX_VERTICES, "--max-vertices", min=1, help="Refuse meshes with more vertices."),
    max_file_bytes: int = typer.Option(MAX_FILE_BYTES, "--max-file-bytes", min=1, help="Refuse larger mesh files (and the assets they reference)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="auto|ADDRESS|local", help="Render and encode on a Ray cluster: auto (the running one), HOST:PORT, or local (start one here). Needs ftspl[ray]."),
    shards: Optional[Path] = typer.Option(None, "--shards", help="Write Parquet shards to this folder instead of the index (ingest with 'index merge')."),
    prune: bool = typer.Option(False, "--prune", help="Also remove the shapes under ROOT whose files are gone, and re-point moved files (same content) without rendering them."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be added, updated, moved and (with --prune) removed; write nothing."),
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Index every shape under ROOT; unchanged files are skipped, changed ones re-embedded."""
    from ftspl.cli.commands import index_add_cmd

    options = dict(label_from=label_from, up=up, wait=wait, rebuild=rebuild, ann_backend=ann_backend, hnsw_m=hnsw_m,
                   hnsw_ef=hnsw_ef, hnsw_ef_construction=hnsw_ef_construction, commit_every=commit_every,
                   file_timeout=file_timeout, max_faces=max_faces, max_vertices=max_vertices,
                   max_file_bytes=max_file_bytes)
    if (prune or dry_run) and (ray is not None or shards is not None):
        raise FtsplUsage("--prune and --dry-run work on this machine's index: leave out --ray and --shards")
    if ray is not None or shards is not None:
        from ftspl.cli.scale_cmd import index_add_scaled

        index_add_scaled(root, options, _home(home), _runtime(device, threads), as_json, ray, shards)
        return
    if prune or dry_run:
        from ftspl.cli.care_cmds import index_sync_cmd

        index_sync_cmd(root, options, prune, dry_run, _home(home), _runtime(device, threads), as_json)
        return
    index_add_cmd(root, options, _home(home), _runtime(device, threads), as_json)


index_app.command("duplicates")(care_cmds.index_duplicates)


@index_app.command("merge")
def index_merge(
    folders: list[Path] = typer.Argument(..., help="Folders of Parquet shards (from 'index add --shards' or any engine)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of failing."),
    commit_every: int = typer.Option(1024, "--commit-every", min=1, help="Shapes per committed batch."),
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Ingest Parquet shards into the index (refuses shards of another model or render spec)."""
    from ftspl.cli.scale_cmd import index_merge_cmd

    index_merge_cmd(folders, wait, commit_every, _home(home), as_json)


@index_app.command("remove")
def index_remove(
    paths: list[Path] = typer.Argument(..., help="Shape files, view folders, or folders to remove."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of failing."),
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Remove shapes from the index."""
    from ftspl.cli.commands import index_remove_cmd

    index_remove_cmd(paths, wait, _home(home), as_json)


@index_app.command("stats")
def index_stats(home: Optional[Path] = HomeOpt, as_json: bool = JsonOpt) -> None:
    """Count, model, size on disk and labels of the index."""
    from ftspl.cli.commands import index_stats_cmd

    index_stats_cmd(_home(home), as_json)


@index_app.command("verify")
def index_verify(home: Optional[Path] = HomeOpt, as_json: bool = JsonOpt) -> None:
    """Check that SQLite and the HNSW index agree (exit 1 if not)."""
    from ftspl.cli.commands import index_verify_cmd

    index_verify_cmd(_home(home), as_json)


@index_app.command("reembed")
def index_reembed(
    drop_missing: bool = typer.Option(False, "--drop-missing", help="Swap even when some shapes' files are gone or no longer load, removing those shapes (default: the index stays on its model and they are listed)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of failing."),
    commit_every: int = typer.Option(32, "--commit-every", min=1, help="Shapes per part file (the most a kill can lose)."),
    file_timeout: float = typer.Option(60.0, "--file-timeout", min=0.1, help="Seconds one file may take to load and render before it fails."),
    device: str = DeviceOpt,
    threads: int = ThreadsOpt,
    home: Optional[Path] = HomeOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Re-encode every indexed shape with the active model (after 'ftspl export'): resumable, swapped in one commit."""
    from ftspl.cli.commands import index_reembed_cmd

    options = dict(drop_missing=drop_missing, wait=wait, commit_every=commit_every, file_timeout=file_timeout)
    index_reembed_cmd(options, _home(home), _runtime(device, threads), as_json)
