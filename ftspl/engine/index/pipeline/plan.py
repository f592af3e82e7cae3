"""Planning a write: content hashes, what is already stored, the render spec, and the view cache's key.

Everything here runs before any shape is rendered, on the machine that writes
(the driver on a Ray cluster), and is shared by ``index add``, ``--shards``,
``index reembed`` and ``ftspl train``'s view cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import IndexStateError
from ftspl.engine.files import sha256_file
from ftspl.engine.index.pipeline.records import AddReport, PendingShape, ProgressFn
from ftspl.engine.index.store.schema import normalize_path
from ftspl.engine.loading.scan import ShapeSource


def content_hash(src: ShapeSource) -> str:
    """sha256 of a mesh file, or of a view folder's sorted names and bytes."""
    if src.kind == "views":
        h = hashlib.sha256()
        for p in sorted(src.path.iterdir()):
            if p.is_file():
                h.update(p.name.encode() + b"\0")
                h.update(p.read_bytes())
        return h.hexdigest()
    return sha256_file(src.path)


def view_cache_key(digest: str, spec: RenderSpec) -> str:
    """The render cache's file name stem (``<home>/cache/views/<key>.npz``) for a content hash and a spec.

    ``ftspl train`` (:mod:`ftspl.train.viewcache`) writes the cache and ``index
    reembed`` reads it, both by this key, so shapes rendered once are not rendered again.
    """
    return hashlib.sha256(f"{digest}:{spec.digest()}".encode()).hexdigest()[:32]


def stored_spec(info: dict) -> RenderSpec | None:
    """The render spec an index records in its ``info`` (None for an index that holds none yet)."""
    stored = info.get("render_spec")
    return RenderSpec.from_dict(json.loads(stored)) if stored else None


def render_spec(manifest, info: dict, up: str | None, where: str | Path = "") -> RenderSpec:
    """The spec to render with: the model's, turned to ``up``, else to the index's up axis, else the model's own.

    ``info`` is the index's (empty when writing shards); an ``up`` other than the
    index's is refused, since shapes rendered both ways do not compare.
    """
    spec = manifest.get_render_spec()
    stored = stored_spec(info)
    if stored is not None and up is not None and up != stored.up:
        raise IndexStateError(
            f"{where}: this index was rendered with --up {stored.up}; shapes rendered with "
            f"--up {up} cannot be mixed into it (use another --home, or --rebuild)"
        )
    up = up or (stored.up if stored is not None else None)
    return spec.with_up(up) if up and up != spec.up else spec


def known_under(store, root: str | Path, sources: list[ShapeSource]) -> dict[str, tuple[int, str]]:
    """Stored ``path -> (id, content hash)`` for the shapes a scan of ``root`` can reach.

    One query for the folder's own prefix; a scan that followed symbolic links out
    of the folder reads the whole table instead (still one query), since the store
    keys shapes by their resolved paths.
    """
    base = Path(root).expanduser().resolve()
    if all(Path(normalize_path(s.path)).is_relative_to(base) for s in sources):
        return store.entries(base)
    return store.entries()


def pending_shapes(sources: list[ShapeSource], known: dict[str, tuple[int | None, str]], report: AddReport,
                   progress: ProgressFn | None = None) -> list[PendingShape]:
    """The sources whose content is not in ``known`` (normalised path -> (id, content hash)).

    Unchanged shapes count in ``report.unchanged``; unreadable ones become failures.
    """
    todo: list[PendingShape] = []
    for i, src in enumerate(sources):
        if progress:
            progress("hash", i, len(sources))
        try:
            digest = content_hash(src)
        except OSError as exc:
            report.failed.append((str(src.path), f"cannot read ({exc.strerror or exc})"))
            continue
        entry = known.get(normalize_path(src.path))
        if entry is not None and entry[1] == digest:
            report.unchanged += 1
            continue
        todo.append(PendingShape(src, digest, None if entry is None else entry[0]))
    return todo


__all__ = ["content_hash", "known_under", "pending_shapes", "render_spec", "stored_spec", "view_cache_key"]
