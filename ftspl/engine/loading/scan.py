"""Find the shapes under a folder: mesh files and pre-rendered view folders.

A shape is one mesh file (any extension in :data:`ftspl.engine.loading.meshes.LOADERS`)
or one folder that holds only view images (the MVCNN/MI3DOR layout), which is
indexed without rendering. Labels come from the folder structure, ModelNet
style, as the user chooses with ``--label-from``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ftspl.engine.errors import UnknownKeyError, UsageError

LABEL_FROM = ("top", "parent", "none")


@dataclass(frozen=True)
class ShapeSource:
    path: Path  #: absolute, resolved
    kind: str  #: "mesh" or "views"
    label: str | None


def label_for(path: Path, root: Path, label_from: str) -> str | None:
    """The label of ``path`` found under ``root``.

    ``top``: the first folder under the root (``root/chair/a/b.obj`` -> chair).
    ``parent``: the folder that holds the shape. ``none``: no label. A shape
    directly in the root has no folder to name it, so it gets no label.
    """
    if label_from not in LABEL_FROM:
        raise UnknownKeyError("--label-from", label_from, LABEL_FROM)
    if label_from == "none":
        return None
    try:
        rel = path.relative_to(root)
    except ValueError:
        return None
    parts = rel.parts[:-1]
    if not parts:
        return None
    return parts[0] if label_from == "top" else parts[-1]


def scan(root: str | Path, label_from: str = "top") -> list[ShapeSource]:
    """All shapes under ``root`` (a folder, recursively, or one mesh file), sorted by path."""
    from ftspl.engine.loading.meshes import LOADERS
    from ftspl.engine.loading.viewfolders import is_view_folder

    if label_from not in LABEL_FROM:
        raise UnknownKeyError("--label-from", label_from, LABEL_FROM)
    root = Path(root).expanduser()
    if not root.exists():
        raise UsageError(f"{root}: no such file or folder")
    root = root.resolve()
    if root.is_file():
        # One file: labelled by its folder when asked (there is no root above it).
        label = root.parent.name if label_from == "parent" else None
        return [ShapeSource(root, "mesh", label)]
    found: list[ShapeSource] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        dirnames.sort()
        if d != root and is_view_folder(d):
            found.append(ShapeSource(d, "views", label_for(d, root, label_from)))
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in LOADERS:
                p = d / name
                found.append(ShapeSource(p, "mesh", label_for(p, root, label_from)))
    found.sort(key=lambda s: str(s.path))
    return found

