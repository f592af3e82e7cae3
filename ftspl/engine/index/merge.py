"""``index merge``: ingest Parquet shards written by ``--shards`` or by any engine that writes the schema.

Shards of another model, or of a render spec other than the index's, are
refused before anything is written; rows whose path is stored with the same
content hash are skipped, changed ones updated, bad rows reported one line
each, and ``commit_every`` rows go into each transaction through the index's
one writer (:func:`~ftspl.engine.index.session.write_session`).
"""

from __future__ import annotations

from pathlib import Path

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index import shards
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import IndexFolder
from ftspl.engine.index.pipeline.commit import Committer
from ftspl.engine.index.pipeline.plan import stored_spec
from ftspl.engine.index.pipeline.records import AddReport, EncodedShape, ProgressFn
from ftspl.engine.index.session import timed, write_session
from ftspl.engine.index.store.schema import normalize_path


def merge(folder: IndexFolder, manifest, shard_folders: list[str | Path], cfg: IndexConfig,
          progress: ProgressFn | None = None) -> AddReport:
    """Ingest the shards under ``shard_folders``: the active model's only, unchanged paths skipped."""
    files = shards.shard_files(shard_folders)
    found = shards.read_identity(files)
    shards.check_model(found, manifest, ", ".join(str(f) for f in shard_folders))
    report = AddReport()
    with timed(report), write_session(folder, manifest, cfg, rebuild=cfg.rebuild) as session:
        spec = stored_spec(session.store.get_info()) if session.store.count() else None
        if spec is None:
            spec = shards.resolve_spec(found, manifest.get_render_spec())
        elif spec.digest() != found.render_spec_hash:
            raise IndexStateError(
                f"{folder.dir}: the index holds shapes rendered with spec {spec.digest()}, the shards "
                f"with {found.render_spec_hash}; merge them into another --home or --rebuild"
            )
        session.claim(spec)
        committer = Committer(session.sink(report), report, cfg.commit_every, shards.row_count(files), progress,
                              phase="merge")
        merge_rows(files, session.store.entries(), committer, manifest.embed_dim)
    return report


def merge_rows(files: list[Path], stored: dict[str, tuple[int, str]], committer: Committer, dim: int) -> None:
    """Feed every new or changed row of ``files`` to the committer (unchanged rows skipped by content hash).

    A path listed twice keeps its first row; a second row with other content is a failure line.
    """
    seen: dict[str, str] = {}
    for path, rec, error in shards.iter_rows(files, dim):
        committer.seen()
        if error is not None:
            committer.fail(path, error)
            continue
        key = normalize_path(path)
        if key in seen:
            if seen[key] != rec.content_hash:
                committer.fail(path, "listed twice in the shards with different content; the first row is kept")
            continue
        seen[key] = rec.content_hash
        entry = stored.get(key)
        if entry is not None and entry[1] == rec.content_hash:
            committer.report.unchanged += 1
            continue
        committer.add(EncodedShape(rec, None if entry is None else entry[0]))
    committer.flush()


__all__ = ["merge", "merge_rows"]
