"""Mesh loading, validation, normalisation, and pre-rendered view folders."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ftspl.engine.constants import MAX_FACES, NORMALIZE_RADIUS, UP_AXES, RenderSpec
from ftspl.engine.errors import ImageLoadError, MeshLoadError, UnknownKeyError
from ftspl.engine.loading import trimesh_parse
from ftspl.engine.loading.meshes import (
    LOADERS,
    Mesh,
    MeshLimits,
    load_mesh,
    mesh_extensions,
    normalize,
)
from ftspl.engine.loading.viewfolders import (
    is_view_folder,
    load_view_folder,
    natural_key,
    view_images,
)

# --- loading every supported format -------------------------------------------


@pytest.mark.parametrize("ext", sorted(LOADERS))
def test_every_loader_round_trips(ext: str, mesh_files: dict[str, Path], asym_mesh: trimesh.Trimesh) -> None:
    mesh = load_mesh(mesh_files[ext])
    assert mesh.vertices.dtype == np.float32 and mesh.vertices.shape[1] == 3
    assert mesh.faces.dtype == np.int32 and mesh.faces.shape == (len(asym_mesh.faces), 3)
    np.testing.assert_allclose(mesh.vertices.min(axis=0), asym_mesh.bounds[0], atol=1e-5)
    np.testing.assert_allclose(mesh.vertices.max(axis=0), asym_mesh.bounds[1], atol=1e-5)
    area = np.linalg.norm(np.cross(*(mesh.vertices[mesh.faces[:, i]] - mesh.vertices[mesh.faces[:, 0]] for i in (1, 2))), axis=1)
    assert area.sum() / 2 == pytest.approx(asym_mesh.area, rel=1e-5)


def test_extensions_are_the_loader_keys() -> None:
    assert mesh_extensions() == tuple(sorted(LOADERS))
    assert set(mesh_extensions()) >= {".obj", ".off", ".stl", ".ply", ".gltf", ".glb"}
    assert all(ext == ext.lower() and ext.startswith(".") for ext in LOADERS)


def test_extension_is_case_insensitive(mesh_files: dict[str, Path]) -> None:
    upper = mesh_files[".stl"].with_name("SHAPE.STL")
    upper.write_bytes(mesh_files[".stl"].read_bytes())
    assert load_mesh(upper).faces.shape[0] == 24


def test_obj_with_mtl_and_texture_loads_geometry(box_obj: Path) -> None:
    mesh = load_mesh(box_obj)
    assert mesh.faces.shape == (12, 3)
    np.testing.assert_allclose(mesh.vertices.min(axis=0), [-0.5] * 3, atol=1e-6)


def test_obj_materials_and_textures_are_never_opened(box_obj: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (box_obj.parent / "box.mtl").write_text("newmtl wood\nmap_Kd ../../../etc/passwd\n")
    asked: list[str] = []
    real_get = trimesh_parse.FolderResolver.get

    def spy(self, name: str) -> bytes:
        asked.append(name)
        return real_get(self, name)

    monkeypatch.setattr(trimesh_parse.FolderResolver, "get", spy)
    assert load_mesh(box_obj).faces.shape == (12, 3)
    assert asked == []  # geometry only: neither the MTL nor its texture is requested


def test_scene_nodes_are_flattened_with_their_transforms(tmp_path: Path, mesh_writer) -> None:
    scene = trimesh.Scene()
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    scene.add_geometry(box, node_name="a", transform=trimesh.transformations.translation_matrix((5.0, 0, 0)))
    scene.add_geometry(box, node_name="b", transform=trimesh.transformations.translation_matrix((0, 0, -3.0)))
    for ext in (".glb", ".gltf"):
        folder = tmp_path / ext.strip(".")
        folder.mkdir()
        mesh = load_mesh(mesh_writer(scene, folder / f"scene{ext}"))
        assert mesh.faces.shape == (24, 3)
        np.testing.assert_allclose(mesh.vertices.min(axis=0), [-0.5, -0.5, -3.5], atol=1e-5)
        np.testing.assert_allclose(mesh.vertices.max(axis=0), [5.5, 0.5, 0.5], atol=1e-5)


def test_obj_with_several_objects_is_one_mesh(tmp_path: Path) -> None:
    text = "o a\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\no b\nv 0 0 5\nv 1 0 5\nv 0 1 5\nf 4 5 6\n"
    (tmp_path / "two.obj").write_text(text)
    mesh = load_mesh(tmp_path / "two.obj")
    assert mesh.faces.shape == (2, 3)
    assert mesh.vertices[:, 2].max() == 5.0


def test_unreferenced_vertices_are_dropped(tmp_path: Path) -> None:
    (tmp_path / "stray.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 100 100 100\nf 1 2 3\n")
    mesh = load_mesh(tmp_path / "stray.obj")
    assert mesh.vertices.shape == (3, 3)
    assert mesh.vertices.max() == 1.0


def test_gltf_external_buffer_inside_the_folder_resolves(mesh_files: dict[str, Path]) -> None:
    gltf = json.loads(mesh_files[".gltf"].read_text())
    assert any("uri" in b and not b["uri"].startswith("data:") for b in gltf["buffers"])  # really external
    assert load_mesh(mesh_files[".gltf"]).faces.shape[0] == 24


def test_gltf_buffer_outside_the_folder_is_refused(mesh_files: dict[str, Path]) -> None:
    path = mesh_files[".gltf"]
    inner = path.parent / "inner"
    inner.mkdir()
    gltf = json.loads(path.read_text())
    for buf in gltf["buffers"]:
        buf["uri"] = "../" + buf["uri"]  # the file exists, but one folder up
    (inner / "escape.gltf").write_text(json.dumps(gltf))
    with pytest.raises(MeshLoadError, match="escape.gltf"):
        load_mesh(inner / "escape.gltf")


def test_folder_resolver_confines_reads(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "ok.bin").write_bytes(b"ok")
    resolver = trimesh_parse.FolderResolver(sub / "m.gltf", max_bytes=100)
    assert resolver.get("ok.bin") == b"ok"
    assert resolver.get("ok%2Ebin") == b"ok"  # percent-encoded URIs
    for name in ("../secret.bin", str(tmp_path / "secret.bin"), "missing.bin"):
        with pytest.raises(FileNotFoundError):
            resolver.get(name)
    with pytest.raises(PermissionError):
        resolver.write("new.bin", b"")
    (sub / "big.bin").write_bytes(b"y" * 101)
    with pytest.raises(ValueError, match="larger"):
        resolver.get("big.bin")


# --- bad inputs -----------------------------------------------------------------


def _expect_error(path: Path, fragment: str, limits: MeshLimits = MeshLimits()) -> MeshLoadError:
    with pytest.raises(MeshLoadError) as info:
        load_mesh(path, limits)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": "), msg
    assert fragment in msg, msg
    assert "\n" not in msg
    return info.value


def test_unsupported_extension_lists_the_supported_ones(tmp_path: Path) -> None:
    path = tmp_path / "cloud.xyz"
    path.write_text("0 0 0\n")
    err = _expect_error(path, "unsupported format '.xyz'; supported: .glb, .gltf")
    assert all(ext in err.reason for ext in LOADERS)


def test_missing_file(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.obj", "cannot read file")


def test_folder_named_like_a_mesh(tmp_path: Path) -> None:
    (tmp_path / "dir.obj").mkdir()
    _expect_error(tmp_path / "dir.obj", "not a regular file")


@pytest.mark.parametrize("ext", sorted(LOADERS))
def test_empty_file(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    _expect_error(path, "file is empty")


@pytest.mark.parametrize("ext", sorted(LOADERS))
def test_corrupt_bytes(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"junk{ext}"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _expect_error(path, "")


def test_truncated_binary_stl(tmp_path: Path, mesh_files: dict[str, Path]) -> None:
    data = mesh_files[".stl"].read_bytes()
    assert struct.unpack("<I", data[80:84])[0] == 24  # binary STL: header promises 24 triangles
    path = tmp_path / "cut.stl"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "")


def test_invalid_gltf_json(tmp_path: Path) -> None:
    path = tmp_path / "bad.gltf"
    path.write_text('{"asset": ')
    _expect_error(path, "not valid JSON")


def test_file_size_is_checked_before_parsing(mesh_files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args, **kwargs):
        raise AssertionError("parsed a file that is over the size limit")

    monkeypatch.setattr(trimesh_parse.trimesh, "load", must_not_parse)
    path = mesh_files[".obj"]
    _expect_error(path, "over the limit of 10", MeshLimits(max_file_bytes=10))


def test_too_many_faces(mesh_files: dict[str, Path]) -> None:
    _expect_error(mesh_files[".ply"], "24 faces exceed the limit of 23", MeshLimits(max_faces=23))
    assert load_mesh(mesh_files[".ply"], MeshLimits(max_faces=24)).faces.shape[0] == 24


def test_too_many_vertices(mesh_files: dict[str, Path]) -> None:
    _expect_error(mesh_files[".off"], "vertices exceed the limit of 5", MeshLimits(max_vertices=5))


def test_limits_default_to_the_constants() -> None:
    assert MeshLimits().max_faces == MAX_FACES


def test_vertices_only_obj_is_a_point_cloud(tmp_path: Path) -> None:
    path = tmp_path / "points.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    _expect_error(path, "point cloud")


def test_point_cloud_ply(tmp_path: Path) -> None:
    path = tmp_path / "scan.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
    _expect_error(path, "point cloud only")


def test_no_faces_at_all(tmp_path: Path) -> None:
    path = tmp_path / "comment.obj"
    path.write_text("# nothing here\n")
    _expect_error(path, "no triangles")


def test_non_finite_vertices(tmp_path: Path) -> None:
    path = tmp_path / "nan.obj"
    path.write_text("v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    _expect_error(path, "NaN or infinite")
    path.write_text("v inf 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    _expect_error(path, "NaN or infinite")


@pytest.mark.parametrize(
    "text",
    [
        "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n",  # collinear
        "v 1 1 1\nv 1 1 1\nv 1 1 1\nv 2 2 2\nf 1 2 3\nf 1 1 4\n",  # repeated points
    ],
)
def test_all_faces_degenerate(tmp_path: Path, text: str) -> None:
    path = tmp_path / "flat.obj"
    path.write_text(text)
    _expect_error(path, "degenerate (zero area)")


def test_face_index_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "oob.off"
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    _expect_error(path, "")


# --- normalisation --------------------------------------------------------------


def _random_mesh(seed: int) -> Mesh:
    rng = np.random.default_rng(seed)
    vertices = rng.normal(size=(30, 3)) * rng.uniform(0.01, 100, size=3) + rng.uniform(-50, 50, size=3)
    return Mesh(vertices, rng.integers(0, 30, size=(20, 3)))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("up", UP_AXES)
def test_normalize_centres_and_scales(seed: int, up: str) -> None:
    out = normalize(_random_mesh(seed), up)
    centre = (out.vertices.min(axis=0) + out.vertices.max(axis=0)) / 2
    np.testing.assert_allclose(centre, 0.0, atol=1e-5)
    assert np.linalg.norm(out.vertices, axis=1).max() == pytest.approx(NORMALIZE_RADIUS, rel=1e-6)
    assert out.vertices.dtype == np.float32 and out.faces.dtype == np.int32


def test_normalize_radius_argument_and_no_mutation() -> None:
    mesh = _random_mesh(1)
    before = mesh.vertices.copy()
    out = normalize(mesh, "y", radius=2.5)
    assert np.linalg.norm(out.vertices, axis=1).max() == pytest.approx(2.5, rel=1e-6)
    np.testing.assert_array_equal(mesh.vertices, before)
    np.testing.assert_array_equal(out.faces, mesh.faces)


def test_z_up_becomes_y_up() -> None:
    # A tall thin box along +Z with a marker vertex at the top (+Z) and one at +Y.
    box = trimesh.creation.box(extents=(1.0, 1.0, 4.0))
    vertices = np.vstack([box.vertices, [[0.0, 0.0, 2.0], [0.0, 0.5, 0.0]]])
    mesh = Mesh(vertices, np.vstack([box.faces, [[8, 0, 1], [9, 0, 1]]]))
    out = normalize(mesh, "z")
    extent = np.ptp(out.vertices, axis=0)
    assert extent[1] == pytest.approx(extent.max())  # tall along Y now
    assert extent[2] == pytest.approx(extent[0])
    top, front = out.vertices[8], out.vertices[9]
    assert top[1] > 0.9 and abs(top[0]) < 1e-6 and abs(top[2]) < 1e-6  # +Z -> +Y
    assert front[2] < 0 and abs(front[1]) < 1e-6  # +Y -> -Z (right-handed rotation)
    same = normalize(mesh, "y")
    assert np.ptp(same.vertices, axis=0)[2] == pytest.approx(np.ptp(same.vertices, axis=0).max())


def test_rotation_preserves_shape() -> None:
    mesh = _random_mesh(3)
    y, z = normalize(mesh, "y"), normalize(mesh, "z")
    # Same edge lengths: a proper rotation, not a reflection or a shear.
    def edges(m: Mesh) -> np.ndarray:
        return np.linalg.norm(m.vertices[m.faces[:, 0]] - m.vertices[m.faces[:, 1]], axis=1)

    np.testing.assert_allclose(edges(y), edges(z), rtol=1e-5, atol=1e-6)
    a = y.vertices[mesh.faces]
    b = z.vertices[mesh.faces]
    vol = lambda t: np.einsum("ij,ij->i", t[:, 0], np.cross(t[:, 1], t[:, 2]))  # noqa: E731
    np.testing.assert_allclose(vol(a), vol(b), rtol=1e-4, atol=1e-6)  # det R = +1


def test_unknown_up_axis_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownKeyError) as info:
        normalize(_random_mesh(0), "x")
    assert "y, z" in str(info.value)


def test_mesh_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        Mesh(np.zeros((3, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError):
        Mesh(np.zeros((3, 3)), np.zeros((1, 4)))


# --- pre-rendered view folders ---------------------------------------------------


def _write_views(folder: Path, names: list[str], size: int = 16, mode: str = "RGB") -> list[int]:
    """Write one flat-grey image per name; image k has grey level 10 * (k + 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    levels = []
    for k, name in enumerate(names):
        level = 10 * (k + 1)
        Image.new(mode, (size, size), level if mode == "L" else (level, level, level)).save(folder / name)
        levels.append(level)
    return levels


def test_natural_key_orders_numbers_numerically() -> None:
    names = ["v10.png", "v2.png", "v1.png", "V3.png", "v02.png"]
    assert sorted(names, key=natural_key) == ["v1.png", "v02.png", "v2.png", "V3.png", "v10.png"]
    # mixed shapes of names never raise TypeError
    sorted(["a1x", "a1x2", "a", "1", "x1y2z3"], key=natural_key)


def test_view_folder_detection(tmp_path: Path) -> None:
    names = [f"chair_0001_{i:03d}.png" for i in range(1, 13)]
    good = tmp_path / "good"
    _write_views(good, names)
    (good / ".DS_Store").write_bytes(b"junk")  # hidden files are ignored
    assert is_view_folder(good)
    assert not is_view_folder(good, views=6)
    short = tmp_path / "short"
    _write_views(short, names[:11])
    assert not is_view_folder(short)
    mixed = tmp_path / "mixed"
    _write_views(mixed, names[:11])
    (mixed / "notes.txt").write_text("x")
    assert not is_view_folder(mixed)
    nested = tmp_path / "nested"
    _write_views(nested, names[:11])
    (nested / "sub").mkdir()
    assert not is_view_folder(nested)
    assert not is_view_folder(good / names[0])
    assert not is_view_folder(tmp_path / "missing")


def test_load_view_folder_natural_order_and_resize(tmp_path: Path) -> None:
    names = [f"{i}.png" for i in range(12)]  # lexicographic order would put 10, 11 after 1
    levels = _write_views(tmp_path / "v", names, size=16)
    spec = RenderSpec(image_size=32)
    views = load_view_folder(tmp_path / "v", spec)
    assert views.shape == (12, 32, 32, 3) and views.dtype == np.uint8
    np.testing.assert_array_equal(views[:, 16, 16, 0], levels)
    assert [p.name for p in view_images(tmp_path / "v")] == names


def test_load_view_folder_converts_modes_and_alpha(tmp_path: Path) -> None:
    folder = tmp_path / "modes"
    _write_views(folder, [f"g{i}.jpg" for i in range(1, 11)], mode="L")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(folder / "g11.png")  # fully transparent -> white
    Image.new("RGBA", (16, 8), (0, 0, 255, 255)).save(folder / "g12.png")  # non-square -> padded
    views = load_view_folder(folder, RenderSpec(image_size=16))
    assert views.shape == (12, 16, 16, 3)
    assert abs(int(views[0, 8, 8, 0]) - 10) <= 2  # JPEG grey level survives (lossy)
    assert (views[10] == 255).all()
    assert tuple(views[11, 8, 8]) == (0, 0, 255)  # centre is the image
    assert tuple(views[11, 0, 8]) == (255, 255, 255)  # top is white padding


def test_load_view_folder_wrong_count(tmp_path: Path) -> None:
    _write_views(tmp_path / "few", [f"{i}.png" for i in range(5)])
    with pytest.raises(ImageLoadError, match="holds 5 images, expected 12"):
        load_view_folder(tmp_path / "few", RenderSpec())


def test_load_view_folder_undecodable_image(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    _write_views(folder, [f"{i}.png" for i in range(11)])
    (folder / "11.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageLoadError) as info:
        load_view_folder(folder, RenderSpec(image_size=16))
    assert str(folder / "11.png") in str(info.value)


def test_load_view_folder_pixel_cap(tmp_path: Path) -> None:
    _write_views(tmp_path / "big", [f"{i}.png" for i in range(12)], size=64)
    with pytest.raises(ImageLoadError, match="over the limit of 1000"):
        load_view_folder(tmp_path / "big", RenderSpec(image_size=16), max_pixels=1000)
    assert load_view_folder(tmp_path / "big", RenderSpec(image_size=16), max_pixels=64 * 64).shape[0] == 12

