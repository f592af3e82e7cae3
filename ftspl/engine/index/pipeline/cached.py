"""``index reembed``'s producer: views from the render cache where it has them, the rest rendered.

``ftspl train`` fills the cache (``<home>/cache/views``, keyed by
:func:`~ftspl.engine.index.pipeline.plan.view_cache_key`), so shapes it rendered
are encoded without rendering them again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ftspl.engine.index.pipeline.local import LocalProducer, render_all, render_worker
from ftspl.engine.index.pipeline.plan import view_cache_key
from ftspl.engine.index.pipeline.records import PendingShape, PreparedShape


class CachedFirstProducer(LocalProducer):
    """Views from the render cache where it has them, else rendered by the render child; then encoded
    (:class:`LocalProducer`'s run and close). ``from_cache`` counts the shapes the cache gave."""

    def __init__(self, encoders, cfg, cache: Path | None, faces: dict[str, int | None]) -> None:
        super().__init__(encoders, cfg)
        self.cache, self.faces = cache, faces
        self.cached: list[tuple[PendingShape, Path]] = []
        self.render: list[PendingShape] = []
        self.from_cache = 0
        self._spec = None

    def start(self, todo: list[PendingShape], spec) -> None:
        from ftspl.engine.model.encoders import MULTIVIEW_ENCODER

        self._spec = spec
        for p in todo:
            hit = self.cache / f"{view_cache_key(p.digest, spec)}.npz" if self.cache else None
            if hit is not None and hit.is_file():
                self.cached.append((p, hit))
            else:
                self.render.append(p)
        if self.render:
            self.worker = render_worker(spec, self.cfg, jobs=len(self.render))
            self.worker.start()
        if todo:
            self.encoders.warm(MULTIVIEW_ENCODER)

    def _shapes(self, todo: list[PendingShape]) -> Iterator[PreparedShape]:
        for p, f in self.cached:
            try:
                with np.load(f, allow_pickle=False) as z:
                    views = z["views"]
            except (OSError, ValueError, KeyError):  # a damaged cache entry: render that shape instead
                self.render.append(p)
                continue
            self.from_cache += 1
            yield PreparedShape(p, views, self.faces.get(str(p.source.path)), None)
        if self.render:
            if self.worker is None:
                self.worker = render_worker(self._spec, self.cfg, jobs=len(self.render))
                self.worker.start()
            yield from render_all(self.render, self.worker)


__all__ = ["CachedFirstProducer"]
