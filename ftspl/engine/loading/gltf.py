"""glTF/GLB checks made before trimesh parses a file: sizes against the caps, node cycles, compression.

Why before trimesh: an accessor declaring two billion vertices would be allocated,
a node cycle makes trimesh's scene graph give up only long after parsing, and
Draco/meshopt streams come out as garbage triangles.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

from ftspl.engine.errors import MeshLoadError

if TYPE_CHECKING:
    from ftspl.engine.loading.limits import MeshLimits

#: glTF extensions that replace the geometry with a compressed stream trimesh cannot decode.
_COMPRESSION_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco",
    "EXT_meshopt_compression": "meshoptimizer",
}


def glb_json(data: bytes, path: Path) -> bytes:
    """The JSON chunk of a binary glTF (GLB) file, from its 20-byte header."""
    if len(data) < 20 or data[:4] != b"glTF":
        raise MeshLoadError(path, "corrupt GLB file: no 'glTF' header")
    (version,) = struct.unpack_from("<I", data, 4)
    if version != 2:
        raise MeshLoadError(path, f"GLB version {version} is not supported; only glTF 2.0 (re-export the file)")
    chunk_len, chunk_type = struct.unpack_from("<I4s", data, 12)
    if chunk_type != b"JSON" or 20 + chunk_len > len(data):
        raise MeshLoadError(path, "corrupt GLB file: the first chunk is not a complete JSON chunk")
    return data[20 : 20 + chunk_len]


def check_gltf(doc: object, path: Path, limits: MeshLimits) -> None:
    """Refuse glTF documents that would exhaust memory, loop, or decode to garbage.

    Why before trimesh: an accessor's ``count`` is trusted by the parser (an
    accessor without a buffer view is allocated as zeros of that size), node
    cycles make the scene graph search give up only after its iteration
    limit, and compressed primitives silently load as degenerate triangles.
    """
    if not isinstance(doc, dict):
        raise MeshLoadError(path, "corrupt glTF: the JSON document is not an object")
    asset = doc.get("asset")
    version = str(asset.get("version", "")) if isinstance(asset, dict) else ""
    if version.split(".")[0] != "2":
        raise MeshLoadError(
            path, f"glTF version {version or '(missing)'} is not supported; only glTF 2.0 (re-export the file)"
        )

    def items(key: str) -> list:
        value = doc.get(key, [])
        if not isinstance(value, list):
            raise MeshLoadError(path, f"corrupt glTF: '{key}' is not an array")
        return value

    required = items("extensionsRequired")
    for ext, name in _COMPRESSION_EXTENSIONS.items():
        if ext in required:
            raise MeshLoadError(
                path, f"geometry is {name}-compressed ({ext}), which ftspl cannot decode; export it uncompressed"
            )
    max_elements = max(limits.max_vertices, 3 * limits.max_faces)
    for i, acc in enumerate(items("accessors")):
        if not isinstance(acc, dict):
            raise MeshLoadError(path, f"corrupt glTF: accessor {i} is not an object")
        counts = [acc.get("count", 0)]
        if isinstance(acc.get("sparse"), dict):
            counts.append(acc["sparse"].get("count", 0))
        for count in counts:
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise MeshLoadError(path, f"corrupt glTF: accessor {i} has an invalid count {count!r}")
            if count > max_elements:
                raise MeshLoadError(
                    path,
                    f"glTF accessor {i} declares {count} elements, over the limit of {max_elements} "
                    "(--max-vertices, 3 x --max-faces)",
                )
    for key in ("buffers", "bufferViews"):
        for i, item in enumerate(items(key)):
            size = item.get("byteLength", 0) if isinstance(item, dict) else None
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise MeshLoadError(path, f"corrupt glTF: {key}[{i}] has an invalid byteLength {size!r}")
            if size > limits.max_file_bytes:
                raise MeshLoadError(
                    path, f"glTF {key}[{i}] declares {size} bytes, over the limit of {limits.max_file_bytes}; "
                    "raise --max-file-bytes"
                )
    check_node_tree(items("nodes"), path)


def check_node_tree(nodes: list, path: Path) -> None:
    """Child indices must exist and the node hierarchy must have no cycle (iterative DFS)."""
    children: list[list[int]] = []
    for i, node in enumerate(nodes):
        kids = node.get("children", []) if isinstance(node, dict) else None
        if not isinstance(kids, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(nodes) for k in kids
        ):
            raise MeshLoadError(path, f"corrupt glTF: node {i} has invalid children")
        children.append(kids)
    state = [0] * len(nodes)  # 0 new, 1 on the current path, 2 done
    for root in range(len(nodes)):
        if state[root]:
            continue
        stack = [(root, iter(children[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            child = next(it, None)
            if child is None:
                state[node] = 2
                stack.pop()
            elif state[child] == 1:
                raise MeshLoadError(
                    path, f"corrupt glTF: the node hierarchy has a cycle (node {child} is its own ancestor)"
                )
            elif state[child] == 0:
                state[child] = 1
                stack.append((child, iter(children[child])))
