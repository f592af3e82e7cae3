"""The Python API: ``lib = ftspl.open(home)``, then ``lib.add``, ``lib.query``, ``lib.remove``, ``lib.stats``, ``lib.verify``.

A :class:`Library` is a facade over the engine's index (:mod:`ftspl.engine.index`):
the ``ftspl`` command and ``ftspl serve`` call it too, so the three faces
answer the same records (:mod:`ftspl.results`). The model and the index open on
first use, not in :func:`open`; nothing here imports PyTorch.

Threads and processes. One ``Library`` may be shared by any number of threads:
:meth:`Library.query` runs concurrently (the index reader is thread safe and
onnxruntime sessions accept concurrent runs), and each query first brings the
reader up to the index's last commit, so shapes that another process (or
:meth:`Library.add` in this one) commits are found without reopening. Writes
(:meth:`Library.add`, :meth:`Library.remove`) take the index's writer lock: one
writer at a time across processes; a second one raises
:class:`~ftspl.engine.errors.IndexLockedError` unless ``wait=True``. Queries
never wait for a writer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftspl.engine.constants import MAX_FACES, MAX_FILE_BYTES, MAX_IMAGE_PIXELS, MAX_VERTICES
from ftspl.engine.errors import FtsplError, UsageError
from ftspl.library_care import LibraryCare
from ftspl.photo_search import decode_photos, open_set_cut, search_photos
from ftspl.results import AddReport, IndexStats, QueryAnswer, VerifyReport

#: ``progress(phase, done, total)``, called while shapes are added
Progress = Callable[[str, int, int], None]


def as_home(home):
    """A :class:`~ftspl.engine.home.Home` from a folder, None (``$FTSPL_HOME`` or ``./.ftspl``) or a Home."""
    from ftspl.engine.home import Home

    return home if isinstance(home, Home) else Home.resolve(home)


def index_config(*, label_from: str = "top", up: str | None = None, wait: bool = False, rebuild: bool = False,
                 ann_backend: str | None = None, hnsw_m: int | None = None, hnsw_ef: int | None = None,
                 hnsw_ef_construction: int | None = None, commit_every: int = 32, file_timeout: float = 60.0,
                 max_faces: int = MAX_FACES, max_vertices: int = MAX_VERTICES,
                 max_file_bytes: int = MAX_FILE_BYTES):
    """The engine's index options from :meth:`Library.add`'s keywords (the ``index add`` flags, same names)."""
    from ftspl.engine.index.library import IndexConfig
    from ftspl.engine.loading.limits import MeshLimits

    if commit_every < 1:
        raise UsageError(f"commit_every must be at least 1, got {commit_every}")
    return IndexConfig(
        label_from=label_from, up=up, wait_lock=wait, rebuild=rebuild, ann_backend=ann_backend, ann_m=hnsw_m,
        ann_ef_search=hnsw_ef, ann_ef_construction=hnsw_ef_construction, commit_every=commit_every,
        batch_shapes=min(IndexConfig.batch_shapes, commit_every), file_timeout_s=file_timeout,
        limits=MeshLimits(max_file_bytes=max_file_bytes, max_faces=max_faces, max_vertices=max_vertices),
    )


class Library(LibraryCare):
    """A shape library: a home folder's active model and its index (see the module for threads).

    :class:`~ftspl.library_care.LibraryCare` adds ``sync``, ``duplicates`` and ``duplicates_sheet``.
    """

    index_config = staticmethod(index_config)

    def __init__(self, home: str | Path | None = None, device: str = "auto", threads: int = 0,
                 follow: bool = True) -> None:
        """``home``: the folder with ``models/`` and ``index/`` (None: ``$FTSPL_HOME`` or ``./.ftspl``).

        ``device``: auto, cpu or cuda (onnxruntime); ``threads``: onnxruntime's
        intra-op threads (0: every core). ``follow=False`` leaves bringing the
        reader up to date to the caller (``ftspl serve`` follows in its own thread).
        """
        from ftspl.engine.model.encoders import RuntimeConfig

        self.home = as_home(home)
        self.runtime = RuntimeConfig(device=device, intra_op_threads=threads)
        self.follow = follow
        self._lock = threading.Lock()
        self._engine: Any = None
        self._reader: Any = None
        self._embedder: Any = None  #: renders query shapes (ftspl.shape_query); its child lives until close()

    # -- opening -------------------------------------------------------------------
    @property
    def engine(self):
        """The engine's :class:`~ftspl.engine.index.library.Library` (opens the active model on first use)."""
        if self._engine is None:
            with self._lock:
                if self._engine is None:
                    from ftspl.engine.index.library import Library as EngineLibrary

                    self._engine = EngineLibrary(self.home, self.runtime)
        return self._engine

    @property
    def model_id(self) -> str:
        return self.engine.manifest.model_id

    def reader(self):
        """The index reader queries go through (opened on first use; raises when there is no index yet)."""
        if self._reader is None:
            engine = self.engine
            with self._lock:
                if self._reader is None:
                    self._reader = engine.open_reader()
        return self._reader

    def close(self) -> None:
        """Close the index reader (the library opens it again on the next query)."""
        with self._lock:
            reader, self._reader = self._reader, None
            embedder, self._embedder = self._embedder, None
        if embedder is not None:
            embedder.close()
        if reader is not None:
            reader.close()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------
    def add(self, path: str | Path, *, progress: Progress | None = None, ray: str | None = None,
            shards: str | Path | None = None, **options: Any) -> AddReport:
        """Index every shape under ``path`` (a folder, searched recursively, or one file).

        Unchanged files are skipped and changed ones re-embedded; a file that
        cannot be used is listed in ``failures`` with its reason and the others
        are indexed. Options are :func:`index_config`'s (``label_from``, ``up``,
        ``wait``, ``rebuild``, ``ann_backend``, the caps...).

        ``ray`` (``auto``, ``HOST:PORT`` or ``local``; needs ``ftspl[ray]``)
        renders and encodes on a Ray cluster while this process stays the only
        writer. ``shards`` writes Parquet shards to that folder instead of the
        index (ingest them with :meth:`merge`; a rerun skips what they hold).
        """
        cfg = index_config(**options)
        if shards is not None and cfg.rebuild:
            raise UsageError("rebuild does not apply to shards: shards mode never opens the index")
        producer = None
        if ray is not None:
            from ftspl.scale.driver import RayProducer

            producer = RayProducer(ray, self.engine.model_dir, self.runtime, cfg)
        files = None
        if shards is not None:
            report, written = self.engine.write_shards(path, shards, cfg, progress=progress, producer=producer)
            files = [str(f) for f in written]
        else:
            report = self.engine.add(path, cfg, progress=progress, producer=producer)
        plan = producer.plan if producer is not None else None
        ray_info = None if plan is None else {
            "render_actors": plan.render_actors, "encode_actors": plan.encode_actors,
            "cpus_per_actor": plan.cpus_per_actor, "encode_device": plan.encode_device,
            **{k: round(v, 3) for k, v in producer.timings.items()}}
        return AddReport.from_engine(report, files, ray_info)

    def merge(self, folders: str | Path | Sequence[str | Path], *, wait: bool = False, commit_every: int = 1024,
              progress: Progress | None = None) -> AddReport:
        """Ingest Parquet shards (from ``add(..., shards=DIR)`` or any engine); refuses another model's or spec's."""
        from ftspl.engine.index.library import IndexConfig

        if commit_every < 1:
            raise UsageError(f"commit_every must be at least 1, got {commit_every}")
        items = [folders] if isinstance(folders, (str, Path)) else list(folders)
        report = self.engine.merge(items, IndexConfig(wait_lock=wait, commit_every=commit_every), progress=progress)
        return AddReport.from_engine(report)

    def reembed(self, *, drop_missing: bool = False, wait: bool = False, commit_every: int = 32,
                file_timeout: float = 60.0, progress: Progress | None = None):
        """Re-encode every indexed shape with the active model (after an export): resumable, swapped in one commit.

        Returns the engine's :class:`~ftspl.engine.index.reembed.ReembedReport`.
        """
        from ftspl.engine.index.library import IndexConfig

        if commit_every < 1:
            raise UsageError(f"commit_every must be at least 1, got {commit_every}")
        cfg = IndexConfig(wait_lock=wait, commit_every=commit_every, file_timeout_s=file_timeout,
                          batch_shapes=min(IndexConfig.batch_shapes, commit_every))
        return self.engine.reembed(cfg, progress=progress, drop_missing=drop_missing)

    def remove(self, paths: str | Path | Sequence[str | Path], *, wait: bool = False) -> list[str]:
        """Remove shapes (files, view folders, or every shape under a folder); returns the paths removed."""
        from ftspl.engine.index.library import IndexConfig

        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        return self.engine.remove([str(p) for p in items], IndexConfig(wait_lock=wait))

    # -- reading -------------------------------------------------------------------
    def query(self, photos: Any, top: int = 10, *, box: Sequence[float] | None = None, fuse: bool = False,
              fusion: str | None = None, rerank: str | None = None, rerank_weight: float | None = None,
              max_distance: float | None = None, min_score: float | None = None, hnsw_ef: int | None = None,
              names: Sequence[str] | None = None, skip_bad: bool = False, max_pixels: int = MAX_IMAGE_PIXELS,
              max_file_bytes: int = MAX_FILE_BYTES, max_faces: int = MAX_FACES, max_vertices: int = MAX_VERTICES,
              file_timeout: float = 60.0, exclude_self: bool = True, regions: str | None = None,
              region_fusion: str | None = None) -> QueryAnswer:
        """The ``top`` nearest shapes of one photo or of several, or of a shape (:mod:`ftspl.shape_query`).

        A mesh path or a view folder is a shape: rendered and encoded as
        ``index add`` does (its caps: ``max_file_bytes``, ``max_faces``,
        ``max_vertices``, ``file_timeout``), its own stored copies left out
        unless ``exclude_self=False``; mixing photos and shapes needs ``fuse``.

        ``photos``: a path, a PIL image, a uint8 RGB array, or a list of them.
        ``box``: ``(x0, y0, x1, y1)`` in pixels, or as fractions (floats 0 to 1),
        applied to every photo before it is embedded. ``fuse=True``: the photos
        show one object; the answer is one list by ``fusion`` (mean, max or
        rank; default mean). ``fusion`` without ``fuse`` adds that list beside
        the per-photo ones. ``rerank`` (none, view, blend) re-orders a photo's
        top hits by their best-matching view. Hits beyond ``max_distance`` (or
        below ``min_score``, or the calibrated threshold) have ``match=False``.
        A photo that cannot be decoded raises, or with ``skip_bad=True`` is
        listed in ``failed`` while the others are answered. ``hnsw_ef`` widens
        (or narrows) the graph search of this library from this query on, for
        every thread (``index add --hnsw-ef`` stores the default). ``regions``
        (none, crops, rmac; None: the default) also searches windows of each
        photo and fuses them per shape by ``region_fusion`` (max, mean, top3);
        each hit's ``region`` is the window it matched
        (:mod:`ftspl.engine.scoring.regions`).
        """
        from ftspl.engine.scoring.fusion import DEFAULT_FUSION, FUSIONS
        from ftspl.engine.scoring.views import MatchConfig

        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise UsageError(f"--top must be at least 1, got {top!r}")
        match = MatchConfig(**{k: v for k, v in (("rerank", rerank), ("blend_weight", rerank_weight))
                               if v is not None})
        if fuse and match.rerank != "none":
            raise UsageError(f"--rerank {match.rerank} works on single-photo answers; "
                             "a --fuse list keeps its fused order")
        if fuse and fusion is None:
            fusion = DEFAULT_FUSION
        if fusion is not None and fusion not in FUSIONS:
            raise UsageError(f"--fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        items = list(photos) if isinstance(photos, (list, tuple)) else [photos]
        if not items:
            raise UsageError("query needs at least one photo")
        if names is not None and len(names) != len(items):
            raise UsageError(f"{len(names)} names for {len(items)} photos; give one name per photo or none")
        from ftspl import shape_query

        kinds = shape_query.shape_kinds(items)
        if any(kinds) and regions not in (None, "none"):
            raise UsageError(f"--regions {regions} searches windows of photos; a shape query has none: "
                             "leave --regions out")
        if any(kinds):
            from ftspl.engine.loading.limits import MeshLimits

            limits = MeshLimits(max_file_bytes=max_file_bytes, max_faces=max_faces, max_vertices=max_vertices)
            return shape_query.answer(
                self, items, kinds, top, names=names, box=box, fuse=fuse, fusion=fusion, rerank=match.rerank,
                max_distance=max_distance, min_score=min_score, hnsw_ef=hnsw_ef, skip_bad=skip_bad,
                max_pixels=max_pixels, max_file_bytes=max_file_bytes, limits=limits, file_timeout=file_timeout,
                exclude_self=exclude_self)

        t0 = time.perf_counter()
        engine = self.engine  # the model: its encoder sessions start building in the background
        from ftspl.engine.scoring.regions import resolve

        rcfg = resolve(regions, region_fusion, fuse=fuse, rerank=match.rerank,
                       has_output=engine.encoders.has_region_output, model_id=engine.manifest.model_id)
        t_model = time.perf_counter()
        images, kept, boxes, decode_ms, failed = decode_photos(items, names, box, skip_bad, max_pixels,
                                                               max_file_bytes)
        t_decoded = time.perf_counter()
        fresh = self._reader is None
        reader = self.reader()
        if hnsw_ef is not None:
            reader.ann.ef_search = hnsw_ef
        engine.encoders.wait_warm()
        if self.follow and not fresh:
            reader.refresh()
        t_open = time.perf_counter()
        cut, cut_from = open_set_cut(engine, max_distance, min_score)
        results, fused, gen = search_photos(engine.encoders, reader, images, kept, boxes, decode_ms, top, match,
                                            fuse, fusion, cut, rcfg)
        t_done = time.perf_counter()
        from ftspl.engine.scoring.views import views_note

        note = views_note(engine.manifest.model_id, engine.encoders.has_view_output,
                          results + ([] if fused is None or fuse else [fused]))
        return QueryAnswer(
            model_id=engine.manifest.model_id, results=results, rerank=match.rerank, regions=rcfg.mode,
            fusion=fusion if fused else None,
            fused=fused, generation=gen, max_distance=cut, max_distance_from=cut_from, views_note=note,
            failed=failed, open_s=(t_model - t0) + (t_open - t_decoded), decode_s=t_decoded - t_model,
            search_s=t_done - t_open, images=tuple(images),
            origins=tuple((0, 0) if b is None else (b.x0, b.y0) for b in boxes),
        )

    def contact_sheet(self, answer: QueryAnswer, path: str | Path) -> Path:
        """Draw ``answer`` as a PNG contact sheet: each photo beside its hits' previews (a fused list beside its first photo)."""
        from ftspl.engine.rendering.sheet import rows_for, save_sheet

        fused = answer.fused is not None and answer.results == [answer.fused]
        captions = [r.photo if fused else Path(r.photo).name for r in answer.results]
        images = list(answer.images[: len(answer.results)])
        rows = rows_for(self.reader().store, images, captions, [None] * len(images), answer.results,
                        list(answer.origins[: len(answer.results)]) or None)
        return save_sheet(rows, path)

    def stats(self) -> IndexStats:
        """Count, model, size on disk and labels of the index (raises when there is none yet)."""
        from ftspl.engine.index.store import ShapeStore

        engine = self.engine
        if not engine.exists():
            raise FtsplError(f"{engine.dir}: no index yet; run 'ftspl index add FOLDER' first")
        with ShapeStore(engine.store_path, readonly=True) as store:
            info = store.get_info()
            return IndexStats(
                count=store.count(), model_id=info.get("model_id"), active_model_id=engine.manifest.model_id,
                embed_dim=info.get("embed_dim"), render_spec_hash=info.get("render_spec_hash"),
                bytes=sum(p.stat().st_size for p in engine.dir.glob("*") if p.is_file()),
                index_dir=str(engine.dir), labels=store.labels(),
            )

    def verify(self) -> VerifyReport:
        """Check that the database and the ANN index agree (``report.ok``; ``report.problems`` otherwise)."""
        from ftspl.engine.index.verify import verify_index

        problems, facts = verify_index(self.home)
        return VerifyReport(list(problems), dict(facts))


def open(home: str | Path | None = None, device: str = "auto", threads: int = 0) -> Library:  # noqa: A001
    """The library of ``home`` (None: ``$FTSPL_HOME`` or ``./.ftspl``); the model and index open on first use."""
    return Library(home, device=device, threads=threads)


__all__ = ["Library", "Progress", "as_home", "index_config", "open"]
