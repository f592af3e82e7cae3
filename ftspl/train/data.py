"""Training inputs: labelled source photos and unlabelled target shapes.

Source photos come as class folders (``photos/chair/*.jpg``) or an
MI3DOR-style list file (``path label`` per line; labels as integers or names).
Target shapes come as a folder of meshes / 12-view folders (``ftspl.engine.loading.scan``,
the same discovery ``index add`` uses) or a list file of shape paths. Target
labels, when the folder structure gives them, are kept only for reporting
(pseudo-label accuracy, retrieval metrics) and never reach the loss.

Decoding, rendering and preprocessing are the engine's: train and serve share
one code path for views and photos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ftspl.engine.errors import UsageError
from ftspl.engine.loading.photos import PHOTO_EXTENSIONS

log = logging.getLogger(__name__)


@dataclass
class SourceSet:
    paths: list[Path]
    labels: list[int]  #: indices into class_names
    class_names: list[str]


@dataclass
class TargetSet:
    paths: list[Path]
    kinds: list[str]  #: "mesh" or "views"
    labels: list[str | None] = field(default_factory=list)  #: reporting only

    @property
    def has_labels(self) -> bool:
        return bool(self.labels) and all(lab is not None for lab in self.labels)


def _read_list(path: Path) -> list[tuple[Path, str | None]]:
    """``path [label]`` lines; relative paths are relative to the list file; '#' comments."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1) if " " in line or "\t" in line else [line]
        p = Path(parts[0])
        if not p.is_absolute():
            p = path.parent / p
        out.append((p, parts[1] if len(parts) > 1 else None))
    if not out:
        raise UsageError(f"{path}: the list file names no files")
    return out


def load_source(spec: str | Path, class_names: list[str] | None = None, every_class: bool = True) -> SourceSet:
    """Labelled photos from class folders or a list file.

    Integer labels in a list file index the sorted class names when names are
    not given; names become classes in sorted order. ``every_class=False``
    (held-out photos scored against given ``class_names``) allows classes
    without photos.
    """
    root = Path(spec)
    if not root.exists():
        raise UsageError(f"{root}: no such folder or list file of labelled photos")
    pairs: list[tuple[Path, str]] = []
    if root.is_file():
        for p, lab in _read_list(root):
            if lab is None:
                raise UsageError(f"{root}: line for {p} has no label ('path label' expected)")
            pairs.append((p, lab))
    else:
        for d in sorted(x for x in root.iterdir() if x.is_dir() and not x.name.startswith(".")):
            files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_EXTENSIONS)
            if not files:
                raise UsageError(f"{d}: class {d.name!r} has no photos (JPEG, PNG, WebP, BMP)")
            pairs += [(p, d.name) for p in files]
    if not pairs:
        raise UsageError(f"{root}: no labelled photos (expected {root}/<class>/*.jpg or a list file)")
    names = class_names or sorted({lab for _, lab in pairs}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    index = {n: i for i, n in enumerate(names)}
    labels = []
    for p, lab in pairs:
        if lab in index:
            labels.append(index[lab])
        elif lab.isdigit() and int(lab) < len(names):
            labels.append(int(lab))
        else:
            raise UsageError(f"{p}: label {lab!r} is not one of the classes ({', '.join(names)})")
    if len(names) < 2:
        raise UsageError(f"{root}: FTSPL needs at least 2 classes, found {len(names)}")
    missing = [names[k] for k in range(len(names)) if k not in set(labels)]
    if missing and every_class:
        raise UsageError(f"{root}: class(es) with no photos: {', '.join(missing)}")
    return SourceSet([p for p, _ in pairs], labels, list(names))


def load_target(spec: str | Path, label_from: str = "top") -> TargetSet:
    """Unlabelled shapes from a folder (meshes or view folders) or a list file."""
    from ftspl.engine.loading.scan import scan
    from ftspl.engine.loading.viewfolders import is_view_folder

    root = Path(spec)
    if not root.exists():
        raise UsageError(f"{root}: no such folder or list file of shapes")
    if root.is_file() and root.suffix.lower() in (".txt", ".lst", ".list"):
        items = _read_list(root)
        kinds = ["views" if p.is_dir() and is_view_folder(p) else "mesh" for p, _ in items]
        return TargetSet([p for p, _ in items], kinds, [lab for _, lab in items])
    sources = scan(root, label_from)
    if not sources:
        raise UsageError(f"{root}: no meshes or view folders found")
    return TargetSet([s.path for s in sources], [s.kind for s in sources], [s.label for s in sources])
