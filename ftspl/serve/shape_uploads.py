"""An uploaded mesh as the query (``POST /api/query`` with a ``shape`` part): ``index add``'s caps, in a child.

The bytes are checked against the byte cap and their name's suffix against
the mesh formats, then written to a private temporary folder and handed to
:meth:`ftspl.api.Library.query` like a mesh path: the render worker's child
process loads and renders it under the face and vertex caps and the per-file
time limit, so a file that hangs, crashes or exhausts the loader costs that
request (answered 400, or 413 over a cap) and the next shape query gets a
fresh child; the server process never parses the mesh. A glTF that needs
other files (buffers, textures) cannot come in one part: send a GLB. The
client's file name is only a label and a suffix; it never becomes a path.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ftspl.engine.errors import MeshLoadError, UsageError
from ftspl.results import QueryAnswer
from ftspl.serve.server import ApiError, Server

#: uploads are written to memory-backed storage when the system has it
_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
#: a refusal that names one of these flags is a cap (413), any other an unusable file (400)
_CAP_FLAGS = ("--max-faces", "--max-vertices", "--max-file-bytes")


def _suffix(name: str) -> str:
    from ftspl.engine.loading.meshes import LOADERS, mesh_extensions

    suffix = Path(name).suffix.lower()
    if suffix not in LOADERS:
        raise ApiError(400, f"{name}: not a mesh file; a shape upload's name ends in one of "
                            f"{' '.join(mesh_extensions())}")
    return suffix


def query_with_shapes(srv: Server, images: list, names: list[str], shapes: list[tuple[str, bytes]], top: int,
                      fusion: str, fuse: bool, box: tuple | None = None) -> QueryAnswer:
    """(Worker thread) the answer for decoded photos and uploaded meshes; ApiError for a refused upload."""
    cfg = srv.cfg
    if images and not fuse:
        raise ApiError(422, f"{names[0]} is a photo and {shapes[0][0]} a shape: send fuse=true for one list "
                            "for one object, or query them separately")
    with tempfile.TemporaryDirectory(prefix="ftspl-shape-", dir=_TMP) as tmp:
        paths = []
        for i, (name, data) in enumerate(shapes):
            suffix = _suffix(name)
            if not data:
                raise ApiError(400, f"{name}: file is empty")
            if len(data) > cfg.max_file_bytes:
                raise ApiError(413, f"{name}: file is {len(data)} bytes, over the limit of {cfg.max_file_bytes}")
            path = Path(tmp) / f"shape-{i + 1}{suffix}"
            path.write_bytes(data)
            paths.append(path)
        try:
            return srv.live.query_shapes([*images, *paths], [*names, *(n for n, _ in shapes)], top, fusion, fuse,
                                         box=box, max_file_bytes=cfg.max_file_bytes, max_faces=cfg.max_faces,
                                         max_vertices=cfg.max_vertices, file_timeout=cfg.file_timeout)
        except MeshLoadError as exc:
            raise ApiError(413 if any(f in exc.reason for f in _CAP_FLAGS) else 400, str(exc)) from None
        except UsageError as exc:
            raise ApiError(422, str(exc)) from None


__all__ = ["query_with_shapes"]
