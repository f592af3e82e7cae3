"""The shape library: an index folder bound to one model; a thin facade over the index package.

Data flows one way: files -> views (uint8) -> embeddings (ONNX) -> SQLite + ANN.
Each verb is a module of its own, and :class:`Library` binds them to a home and
its active model:

* :meth:`Library.add` and :meth:`Library.write_shards`: :mod:`ftspl.engine.index.add`
  (the write pipeline, :mod:`ftspl.engine.index.pipeline`, into the index or into
  Parquet shards); a Ray cluster (``ftspl.scale``) can be the producer;
* :meth:`Library.merge`: :mod:`ftspl.engine.index.merge`; :meth:`Library.remove`:
  :mod:`ftspl.engine.index.remove`; :meth:`Library.reembed`: :mod:`ftspl.engine.index.reembed`;
* :meth:`Library.open_reader`: queries, :mod:`ftspl.engine.index.reader`.

Crash safety: SQLite (``shapes.sqlite``, :mod:`ftspl.engine.index.store`) is the
source of truth and each batch is committed in one transaction; the ANN file is
a derived cache saved atomically with the store generation it reflects. Whoever
opens the index catches a stale cache up with SQLite
(:mod:`ftspl.engine.index.anncache`), so a kill at any moment leaves an index
that opens with exactly the committed shapes, and the next add resumes by
skipping files whose content hash is already stored.

Concurrency: one writer (``writer.lock``, flock; :mod:`ftspl.engine.index.session`);
readers open SQLite read-only (WAL) and never block on or disturb the writer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ftspl.engine.home import Home
from ftspl.engine.index import add as adding
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import ANN_NAME, LOCK_NAME, STORE_NAME, IndexFolder
from ftspl.engine.index.pipeline.plan import content_hash
from ftspl.engine.index.pipeline.records import AddReport, Producer, ProgressFn
from ftspl.engine.model.encoders import Encoders, RuntimeConfig


class Library:
    """An index folder bound to one model: add/remove shapes, query photos."""

    def __init__(self, home: Home, runtime: RuntimeConfig = RuntimeConfig(), model_dir: Path | None = None) -> None:
        self.home = home
        self.folder = IndexFolder.at(home.index_dir)
        self.dir = self.folder.dir
        self.model_dir = model_dir or home.active_model_dir()
        self.encoders = Encoders(self.model_dir, runtime, graph_cache_dir=home.cache / "onnxruntime")
        self.manifest = self.encoders.manifest

    @property
    def store_path(self) -> Path:
        return self.folder.store

    @property
    def ann_path(self) -> Path:
        return self.folder.ann

    def exists(self) -> bool:
        return self.folder.exists()

    def check_model(self, store) -> None:
        """Refuse an index built by another model than the active one."""
        from ftspl.engine.index.session import check_model

        check_model(store, self.manifest, self.dir)

    def open_ann(self, store, cfg: IndexConfig | None = None):
        """The ANN cache, loaded and brought up to the store's generation (in memory)."""
        from ftspl.engine.index.anncache import AnnCache

        return AnnCache(self.ann_path, self.manifest.embed_dim).open(store, cfg)

    # -- writing --------------------------------------------------------------
    def add(self, root: str | Path, cfg: IndexConfig = IndexConfig(), progress: ProgressFn | None = None,
            should_stop: Callable[[], bool] | None = None, producer: Producer | None = None) -> AddReport:
        """Index every shape under ``root`` (incremental by content hash).

        ``producer`` renders and encodes (default: this machine; ``ftspl.scale``
        passes a Ray one); this process stays the only writer either way.
        """
        return adding.add(self.folder, self.manifest, self.encoders, root, cfg, progress, should_stop, producer)

    def write_shards(self, root: str | Path, folder: str | Path, cfg: IndexConfig = IndexConfig(),
                     progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
                     producer: Producer | None = None) -> tuple[AddReport, list[Path]]:
        """Encode the shapes under ``root`` into Parquet shards in ``folder`` instead of the index.

        Returns the report and the shard files written; a rerun skips what the shards hold.
        """
        return adding.write_shards(self.manifest, self.encoders, root, folder, cfg, progress, should_stop, producer)

    def merge(self, folders: list[str | Path], cfg: IndexConfig = IndexConfig(),
              progress: ProgressFn | None = None) -> AddReport:
        """Ingest Parquet shards (``index merge``): the active model's only, unchanged paths skipped."""
        from ftspl.engine.index.merge import merge

        return merge(self.folder, self.manifest, folders, cfg, progress)

    def remove(self, paths: list[str], cfg: IndexConfig = IndexConfig()) -> list[str]:
        """Remove shapes by path (a file, a view folder, or every shape under a folder)."""
        from ftspl.engine.index.remove import remove

        return remove(self.folder, self.manifest, paths, cfg)

    def reembed(self, cfg: IndexConfig = IndexConfig(), progress: ProgressFn | None = None,
                should_stop: Callable[[], bool] | None = None, drop_missing: bool = False):
        """Re-encode every stored shape with this (the active) model: :mod:`ftspl.engine.index.reembed`."""
        from ftspl.engine.index.reembed import reembed

        return reembed(self.folder, self.manifest, self.encoders, self.home.cache / "views", cfg, progress,
                       should_stop, drop_missing)

    # -- reading --------------------------------------------------------------
    def open_reader(self):
        """A :class:`~ftspl.engine.index.reader.Reader` of this index (queries; safe while a writer runs)."""
        from ftspl.engine.index.reader import Reader

        return Reader(self)


__all__ = ["ANN_NAME", "LOCK_NAME", "STORE_NAME", "AddReport", "IndexConfig", "Library", "content_hash"]
