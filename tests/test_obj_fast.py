"""The vectorised OBJ reader must give trimesh's geometry, and decline what it cannot read."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from ftspl.engine.errors import MeshLoadError
from ftspl.engine.loading.meshes import MeshLimits, load_mesh
from ftspl.engine.loading.obj_fast import TooManyFaces, parse_obj

CUBE_V = """v -1 -1 -1
v 1 -1 -1
v 1 1 -1
v -1 1 -1
v -1 -1 1
v 1 -1 1
v 1 1 1
v -1 1 1
"""

CASES = {
    "triangles": "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n",
    "quads_with_uv_normals": CUBE_V + "vt 0 0\nvt 1 0\nvt 1 1\nvn 0 0 1\n"
    "f 1/1/1 2/2/1 3/3/1 4/1/1\nf 5/1/1 6/2/1 7/3/1 8/1/1\nf 1//1 2//1 6//1 5//1\n",
    "polygon_and_negative": CUBE_V + "f 1 2 3 4 8 7\nf 5 6 7 8\nf -1 -2 -3\n",
    "groups_materials_comments": "# header\nmtllib x.mtl\no a\n" + CUBE_V + "g top\nusemtl red\n"
    "f 1 2 3\n# middle comment\ns off\nusemtl blue\nf 3 4 1\nl 1 2\n",
    "vertex_colours_and_w": "v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nv 0 0 1 1 1 1\nf 1 2 3\nf 2 3 4\n",
    "mixed_widths": "v 0 0 0\nv 1 0 0 1.0\nv 0 1 0 0.5 0.5 0.5\nv 0 0 1\nf 1 2 3\nf 1 3 4\n",
    "crlf": "v 0 0 0\r\nv 1 0 0\r\nv 0 1 0\r\nf 1 2 3\r\n",
}


def _triangle_set(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tris = np.round(vertices[faces], 6)  # (m, 3, 3)
    # order-free within a triangle (trimesh and fan triangulation may start at another corner)
    keys = np.sort(tris.view([("x", tris.dtype), ("y", tris.dtype), ("z", tris.dtype)]).reshape(len(faces), 3), axis=1)
    return np.unique(keys.view(tris.dtype).reshape(len(faces), 9), axis=0)


def _trimesh_geometry(path) -> tuple[np.ndarray, np.ndarray]:
    loaded = trimesh.load(str(path), file_type="obj", process=False, skip_materials=True, force="mesh")
    return np.asarray(loaded.vertices), np.asarray(loaded.faces)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_triangles_as_trimesh(tmp_path, name: str) -> None:
    path = tmp_path / f"{name}.obj"
    path.write_text(CASES[name], newline="")
    v, f = parse_obj(path.read_bytes())
    tv, tf = _trimesh_geometry(path)
    assert f.shape[1] == 3 and f.dtype == np.int64
    np.testing.assert_allclose(_triangle_set(v, f), _triangle_set(tv, tf))


def test_negative_indices_count_back_from_vertices_so_far() -> None:
    v, f = parse_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\nv 5 5 5\nf -4 -3 -1\n")
    assert f.tolist() == [[0, 1, 2], [0, 1, 3]]


def test_tabs_separate_like_spaces() -> None:
    # (trimesh skips "v<TAB>" lines; the OBJ format allows any whitespace)
    v, f = parse_obj(b"v\t0 0 0\r\nv 1\t0 0\r\nv 0 1 0\r\nf\t1 2 3\r\n")
    assert v.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]] and f.tolist() == [[0, 1, 2]]


def test_last_line_without_newline_even_an_empty_face() -> None:
    # found by the fuzzer: a last "f " with no index and no newline misaligned the line counts
    v, f = parse_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf ")
    assert f.tolist() == [[0, 1, 2]]
    v, f = parse_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3")
    assert f.tolist() == [[0, 1, 2]]


def test_points_and_lines_are_not_faces() -> None:
    v, f = parse_obj(b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1\nf 1 2\nf 1 2 3\n")
    assert f.tolist() == [[0, 1, 2]]


@pytest.mark.parametrize(
    "text, reason",
    [
        (b"v 0 0 zero\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "not a number"),
        (b"v 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", "fewer than 3"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", "start at 1"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n", "does not exist"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n", "not a vertex index"),
        (b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 \\\n 3\n", "continuation"),
        (b"v 0 0 0\n  v 1 0 0\nv 0 1 0\nf 1 2 3\n", "indented"),
    ],
)
def test_declines_with_a_reason(text: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_obj(text)


def test_face_cap_is_checked_before_triangulating() -> None:
    with pytest.raises(TooManyFaces):
        parse_obj(CUBE_V.encode() + b"f 1 2 3 4 5 6 7 8\n", max_faces=5)  # 6 triangles


def test_loader_falls_back_to_trimesh_for_what_it_declines(tmp_path) -> None:
    path = tmp_path / "continued.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 \\\n3\nf 1 2 4\n")
    mesh = load_mesh(path)  # trimesh understands the continuation
    assert mesh.n_faces == 2


def test_loader_cap_message(tmp_path) -> None:
    path = tmp_path / "big.obj"
    path.write_text(CUBE_V + "f 1 2 3 4 5 6 7 8\n")
    with pytest.raises(MeshLoadError, match="exceed the limit of 5.*--max-faces"):
        load_mesh(path, MeshLimits(max_faces=5))


def test_loader_refuses_bad_indices_even_after_fallback(tmp_path) -> None:
    path = tmp_path / "bad.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    with pytest.raises(MeshLoadError):
        load_mesh(path)
