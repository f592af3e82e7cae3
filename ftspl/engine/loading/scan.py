"""Find the shapes under a folder: mesh files and pre-rendered view folders.

A shape is one mesh file (any extension in :data:`ftspl.engine.loading.meshes.LOADERS`)
or one folder that holds only view images (the MVCNN/MI3DOR layout), which is
indexed without rendering. Labels come from the folder structure, ModelNet
style, as the user chooses with ``--label-from``.

Symbolic links are followed, so a gallery of links to class folders indexes
like the folders themselves; labels come from the names as seen through the
links. A folder is entered once (a link back to an ancestor is a loop, not an
endless walk) and a file reached by two routes is one shape, as the store keys
shapes by their resolved path. What the walk passes over (dangling links, other
file types, repeated folders) is counted, so an empty result can say why.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from ftspl.engine.errors import InputFileError, UnknownKeyError, UsageError

log = logging.getLogger(__name__)

LABEL_FROM = ("top", "parent", "none")


@dataclass(frozen=True)
class ShapeSource:
    path: Path  #: absolute, resolved (symbolic links followed): the store's key
    kind: str  #: "mesh" or "views"
    label: str | None


@dataclass
class ScanResult:
    """The shapes found under a folder and what the walk passed over, by reason."""

    sources: list[ShapeSource] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  #: reason -> count
    other_suffixes: Counter = field(default_factory=Counter)  #: suffix of files that are no shape

    def skipped_summary(self) -> str:
        """``'5 entries: 3 dangling links, 2 other files (.txt, .jpg)'``, or '' when nothing was skipped."""
        total = sum(self.skipped.values())
        if not total:
            return ""
        parts = []
        for reason, n in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])):
            part = f"{n} {_ONE.get(reason, reason) if n == 1 else reason}"
            if reason == OTHER_FILES and self.other_suffixes:
                common = sorted(self.other_suffixes.items(), key=lambda kv: (-kv[1], kv[0]))[:4]
                top = [s or "(no extension)" for s, _ in common]
                part += f" ({', '.join(top)}{', ...' if len(self.other_suffixes) > 4 else ''})"
            parts.append(part)
        return f"{total} {'entry' if total == 1 else 'entries'}: {', '.join(parts)}"


# reasons an entry is passed over (the keys of ScanResult.skipped), with their singular
OTHER_FILES = "other files"
HIDDEN_FILES = "hidden files"
DANGLING_LINKS = "dangling links"
LOOPING_LINKS = "links that loop"
UNREADABLE = "unreadable entries"
REPEATED_FOLDERS = "folders reached again (a link loop or a second link)"
REPEATED_FILES = "files reached again through a link (one shape each)"
SPECIAL_FILES = "special files (not regular files)"
_ONE = {
    OTHER_FILES: "other file", HIDDEN_FILES: "hidden file", DANGLING_LINKS: "dangling link",
    LOOPING_LINKS: "link that loops", UNREADABLE: "unreadable entry",
    REPEATED_FOLDERS: "folder reached again (a link loop or a second link)",
    REPEATED_FILES: "file reached again through a link (one shape)",
    SPECIAL_FILES: "special file (not a regular file)",
}


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
    """All shapes under ``root`` (a folder, recursively, or one mesh file), sorted by path.

    Raises :class:`InputFileError` when a folder holds no shape, naming how
    many entries were skipped and why.
    """
    result = scan_tree(root, label_from)
    if not result.sources:
        from ftspl.engine.loading.meshes import mesh_extensions

        why = result.skipped_summary()
        raise InputFileError(
            root,
            f"no meshes ({' '.join(mesh_extensions())}) or view folders found"
            + (f"; skipped {why}" if why else "; the folder is empty"),
        )
    if result.skipped:
        log.info("%s: skipped %s", root, result.skipped_summary())
    return result.sources


def scan_tree(root: str | Path, label_from: str = "top") -> ScanResult:
    """Walk ``root`` following symbolic links; the shapes and the skipped entries (never raises when empty)."""
    from ftspl.engine.loading.meshes import LOADERS
    from ftspl.engine.loading.viewfolders import is_view_folder

    if label_from not in LABEL_FROM:
        raise UnknownKeyError("--label-from", label_from, LABEL_FROM)
    given = Path(root).expanduser()
    if not given.exists():
        raise UsageError(f"{given}: no such file or folder")
    root = given.resolve()
    result = ScanResult()
    if root.is_file():
        # One file: labelled by its folder when asked (there is no root above it).
        label = root.parent.name if label_from == "parent" else None
        result.sources.append(ShapeSource(root, "mesh", label))
        return result

    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[str] = set()
    # (path as seen under root, its resolved path), breadth first with names sorted: of two
    # routes to one file or folder the shallower wins (then the first by name), labels included
    queue: deque[tuple[Path, Path]] = deque([(root, root)])
    while queue:
        seen, real = queue.popleft()
        try:
            st = os.stat(real)
        except OSError:
            result.skipped[UNREADABLE] += 1
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            result.skipped[REPEATED_FOLDERS] += 1
            continue
        seen_dirs.add(key)
        if seen != root and is_view_folder(real):
            result.sources.append(ShapeSource(real, "views", label_for(seen, root, label_from)))
            continue
        try:
            with os.scandir(real) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            result.skipped[UNREADABLE] += 1
            continue
        for entry in entries:
            link = entry.is_symlink()
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                queue.append((seen / entry.name, Path(os.path.realpath(entry.path)) if link else real / entry.name))
                continue
            if not is_file:  # a special file with a mesh suffix goes on: its loader says why it fails
                reason = _why_not_a_file(entry.path, link)
                if reason != SPECIAL_FILES or Path(entry.name).suffix.lower() not in LOADERS:
                    result.skipped[reason] += 1
                    continue
            if entry.name.startswith("."):
                result.skipped[HIDDEN_FILES] += 1
                continue
            suffix = Path(entry.name).suffix.lower()
            if suffix not in LOADERS:
                result.skipped[OTHER_FILES] += 1
                result.other_suffixes[suffix] += 1
                continue
            target = Path(os.path.realpath(entry.path)) if link else real / entry.name
            if str(target) in seen_files:
                result.skipped[REPEATED_FILES] += 1
                continue
            seen_files.add(str(target))
            result.sources.append(ShapeSource(target, "mesh", label_for(seen / entry.name, root, label_from)))
    result.sources.sort(key=lambda s: str(s.path))
    return result


def _why_not_a_file(path: str, link: bool) -> str:
    """The skip reason of an entry that is neither a folder nor a regular file."""
    try:
        os.stat(path)
    except OSError as exc:
        if link and exc.errno == errno.ENOENT:
            return DANGLING_LINKS
        if link and exc.errno == errno.ELOOP:
            return LOOPING_LINKS
        return UNREADABLE
    return SPECIAL_FILES
