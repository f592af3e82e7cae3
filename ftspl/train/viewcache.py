"""Render each target shape's 12 views once and keep them on disk.

Keyed by the file's content hash and the render spec's digest, so a changed
mesh or another render spec never reuses stale views, and several runs (the
ablation presets, seeds) share one rendering pass. Stored as compressed
``.npz`` of uint8 views (grey shapes on white compress ~10x).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import InputFileError
from ftspl.engine.files import atomic_write_bytes
from ftspl.engine.index.library import content_hash
from ftspl.engine.loading.scan import ShapeSource

log = logging.getLogger(__name__)


@dataclass
class CachedViews:
    """Views of the shapes that could be used, and the ones that failed."""

    keys: list[str]  #: cache key per usable shape
    index: list[int]  #: position of each usable shape in the input list
    failed: list[tuple[str, str]]  #: (path, reason)
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
) -> CachedViews:
    """Render (or find in the cache) every shape; bad files are skipped and reported."""
    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.loading.viewfolders import load_view_folder
    from ftspl.engine.rendering.renderer import Renderer

    folder.mkdir(parents=True, exist_ok=True)
    spec_digest = spec.digest()
    keys, index, failed = [], [], []
    renderer = None
    try:
        for i, (p, kind) in enumerate(zip(paths, kinds)):
            if progress:
                progress("render", i, len(paths))
            src = ShapeSource(Path(p), kind, None)
            try:
                digest = content_hash(src)
            except OSError as exc:
                failed.append((str(p), f"cannot read ({exc.strerror or exc})"))
                continue
            key = hashlib.sha256(f"{digest}:{spec_digest}".encode()).hexdigest()[:32]
            out = folder / f"{key}.npz"
            if not out.exists():
                try:
                    if kind == "views":
                        views = load_view_folder(src.path, spec)
                    else:
                        mesh = normalize(load_mesh(src.path), spec.up, radius=spec.normalize_radius)
                        if renderer is None:
                            renderer = Renderer(spec)
                        views = renderer.render(mesh)
                except InputFileError as exc:
                    failed.append((str(p), exc.reason))
                    continue
                buf = io.BytesIO()
                np.savez_compressed(buf, views=views)
                atomic_write_bytes(out, buf.getvalue())
            keys.append(key)
            index.append(i)
    finally:
        if renderer is not None:
            renderer.close()
    if progress:
        progress("render", len(paths), len(paths))
    return CachedViews(keys, index, failed, folder)
