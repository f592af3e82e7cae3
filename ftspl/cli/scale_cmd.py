"""Bodies of ``index add --ray/--shards`` and ``index merge``: scale-out indexing.

Kept apart from ``commands.py`` so that Ray (``ftspl.scale``) and pyarrow are
imported only when one of these options is given.
"""

from __future__ import annotations

from pathlib import Path


from ftspl.cli import console
from ftspl.cli.commands import add_summary, finish_add


def index_add_scaled(root: Path, cfg, home, runtime, as_json: bool, ray: str | None, shards: Path | None) -> None:
    """``index add`` with Ray rendering and encoding, and/or Parquet shards instead of the index."""
    from ftspl.engine.errors import UsageError
    from ftspl.engine.index.library import Library

    if shards is not None and cfg.rebuild:
        raise UsageError("--rebuild does not apply to --shards: shards mode never opens the index")
    lib = Library(home, runtime)
    producer = None
    if ray is not None:
        from ftspl.scale.driver import RayProducer

        producer = RayProducer(ray, lib.model_dir, runtime, cfg)
    with console.progress(not as_json) as update:
        if shards is not None:
            report, files = lib.write_shards(root, shards, cfg, progress=update, producer=producer)
        else:
            report, files = lib.add(root, cfg, progress=update, producer=producer), []
    extra: dict = {}
    if producer is not None and producer.plan is not None:
        plan = producer.plan
        extra["ray"] = {"render_actors": plan.render_actors, "encode_actors": plan.encode_actors,
                        "cpus_per_actor": plan.cpus_per_actor, "encode_device": plan.encode_device,
                        **{k: round(v, 3) for k, v in producer.timings.items()}}
    rate = report.processed / report.seconds if report.seconds > 0 else 0.0
    if shards is not None:
        extra["shards"] = [str(f) for f in files]
        line = (f"wrote {report.added} shapes to {len(files)} shard(s) in {shards}, unchanged {report.unchanged}, "
                f"failed {len(report.failed)} in {report.seconds:.1f} s ({rate:.2f} shapes/s); "
                f"ingest them with: ftspl index merge {shards}")
    else:
        line = (f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
                f"failed {len(report.failed)} in {report.seconds:.1f} s ({rate:.2f} shapes/s)")
    finish_add(report, add_summary(report, extra), as_json, line)


def index_merge_cmd(folders: list[Path], cfg, home, as_json: bool) -> None:
    """Ingest Parquet shards into the index (the active model's only)."""
    from ftspl.engine.index.library import Library

    lib = Library(home)
    with console.progress(not as_json) as update:
        report = lib.merge(folders, cfg, progress=update)
    rate = report.processed / report.seconds if report.seconds > 0 else 0.0
    line = (f"merged: added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
            f"failed {len(report.failed)} in {report.seconds:.1f} s ({rate:.0f} shapes/s)")
    finish_add(report, add_summary(report), as_json, line)
