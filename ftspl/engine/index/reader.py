"""Photo queries against the index: a read-only view that is safe while a writer runs.

A :class:`Reader` answers from the state the store had when it opened. A
long-lived one (``ftspl serve``) also *follows* the store: :meth:`Reader.refresh`
brings its ANN up to the last committed generation, so new shapes are found
without a restart.

Threads: any number of threads may call :meth:`Reader.search` and
:meth:`Reader.shapes` at once while one thread calls :meth:`Reader.refresh`.
hnswlib's ``add_items``/``mark_deleted``/``resize_index`` are not safe against
a concurrent ``knn_query``, and ``set_ef`` is global to the index, so the ANN
sits behind a readers-writer lock: queries share it, a delta is applied under
the exclusive side (a few ms for a commit of 32 shapes), and a query that
needs a wider beam than the index default takes the exclusive side too. A
large delta, a store file replaced by ``--rebuild`` or a generation that went
back is built into a fresh ANN outside every lock and swapped in. The SQLite
handle is shared under a plain lock (its reads take well under a millisecond).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ftspl.engine.errors import IndexStateError, UsageError
from ftspl.engine.index.anncache import AnnDelta, apply_delta, read_delta

if TYPE_CHECKING:
    from ftspl.engine.index.store.schema import ShapeRow

log = logging.getLogger(__name__)

#: a delta with more changes than this is built into a fresh ANN and swapped in,
#: so queries never wait behind a long in-place update
SWAP_OVER = 4096


@dataclass
class Hit:
    rank: int
    id: int
    path: str
    distance: float
    label: str | None
    kind: str
    content_hash: str | None = None  #: of the shape's file (or view folder) when it was indexed
    view: int | None = None  #: the rendered view closest to the photo (None: no per-view codes)
    view_similarity: float | None = None  #: that view's cosine similarity to the photo


@dataclass
class QueryResult:
    photo: str
    hits: list[Hit]
    generation: int | None = None  #: the store generation the ANN reflected for this answer


@dataclass
class RefreshReport:
    """What one :meth:`Reader.refresh` applied."""

    generation: int
    added: int = 0
    removed: int = 0
    rebuilt: bool = False


@dataclass(frozen=True)
class ReaderState:
    """A consistent picture of what the reader serves, replaced whole on every change.

    Reading it takes no lock (one attribute read), so an event loop may ask for
    it while a delta is being applied. Treat ``labels`` as read-only.
    """

    generation: int
    count: int
    labels: dict[str, int] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers so it is never starved."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def _file_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class Reader:
    """Read-only view of the index for queries; safe while a writer runs, and across threads.

    ``lib`` is the :class:`~ftspl.engine.index.library.Library` it reads (its
    folder, model, encoders and home); :meth:`Library.open_reader` makes one.
    """

    def __init__(self, lib) -> None:
        from ftspl.engine.index.store import ShapeStore

        if not lib.exists():
            raise IndexStateError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
        self.lib = lib
        from ftspl.engine.model.encoders import IMAGE_ENCODER

        self.store = ShapeStore(lib.store_path, readonly=True, check_same_thread=False)
        self._store_lock = threading.Lock()
        self._ann_lock = RWLock()
        self._refresh_lock = threading.Lock()
        self._follow: Any = None  #: the refresher's own SQLite handle (see refresh)
        self.labels: dict[str, int] | None = None  #: filled by refresh()
        self.warnings: list[str] = []
        try:
            self._file_id = _file_id(lib.store_path)
            lib.check_model(self.store)
            lib.encoders.warm(IMAGE_ENCODER)  # photo queries need it: build it while the index loads
            self.info: dict[str, Any] = self.store.get_info()
            self._spec_hash = self.info.get("render_spec_hash")
            # read before the ANN catches up: re-applying a change that open_ann already
            # applied is harmless (add replaces, remove ignores), missing one is not
            self.generation = self.store.generation()
            self.ann = lib.open_ann(self.store)
            self._publish()
        except BaseException:
            # never exit while onnxruntime is still building a session in the warm thread:
            # tearing down its thread pool mid-build aborts the process (SIGABRT)
            lib.encoders.wait_warm()
            self.store.close()
            raise

    def close(self) -> None:
        self.lib.encoders.wait_warm()  # see __init__: no exit while a session is being built
        with self._refresh_lock:
            if self._follow is not None:
                self._follow.close()
                self._follow = None
        with self._store_lock:
            self.store.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- queries ----------------------------------------------------------------
    def search(self, embeddings: np.ndarray, k: int) -> list[list[Hit]]:
        """Nearest shapes for each embedding; ``k`` is clamped to the index size."""
        return self.search_at(embeddings, k)[0]

    def search_at(self, embeddings: np.ndarray, k: int) -> tuple[list[list[Hit]], int]:
        """:meth:`search` plus the store generation the answer comes from."""
        if k < 1:
            raise UsageError("--top must be at least 1")
        q = np.asarray(embeddings, np.float32)
        # a beam wider than the index default changes hnswlib's global ef: alone, then
        exclusive = k > int(getattr(self.ann, "ef_search", k))
        try:
            with self._ann_lock.write() if exclusive else self._ann_lock.read():
                ids, dists, gen = self._knn(q, k)
        except RuntimeError:
            # hnswlib found too few live neighbours (many deletions) and HnswIndex widened
            # the beam, which other queries may have narrowed again meanwhile: retry alone
            with self._ann_lock.write():
                ids, dists, gen = self._knn(q, k)
        wanted = sorted({int(i) for row in ids for i in row})
        rows = {r.id: r for r in self.shapes(wanted)}
        out: list[list[Hit]] = []
        for row_ids, row_d in zip(ids, dists):
            hits: list[Hit] = []
            for i, d in zip(row_ids, row_d):
                r = rows.get(int(i))
                if r is None:  # removed by a writer since the ANN was brought up to date
                    continue
                hits.append(Hit(len(hits) + 1, int(i), r.path, float(d), r.label, r.kind, r.content_hash))
            out.append(hits[:k])
        return out, gen

    def _knn(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, int]:
        n = len(self.ann)
        if n == 0 or len(q) == 0:
            empty = np.zeros((len(q), 0))
            return empty.astype(np.int64), empty.astype(np.float32), self.generation
        ids, dists = self.ann.query(q, min(n, k))
        return ids, dists, self.generation

    def shapes(self, ids: list[int], previews: bool = False) -> list[ShapeRow]:
        """Stored rows for ``ids`` (missing ids skipped); safe from any thread."""
        with self._store_lock:
            return self.store.get(ids, previews=previews)

    def query_photos(self, photos: list[str | Path], k: int) -> list[QueryResult]:
        """Decode the photos and search in one batch; a bad photo raises ImageLoadError."""
        from ftspl.engine.loading.photos import load_photo

        return self.query_images([load_photo(p) for p in photos], [str(p) for p in photos], k)

    def view_embeddings(self, ids: list[int]) -> dict[int, np.ndarray]:
        """``id -> (V, D)`` per-view embeddings of the shapes that have them; safe from any thread."""
        with self._store_lock:
            return self.store.view_embeddings(ids)

    def embeddings(self, ids: list[int]) -> dict[int, np.ndarray]:
        """``id -> stored embedding`` of the shapes still stored; safe from any thread."""
        with self._store_lock:
            return self.store.embeddings_of(ids)

    def view_strip(self, shape_id: int) -> tuple[bytes, int] | None:
        """``(strip of the views, views)`` of one shape, or None; safe from any thread."""
        with self._store_lock:
            return self.store.view_strip(shape_id)

    def query_images(self, images: list, names: list[str], k: int, match=None) -> list[QueryResult]:
        """Search with already decoded RGB images (one batch), e.g. after per-file checks.

        ``match`` (:class:`~ftspl.engine.scoring.views.MatchConfig`) says whether to
        fill in each hit's matched view and how to re-rank; None: the defaults.
        """
        from ftspl.engine.model.preprocess import to_tensor
        from ftspl.engine.scoring.views import MatchConfig, search_matched

        pre = self.lib.encoders.preprocess
        if not images:
            return []
        emb = self.lib.encoders.embed_photos(np.stack([to_tensor(im, pre) for im in images]))
        hits, gen = search_matched(self, emb, k, match or MatchConfig())
        return [QueryResult(n, h, gen) for n, h in zip(names, hits)]

    def state(self) -> ReaderState:
        """Generation, shape count, labels and warnings, taken together (no lock, never blocks)."""
        return self._state

    def _publish(self) -> None:
        """Replace :meth:`state`'s snapshot (by the thread that changes the reader, after the change)."""
        self._state = ReaderState(self.generation, len(self.ann), dict(self.labels or {}), tuple(self.warnings))

    # -- following the writer ---------------------------------------------------
    def refresh(self) -> RefreshReport | None:
        """Bring the ANN up to the store's last commit; None when there was nothing to apply.

        Never raises for a store that is being replaced or rebuilt by another
        model: the reader keeps answering from what it has and says why in
        :attr:`warnings` (a model or render-spec change is never mixed in).
        """
        with self._refresh_lock:
            try:
                return self._refresh()
            except IndexStateError as exc:  # e.g. a --rebuild that has not created its tables yet
                self._set_warnings([f"the index cannot be followed right now ({exc}); answers stay at generation "
                                    + str(self.generation)])
                return None

    def _refresh(self) -> RefreshReport | None:
        from ftspl.engine.index.store import ShapeStore

        notes = self._active_model_notes()
        try:
            fid = _file_id(self.lib.store_path)
        except FileNotFoundError:
            stay = f"answers stay at generation {self.generation}"
            self._set_warnings([f"{self.lib.store_path} is missing (being rebuilt?); {stay}", *notes])
            return None
        replaced = fid != self._file_id
        if self._follow is None or replaced:
            if self._follow is not None:
                self._follow.close()
            self._follow = None
            self._follow = ShapeStore(self.lib.store_path, readonly=True, check_same_thread=False)
        info = self._follow.get_info()
        problem = self._identity_problem(info)
        if problem:
            self._set_warnings([problem, *notes])
            return None
        with self._follow.snapshot() as gen:
            if not replaced and gen == self.generation and self.labels is not None:
                self._set_warnings(notes)
                return None
            # a replaced store, or one that went back: everything, built aside; so is a large delta
            since = None if replaced or gen < self.generation else self.generation
            delta = read_delta(self._follow, since, whole_over=SWAP_OVER)
            labels = self._follow.labels()
        if delta.whole:
            self._swap_in(delta, labels, info, fid if replaced else None)
        else:
            with self._ann_lock.write():
                apply_delta(self.ann, delta)
                self.generation, self.labels, self.info = gen, labels, info
                self._publish()
        self._set_warnings(notes)
        return RefreshReport(gen, added=len(delta.ids), removed=len(delta.removed), rebuilt=delta.whole)

    def _swap_in(self, delta: AnnDelta, labels: dict[str, int], info: dict, new_file) -> None:
        """Build a fresh ANN (and open the replaced store) outside the locks, then swap."""
        from ftspl.engine.index.store import ShapeStore

        fresh = apply_delta(self.ann, delta)
        store = ShapeStore(self.lib.store_path, readonly=True, check_same_thread=False) if new_file else None
        with self._ann_lock.write():
            self.ann, self.generation, self.labels, self.info = fresh, delta.generation, labels, info
            self._publish()
            if store is not None:
                with self._store_lock:
                    self.store, store = store, self.store
                self._file_id = new_file
        if store is not None:
            store.close()  # the old handle: swapped out under the lock, so nobody holds it
        log.info("ANN rebuilt from the store at generation %d (%d shapes)", delta.generation, len(delta.ids))

    def _identity_problem(self, info: dict[str, Any]) -> str | None:
        """Why the store can no longer be followed (another model or render spec), or None."""
        man = self.lib.manifest
        stay = f"answers stay at generation {self.generation}; restart ftspl serve to load it"
        if info.get("model_hash") and info["model_hash"] != man.model_hash:
            return f"the index is now built by model {info.get('model_id')}, not {man.model_id}; {stay}"
        if info.get("embed_dim") is not None and int(info["embed_dim"]) != man.embed_dim:
            return f"the index now holds {info['embed_dim']}-d embeddings, not {man.embed_dim}-d; {stay}"
        spec = info.get("render_spec_hash")
        if spec and self._spec_hash and spec != self._spec_hash:
            return f"the index is now rendered with spec {spec}, not {self._spec_hash}; {stay}"
        if spec:
            self._spec_hash = spec
        return None

    def _active_model_notes(self) -> list[str]:
        """A note when ``ftspl export`` made another model active since this reader opened."""
        try:
            active = self.lib.home.active_file.read_text().strip()
        except OSError:
            return []
        mine = self.lib.manifest.model_id
        if active and active != mine:
            return [f"the active model is now {active}; this server runs {mine} and its index (restart to switch)"]
        return []

    def _set_warnings(self, warnings: list[str]) -> None:
        if warnings != self.warnings:
            self.warnings = warnings
            self._publish()


__all__ = ["SWAP_OVER", "Hit", "QueryResult", "RWLock", "Reader", "ReaderState", "RefreshReport"]
