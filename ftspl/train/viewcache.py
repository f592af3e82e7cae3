"""Render each target shape's 12 views once and keep them on disk.

Keyed by the file's content hash and the render spec's digest, so a changed
mesh or another render spec never reuses stale views, and several runs (the
ablation presets, seeds) share one rendering pass. Stored as compressed
``.npz`` of uint8 views (grey shapes on white compress ~10x).

Shapes are loaded and rendered by the same child process as ``index add``
(:class:`~ftspl.engine.rendering.worker.RenderWorker`): the same size caps
(:class:`~ftspl.engine.loading.meshes.MeshLimits`), the same per-file time
limit, and a crash or hang in a parser costs that one file, not the training
run. A file that cannot be used is skipped and reported as ``(path, reason)``.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.files import atomic_write_bytes
from ftspl.engine.index.pipeline.plan import content_hash, view_cache_key
from ftspl.engine.loading.meshes import MeshLimits
from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)


@dataclass
class CachedViews:
    """Views of the shapes that could be used, and the ones that failed."""

    keys: list[str]  #: cache key per usable shape
    index: list[int]  #: position of each usable shape in the input list
    failed: list[tuple[str, str]]  #: (path, reason), in input order
    folder: Path

    def load(self, i: int) -> np.ndarray:
        """uint8 (V, S, S, 3) views of the i-th usable shape."""
        with np.load(self.folder / f"{self.keys[i]}.npz") as z:
            return z["views"]


def cache_views(
    paths: list[Path],
    kinds: list[str],
    spec: RenderSpec,
    folder: Path,
    progress: Callable[[str, int, int], None] | None = None,
    limits: MeshLimits | None = None,
    timeout_s: float | None = None,
) -> CachedViews:
    """Render (or find in the cache) every shape; bad files are skipped and reported.

    ``limits`` and ``timeout_s`` default to the render worker's (those of ``index add``).
    """
    from ftspl.engine.rendering.worker import RenderJob, RenderWorker

    folder.mkdir(parents=True, exist_ok=True)
    keys: list[str | None] = [None] * len(paths)
    failed: dict[int, str] = {}
    todo: list[tuple[int, str]] = []  # (input position, cache key) of shapes to render
    for i, (p, kind) in enumerate(zip(paths, kinds)):
        try:
            digest = content_hash(ShapeSource(Path(p), kind, None))
        except OSError as exc:
            failed[i] = f"cannot read ({exc.strerror or exc})"
            continue
        key = view_cache_key(digest, spec)
        if (folder / f"{key}.npz").exists():
            keys[i] = key
        else:
            todo.append((i, key))
    done = len(paths) - len(todo)
    if progress:
        progress("render", done, len(paths))
    if todo:
        opts: dict = {} if timeout_s is None else {"timeout_s": timeout_s}
        jobs = [RenderJob(Path(paths[i]), kinds[i]) for i, _ in todo]
        with RenderWorker(spec, limits if limits is not None else MeshLimits(), **opts) as worker:
            for (i, key), res in zip(todo, worker.map(jobs)):
                if res.error is not None:
                    failed[i] = res.error
                else:
                    buf = io.BytesIO()
                    np.savez_compressed(buf, views=res.views)
                    atomic_write_bytes(folder / f"{key}.npz", buf.getvalue())
                    keys[i] = key
                done += 1
                if progress:
                    progress("render", done, len(paths))
    for i in sorted(failed):  # returned to the caller, which reports them (the CLI prints one line each)
        log.info("skipped %s: %s", paths[i], failed[i])
    index = [i for i, k in enumerate(keys) if k is not None]
    return CachedViews([keys[i] for i in index], index, [(str(paths[i]), failed[i]) for i in sorted(failed)],
                       folder)


def cache_views_split(
    paths: list[Path],
    kinds: list[str],
    spec: RenderSpec,
    folder: Path,
    progress: Callable[[str, int, int], None] | None = None,
    dist=None,
) -> CachedViews:
    """:func:`cache_views` with N training processes: each renders every N-th shape, then all read them all.

    The shares meet in the view cache (a folder every process sees); a file
    that failed on the rank that rendered it is skipped by every rank with that
    rank's reason, so all ranks end up with the same usable shapes. Shapes
    missing from this process's cache (a folder not shared between machines)
    are rendered again here. With one process this is :func:`cache_views`.
    """
    if dist is None or dist.world == 1:
        return cache_views(paths, kinds, spec, folder, progress)
    mine = list(range(dist.rank, len(paths), dist.world))
    part = cache_views([paths[i] for i in mine], [kinds[i] for i in mine], spec, folder, progress)
    failed = {p: reason for share in dist.all_gather_object(part.failed) for p, reason in share}
    usable = [i for i, p in enumerate(paths) if str(p) not in failed]
    every = cache_views([paths[i] for i in usable], [kinds[i] for i in usable], spec, folder)
    keys = dict(zip((usable[j] for j in every.index), every.keys))
    failed.update({p: reason for p, reason in every.failed})
    index = sorted(keys)
    return CachedViews([keys[i] for i in index], index,
                       [(str(paths[i]), failed[str(paths[i])]) for i in range(len(paths)) if i not in keys], folder)
