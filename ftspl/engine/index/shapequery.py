"""A shape as the query: rendered and encoded exactly as ``index add`` renders and encodes it.

A mesh file (or a folder of pre-rendered views) goes through the same render
worker as ``index add`` (:class:`~ftspl.engine.rendering.worker.RenderWorker`:
the mesh caps of :class:`~ftspl.engine.loading.limits.MeshLimits` and the
per-file time limit, in a child process, so a file that hangs or crashes the
loader costs that query, not the caller) and the same encode step
(:func:`~ftspl.engine.index.pipeline.encode.encode_views`), under the index's
render spec. The embedding is therefore the one ``index add`` would store for
the file, and a shape that is in the index finds itself at distance 0.

:class:`ShapeEmbedder` keeps its render child between calls (``ftspl serve``
answers one shape query after another without starting Python and Mesa each
time); calls are serialised on its lock, since the child renders one file at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftspl.engine.constants import RenderSpec

#: the kinds of shape a query may be: a mesh file, or a folder of pre-rendered views
SHAPE_KINDS = ("mesh", "views")


def shape_kind(item: Any) -> str | None:
    """``'mesh'`` for a path with a mesh file's suffix, ``'views'`` for a view folder, None otherwise (a photo).

    A folder that is no view folder is None too: the photo loader then says why it cannot be used.
    """
    if not isinstance(item, (str, Path)):
        return None
    from ftspl.engine.loading.meshes import LOADERS
    from ftspl.engine.loading.viewfolders import is_view_folder

    path = Path(item).expanduser()
    if path.suffix.lower() in LOADERS and not path.is_dir():
        return "mesh"
    return "views" if is_view_folder(path) else None


@dataclass(frozen=True)
class QueryShape:
    """One query shape, embedded (``embedding``, its content hash and preview) or refused (``error``)."""

    path: Path
    kind: str
    embedding: np.ndarray | None = None  #: (D,) float32, as ``index add`` would store it
    digest: str | None = None  #: sha256 of the file or view folder (as the store keys content)
    preview: bytes | None = None  #: PNG, the 2x2 grid of views ``index add`` stores
    error: str | None = None  #: why the file cannot be used (one line)


class ShapeEmbedder:
    """Renders (in a child process) and encodes query shapes under one render spec, caps and time limit."""

    def __init__(self, encoders, spec: RenderSpec, limits=None, timeout_s: float = 60.0) -> None:
        from ftspl.engine.loading.limits import MeshLimits

        self.encoders, self.spec = encoders, spec
        self.limits = limits if limits is not None else MeshLimits()
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._worker: Any = None

    def serves(self, spec: RenderSpec, limits, timeout_s: float) -> bool:
        """Whether this embedder renders with ``spec``, ``limits`` and ``timeout_s`` (else make another)."""
        return (self.spec, self.limits, self.timeout_s) == (spec, limits, float(timeout_s))

    @property
    def worker_pid(self) -> int | None:
        """The render child's process id while one runs (None: not started, or restarted lazily)."""
        proc = getattr(self._worker, "_proc", None)
        return None if proc is None else proc.pid

    def embed(self, items: list[tuple[Path, str]]) -> list[QueryShape]:
        """Each ``(path, kind)`` rendered in the child and encoded; one :class:`QueryShape` each, in order."""
        from ftspl.engine.index.pipeline.encode import encode_views
        from ftspl.engine.index.pipeline.plan import content_hash
        from ftspl.engine.loading.scan import ShapeSource
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER
        from ftspl.engine.rendering.worker import RenderJob, RenderWorker

        if not items:
            return []
        jobs = [RenderJob(Path(p).expanduser().resolve(), kind) for p, kind in items]
        with self._lock:
            if self._worker is None:
                self._worker = RenderWorker(self.spec, self.limits, self.timeout_s, depth=2)
                self._worker.start()
            self.encoders.warm(MULTIVIEW_ENCODER)  # builds while the child renders
            rendered = list(self._worker.map(jobs))
        good = [r for r in rendered if r.error is None]
        enc = encode_views(self.encoders, [r.views for r in good]) if good else None
        out: list[QueryShape] = []
        j = 0
        for r in rendered:
            if r.error is not None:
                out.append(QueryShape(r.job.path, r.job.kind, error=r.error))
                continue
            try:
                digest = content_hash(ShapeSource(r.job.path, r.job.kind, None))
            except OSError as exc:  # removed or made unreadable since it rendered
                out.append(QueryShape(r.job.path, r.job.kind, error=f"cannot read ({exc.strerror or exc})"))
                j += 1
                continue
            out.append(QueryShape(r.job.path, r.job.kind, enc.embeddings[j], digest, enc.previews[j]))
            j += 1
        return out

    def close(self) -> None:
        """Stop the render child (waits for a render in progress)."""
        with self._lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()


__all__ = ["SHAPE_KINDS", "QueryShape", "ShapeEmbedder", "shape_kind"]
