"""The served index: the model and index loaded once, followed while writers run.

:class:`LiveIndex` owns one :class:`ftspl.api.Library` (queries go through
the Python API, so the HTTP answers are the API's records), its
:class:`~ftspl.engine.index.reader.Reader` (thread safe: see its module) and a
daemon thread that calls ``refresh`` every
``poll_s`` seconds, so shapes that ``ftspl index add`` commits in another
process are served within about one poll, and removed ones disappear, with no
restart. Each query runs onnxruntime on one thread; the server bounds how
many run at once.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from ftspl.engine.home import Home
from ftspl.engine.index.reader import Reader, ReaderState
from ftspl.engine.scoring.fusion import DEFAULT_FUSION
from ftspl.results import QueryAnswer

log = logging.getLogger(__name__)


@dataclass
class ModelInfo:
    model_id: str
    backbone: str
    embed_dim: int
    render_spec: dict
    render_spec_hash: str | None


class LiveIndex:
    """The model, the index and the thread that follows the index."""

    def __init__(self, home: Home, poll_s: float = 0.5, device: str = "auto") -> None:
        from ftspl.api import Library

        self.home = home
        self.poll_s = poll_s
        # one intra-op thread: queries run side by side, one core each, instead of
        # one query fanning out over every core and waiting at each operator's barrier;
        # follow=False: the thread below follows the index, not each query
        self.library = Library(home, device=device, threads=1, follow=False)
        self.lib = self.library.engine
        self.reader: Reader = self.library.reader()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self._model: tuple[dict, ModelInfo] | None = None
        try:
            self.reader.refresh()  # labels and warnings for /api/info
            self.warm()
        except BaseException:
            self.library.close()
            raise

    # -- lifecycle ---------------------------------------------------------------
    def warm(self) -> None:
        """Run one query end to end so the first user's is not the one that pays for start-up."""
        from PIL import Image

        self.library.query(Image.new("RGB", (256, 256), (128, 128, 128)), 1, names=["warm-up"])

    def start(self) -> None:
        """Start following the store in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._follow, name="ftspl-follow", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop following (idempotent); queries still answer from the last state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.library.close()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                done = self.reader.refresh()
                self.last_error = None
            except Exception as exc:  # keep serving what we have; say why
                log.exception("following the index failed")
                self.last_error = f"following the index failed ({type(exc).__name__}: {exc})"
                continue
            if done is not None:
                log.info("index generation %d: +%d -%d%s", done.generation, done.added, done.removed,
                         " (rebuilt)" if done.rebuilt else "")

    # -- what the API serves -------------------------------------------------------
    @property
    def model(self) -> ModelInfo:
        """The model and the index's render spec (recomputed only when a refresh replaced the store info)."""
        import json

        info = self.reader.info
        cached = self._model
        if cached is not None and cached[0] is info:
            return cached[1]
        man = self.lib.manifest
        stored = info.get("render_spec")
        spec = json.loads(stored) if stored else dict(man.render_spec)
        model = ModelInfo(man.model_id, man.backbone, man.embed_dim, spec, info.get("render_spec_hash") or man.render_spec_hash)
        self._model = (info, model)
        return model

    def state(self) -> ReaderState:
        """What is served now (no lock: safe on the event loop), with the follower's last error if any."""
        st = self.reader.state()
        return replace(st, warnings=(*st.warnings, self.last_error)) if self.last_error else st

    def query(self, images: list, names: list[str], top: int, fusion: str = DEFAULT_FUSION, match=None,
              box=None, max_pixels: int | None = None, regions: tuple = (None, None)) -> QueryAnswer:
        """:meth:`ftspl.api.Library.query` on decoded photos (blocking: call it from a worker thread).

        Each photo's hits come with their matched views, re-ranked as ``match``
        says (:mod:`ftspl.engine.scoring.views`); several photos also get one
        fused list (:mod:`ftspl.engine.scoring.fusion`, as ``ftspl query --fuse``).
        ``regions``: ``(mode, fusion)`` of the regional search (None: the defaults).
        """
        from ftspl.engine.constants import MAX_IMAGE_PIXELS
        from ftspl.engine.scoring.views import MatchConfig

        match = match or MatchConfig()
        return self.library.query(list(images), top, names=names, fusion=fusion if len(images) > 1 else None,
                                  rerank=match.rerank, rerank_weight=match.blend_weight, box=box,
                                  max_pixels=max_pixels or MAX_IMAGE_PIXELS, regions=regions[0],
                                  region_fusion=regions[1])

    def query_shapes(self, items: list, names: list[str], top: int, fusion: str = DEFAULT_FUSION, fuse: bool = False,
                     **caps: Any) -> QueryAnswer:
        """:meth:`ftspl.api.Library.query` with mesh paths among ``items`` (blocking: a worker thread).

        ``caps``: ``max_file_bytes``, ``max_faces``, ``max_vertices`` and
        ``file_timeout``; the meshes render in the library's render child.
        """
        return self.library.query(list(items), top, names=names, fuse=fuse,
                                  fusion=fusion if fuse or len(items) > 1 else None, **caps)

    def shape(self, shape_id: int, preview: bool = False) -> Any:
        rows = self.reader.shapes([shape_id], previews=preview)
        return rows[0] if rows else None

    def view_png(self, shape_id: int, view: int) -> tuple[bytes | None, int]:
        """(PNG of stored view ``view`` of a shape or None when out of range, its number of views: 0 without a strip)."""
        from ftspl.engine.index.store.viewcodes import view_png

        got = self.reader.view_strip(shape_id)
        if got is None:
            return None, 0
        return (view_png(got[0], view, got[1]) if 0 <= view < got[1] else None), got[1]


__all__ = ["LiveIndex", "ModelInfo"]
