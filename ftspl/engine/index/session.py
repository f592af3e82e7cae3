"""One writer's turn on an index: the lock, the store opened for writing, the ANN cache, and the sink.

``index add``, ``merge``, ``remove`` and ``reembed`` each run inside one
:func:`write_session`, so the order that keeps the index crash-safe is written
once: take the writer lock, open the store (wiped first for ``--rebuild``),
claim it for the model and render spec (:meth:`WriteSession.claim`), catch the
ANN cache up, let the caller commit batches, and save the ANN file with the
generation it reflects only when the caller finished without an error (after a
crash or an error the next open catches the file up from the store).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import IndexStateError, LookMismatchError
from ftspl.engine.index.anncache import AnnCache
from ftspl.engine.index.ann.base import AnnIndex
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.folder import IndexFolder
from ftspl.engine.index.pipeline.commit import IndexSink
from ftspl.engine.index.pipeline.plan import stored_spec
from ftspl.engine.index.pipeline.records import AddReport
from ftspl.engine.index.store.lock import WriterLock
from ftspl.engine.index.store.shapes import ShapeStore


def index_look(info: dict) -> str | None:
    """The look of the views an index was built from (None: no shapes rendered yet; grey before looks existed)."""
    spec = stored_spec(info)
    return None if spec is None else spec.look


def check_model(store, manifest, where) -> None:
    """Refuse an index built by another model than ``manifest``'s (the active one); another look says so."""
    info = store.get_info()
    if info.get("model_hash") and info["model_hash"] != manifest.model_hash:
        look = index_look(info)
        if look is not None and look != manifest.look:
            raise LookMismatchError(where, look, manifest.look)
        raise IndexStateError(
            f"{where}: index was built by model {info.get('model_id')}, not the active model "
            f"{manifest.model_id}; re-embed it with 'ftspl index reembed' (or rebuild it with "
            "'ftspl index add FOLDER --rebuild')"
        )


class WriteSession:
    """The open store and ANN cache of the one writer; made by :func:`write_session`."""

    def __init__(self, folder: IndexFolder, manifest, cfg: IndexConfig, store: ShapeStore) -> None:
        self.folder, self.manifest, self.cfg, self.store = folder, manifest, cfg, store
        self.cache = AnnCache(folder.ann, manifest.embed_dim)
        self.ann: AnnIndex | None = None  #: set by open_ann; saved when the session ends well

    def claim(self, spec: RenderSpec) -> None:
        """Bind the store to the model and ``spec`` (an empty store is claimed, another model's refused:
        shapes of another look by name)."""
        man = self.manifest
        look = index_look(self.store.get_info())
        if look is not None and look != spec.look and self.store.count() > 0:
            raise LookMismatchError(self.folder.dir, look, spec.look)
        self.store.ensure_compatible(man.model_id, man.model_hash, spec.digest(), man.embed_dim)
        spec_json = json.dumps(spec.to_dict(), sort_keys=True)
        if self.store.get_info().get("render_spec") != spec_json:
            self.store.set_info("render_spec", spec_json)

    def open_ann(self) -> AnnIndex:
        """The ANN cache, caught up with the store (loaded once per session)."""
        if self.ann is None:
            self.ann = self.cache.open(self.store, self.cfg)
        return self.ann

    def sink(self, report: AddReport) -> IndexSink:
        """The sink that commits to the store and the ANN (refreshing the ANN file now and then)."""
        return IndexSink(self.store, self.open_ann(), report, self.save_ann, self.cfg.save_ann_every_s)

    def save_ann(self) -> None:
        if self.ann is not None:
            self.cache.save(self.ann, self.store)


@contextlib.contextmanager
def write_session(folder: IndexFolder, manifest, cfg: IndexConfig, rebuild: bool = False) -> Iterator[WriteSession]:
    """Hold the writer lock with the store open; save the ANN file if the block opened it and succeeded."""
    folder.dir.mkdir(parents=True, exist_ok=True)
    with WriterLock(folder.lock, wait=cfg.wait_lock):
        if rebuild:
            folder.wipe()
        store = ShapeStore(folder.store)
        try:
            session = WriteSession(folder, manifest, cfg, store)
            yield session
            session.save_ann()
        finally:
            store.close()


@contextlib.contextmanager
def timed(report) -> Iterator[None]:
    """Set ``report.seconds`` to the block's wall time."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        report.seconds = time.perf_counter() - t0


__all__ = ["WriteSession", "check_model", "index_look", "timed", "write_session"]
