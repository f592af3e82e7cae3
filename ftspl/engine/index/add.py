"""``index add``: every shape under a folder into the index, or (``--shards``) into Parquet shards.

Both plan alike (scan, content hashes, skip what the target holds) and drive a
producer (this machine's, or ``ftspl.scale``'s Ray one) into a sink: the index
through its one writer (:func:`~ftspl.engine.index.session.write_session`), or
a :class:`~ftspl.engine.index.shards.ShardWriter`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ftspl.engine.errors import InputFileError
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import IndexFolder
from ftspl.engine.index.pipeline.local import LocalProducer
from ftspl.engine.index.pipeline.plan import known_under, pending_shapes, render_spec
from ftspl.engine.index.pipeline.records import AddReport, PendingShape, Producer, ProgressFn, Sink, StopFn
from ftspl.engine.index.session import timed, write_session
from ftspl.engine.loading.scan import ShapeSource, scan


def scan_shapes(root: str | Path, cfg: IndexConfig) -> list[ShapeSource]:
    """The shapes under ``root``; none at all is an error that names the formats looked for."""
    sources = scan(root, cfg.label_from)
    if not sources:
        from ftspl.engine.loading.meshes import mesh_extensions

        raise InputFileError(root, f"no meshes ({' '.join(mesh_extensions())}) or view folders found")
    return sources


def produce(producer: Producer, todo: list[PendingShape], spec, open_sink: Callable[[], Sink], report: AddReport,
            progress: ProgressFn | None, should_stop: StopFn | None) -> None:
    """Start ``producer`` (its start-up overlaps opening the sink), run it when there is work, close both."""
    try:
        producer.start(todo, spec)
        sink = open_sink()
        try:
            if todo:
                producer.run(todo, sink, report, progress, should_stop)
        finally:
            sink.close()  # whole records only: what was encoded before an error is kept
    finally:
        producer.close()


def add(folder: IndexFolder, manifest, encoders, root: str | Path, cfg: IndexConfig,
        progress: ProgressFn | None = None, should_stop: StopFn | None = None,
        producer: Producer | None = None) -> AddReport:
    """Index every shape under ``root`` (incremental by content hash); this process is the only writer."""
    sources = scan_shapes(root, cfg)
    report = AddReport()
    producer = producer or LocalProducer(encoders, cfg)
    with timed(report), write_session(folder, manifest, cfg, rebuild=cfg.rebuild) as session:
        spec = render_spec(manifest, session.store.get_info(), cfg.up, folder.dir)
        session.claim(spec)
        todo = pending_shapes(sources, known_under(session.store, root, sources), report, progress)
        produce(producer, todo, spec, lambda: session.sink(report), report, progress, should_stop)
    return report


def write_shards(manifest, encoders, root: str | Path, out: str | Path, cfg: IndexConfig,
                 progress: ProgressFn | None = None, should_stop: StopFn | None = None,
                 producer: Producer | None = None) -> tuple[AddReport, list[Path]]:
    """Encode the shapes under ``root`` into Parquet shards in ``out``; the report and the files written.

    No index is opened: the render spec is the model's (with ``cfg.up``). Shapes
    the folder's shards hold with the same content are skipped, so a killed run resumes.
    """
    from ftspl.engine.index.shards import ShardIdentity, ShardWriter, known_shapes
    from ftspl.engine.index.store.lock import WriterLock

    sources = scan_shapes(root, cfg)
    out = Path(out).expanduser().resolve()
    spec = render_spec(manifest, {}, cfg.up)
    identity = ShardIdentity.of(manifest, spec)
    report = AddReport()
    producer = producer or LocalProducer(encoders, cfg)
    out.mkdir(parents=True, exist_ok=True)
    with timed(report), WriterLock(out / ".writer.lock", wait=cfg.wait_lock):
        todo = pending_shapes(sources, known_shapes(out, identity), report, progress)
        writer = ShardWriter(out, identity, report)
        produce(producer, todo, spec, lambda: writer, report, progress, should_stop)
    return report, writer.files


__all__ = ["add", "produce", "scan_shapes", "write_shards"]
