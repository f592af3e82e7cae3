"""The render spec's look (grey | materials): hashes, loaders that carry materials, coloured views, refusals.

Tiny files are generated here: an OBJ with an MTL colour, an OBJ with a texture,
a GLB with baseColorFactor, a GLB with a baseColorTexture, PLYs with vertex and
with face colours, and shapes without materials. Broken material assets (a
missing MTL or texture, a garbage or truncated image, an MTL outside the folder)
must cost the colour, with a logged warning, never the shape.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ftspl.engine.constants import LOOKS, RenderSpec
from ftspl.engine.errors import IndexStateError, UnknownKeyError
from ftspl.engine.loading.limits import MeshLimits
from ftspl.engine.loading.materials import Material, Materials, texture_array
from ftspl.engine.loading.meshes import Mesh, load_mesh, normalize
from ftspl.engine.rendering.renderer import Renderer, reference_mesh
from ftspl.engine.rendering.worker import RenderJob, render_one

GREY = RenderSpec(image_size=48)
PAINT = GREY.with_look("materials")

#: RenderSpec().to_dict() as every model manifest and index stored it before ``look`` existed.
SPEC_BEFORE_LOOK = {
    "ambient": 0.25, "azimuth_start_deg": 0.0, "azimuth_step_deg": 30.0, "background_rgb": [1.0, 1.0, 1.0],
    "camera_distance": 2.5, "diffuse": 0.65, "elevation_deg": 30.0, "fov_deg": 50.0, "image_size": 224,
    "key_light": 0.25, "key_light_dir": [0.3, 1.0, 0.5], "material_rgb": [0.7, 0.7, 0.7],
    "normalize_radius": 1.0, "samples": 0, "shininess": 16.0, "specular": 0.2, "two_sided": True, "up": "y",
    "views": 12,
}
#: Their digests, computed with the code before ``look`` existed.
DIGESTS_BEFORE_LOOK = {"default": "b4b4bb912bf1d208", "up z": "c81da89789104480", "64 px": "7046ef0f6d80e671"}

#: sha256 of the grey views of :func:`reference_mesh` (64 px spec), rendered before ``look`` existed.
GREY_VIEWS_BEFORE_LOOK = {
    "llvmpipe (LLVM 15.0.6, 256 bits)": "1e24ddf16891ed8aff49fedbf1fc742ceb3b32c81907230a4e97f059527546ce",
}


# --- tiny files -------------------------------------------------------------------------------
def _box() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=(1.0, 1.5, 0.8))


def _obj(folder: Path, name: str, mtl: str | None, mtl_name: str | None = None, uv: bool = False) -> Path:
    """A box OBJ. With ``mtl`` text it uses an MTL file of that text beside it; ``mtl_name``
    names the library the OBJ asks for (a missing or outside file when no ``mtl`` is written)."""
    folder.mkdir(parents=True, exist_ok=True)
    box = _box()
    uses = mtl is not None or mtl_name is not None
    mtl_name = mtl_name or f"{name}.mtl"
    lines = [f"mtllib {mtl_name}", "usemtl paint"] if uses else []
    lines += [f"v {x} {y} {z}" for x, y, z in box.vertices]
    if uv:
        lines += ["vt 0 0", "vt 1 0", "vt 0 1"]
        lines += [f"f {a + 1}/1 {b + 1}/2 {c + 1}/3" for a, b, c in box.faces]
    else:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in box.faces]
    (folder / f"{name}.obj").write_text("\n".join(lines) + "\n")
    if mtl is not None:
        (folder / mtl_name).write_text(mtl)
    return folder / f"{name}.obj"


def _glb(folder: Path, name: str, material: object | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mesh = _box()
    if material is not None:
        uv = (mesh.vertices[:, :2] - mesh.vertices[:, :2].min(0)) / np.ptp(mesh.vertices[:, :2], axis=0)
        mesh.visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    path = folder / f"{name}.glb"
    path.write_bytes(mesh.export(file_type="glb"))
    return path


def _ply(folder: Path, name: str, vertex: object | None = None, face: object | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    mesh = _box()
    if vertex is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.tile(vertex, (len(mesh.vertices), 1)))
    if face is not None:
        mesh.visual = trimesh.visual.ColorVisuals(mesh, face_colors=np.tile(face, (len(mesh.faces), 1)))
    path = folder / f"{name}.ply"
    path.write_bytes(mesh.export(file_type="ply"))
    return path


@pytest.fixture
def painted(tmp_path: Path) -> dict[str, tuple[Path, int]]:
    """name -> (file, the colour channel that must dominate its materials views: 0 R, 1 G, 2 B)."""
    t = tmp_path
    Image.new("RGB", (8, 8), (20, 200, 30)).save(_parent(t / "obj_tex") / "green.png")
    tex = Image.new("RGB", (8, 8), (30, 40, 220))
    return {
        "obj_kd": (_obj(t / "obj_kd", "kd", "newmtl paint\nKd 0.9 0.1 0.1\n"), 0),
        "obj_map_kd": (_obj(t / "obj_tex", "tex", "newmtl paint\nmap_Kd green.png\n", uv=True), 1),
        "glb_factor": (_glb(t / "glb_f", "factor", trimesh.visual.material.PBRMaterial(
            baseColorFactor=[0.1, 0.2, 0.9, 1.0])), 2),
        "glb_texture": (_glb(t / "glb_t", "texture", trimesh.visual.material.PBRMaterial(baseColorTexture=tex)), 2),
        "ply_vertex": (_ply(t / "ply_v", "vertex", vertex=[240, 40, 30, 255]), 0),
        "ply_face": (_ply(t / "ply_f", "face", face=[30, 220, 40, 255]), 1),
    }


@pytest.fixture
def plain(tmp_path: Path) -> dict[str, Path]:
    """Shapes without materials, one per loader route."""
    return {
        "obj": _obj(tmp_path / "plain_obj", "plain", None),
        "glb": _glb(tmp_path / "plain_glb", "plain", None),
        "ply": _ply(tmp_path / "plain_ply", "plain"),
    }


def _parent(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def renderers(gl_available):
    """{look: Renderer} at 48 px, one per look, side by side in this process."""
    made = {look: Renderer(GREY.with_look(look)) for look in LOOKS}
    yield made
    for r in made.values():
        r.close()


def _render(renderers: dict, look: str, path: Path) -> np.ndarray:
    """Views of ``path`` as the render worker makes them in the ``look`` (here, with a ready renderer)."""
    r = renderers[look]
    result = render_one(RenderJob(path), r.spec, MeshLimits(), [r])
    assert result.error is None, result.error
    return result.views


def _object_pixels(views: np.ndarray) -> np.ndarray:
    """(n, 3) int pixels that are not the white background."""
    flat = views.reshape(-1, 3).astype(int)
    return flat[flat.min(axis=1) < 250]


# --- the spec and its hash -----------------------------------------------------------------------
def test_grey_specs_hash_exactly_as_before_look_existed() -> None:
    assert RenderSpec().digest() == DIGESTS_BEFORE_LOOK["default"]
    assert RenderSpec().with_up("z").digest() == DIGESTS_BEFORE_LOOK["up z"]
    assert RenderSpec(image_size=64).digest() == DIGESTS_BEFORE_LOOK["64 px"]
    old = RenderSpec.from_dict(SPEC_BEFORE_LOOK)  # a manifest or index written before the field
    assert old == RenderSpec() and old.look == "grey" and old.digest() == DIGESTS_BEFORE_LOOK["default"]


def test_look_is_hashed_stored_and_read_back() -> None:
    assert LOOKS == ("grey", "materials") and RenderSpec().look == "grey"
    paint = RenderSpec(look="materials")
    assert paint.digest() != RenderSpec().digest()
    assert paint.with_up("z").digest() not in (paint.digest(), RenderSpec().with_up("z").digest())
    stored = json.loads(json.dumps(paint.to_dict()))  # what export writes and the index keeps
    assert stored["look"] == "materials"
    assert RenderSpec.from_dict(stored) == paint and RenderSpec.from_dict(stored).digest() == paint.digest()
    assert RenderSpec.from_dict(json.loads(json.dumps(RenderSpec().to_dict()))).digest() == DIGESTS_BEFORE_LOOK["default"]
    with pytest.raises(UnknownKeyError, match="unknown render look 'colour'; valid: grey, materials"):
        RenderSpec(look="colour")


# --- loading -------------------------------------------------------------------------------------
def test_loaders_carry_materials_only_when_asked(painted) -> None:
    for name, (path, channel) in painted.items():
        grey = load_mesh(path)
        assert grey.materials is None, name  # the grey look never reads materials
        mesh = load_mesh(path, materials=True)
        m = mesh.materials
        assert isinstance(m, Materials), name
        assert m.colors.shape == (len(mesh.vertices), 4) and m.uvs.shape == (len(mesh.vertices), 2), name
        assert sum(g.faces for g in m.groups) == mesh.n_faces == grey.n_faces, name
        normed = normalize(mesh, "y")
        assert normed.materials is m, name
    kd = load_mesh(painted["obj_kd"][0], materials=True).materials.groups[0]
    assert kd.color == pytest.approx((0.9, 0.1, 0.1)) and kd.texture is None
    tex = load_mesh(painted["obj_map_kd"][0], materials=True).materials.groups[0]
    assert tex.color == (1.0, 1.0, 1.0) and tex.texture.shape == (8, 8, 4)  # no Kd: the texture as it is
    assert tuple(tex.texture[0, 0]) == (20, 200, 30, 255)
    factor = load_mesh(painted["glb_factor"][0], materials=True).materials.groups[0]
    assert factor.color == pytest.approx((0.1, 0.2, 0.9), abs=0.01) and factor.texture is None
    glb_tex = load_mesh(painted["glb_texture"][0], materials=True).materials.groups[0]
    assert glb_tex.color == (1.0, 1.0, 1.0) and glb_tex.texture is not None
    vertex = load_mesh(painted["ply_vertex"][0], materials=True).materials
    assert (vertex.colors == [240, 40, 30, 255]).all() and vertex.groups[0].color is None
    face = load_mesh(painted["ply_face"][0], materials=True)
    assert len(face.vertices) == 3 * face.n_faces and (face.materials.colors == [30, 220, 40, 255]).all()


def test_shapes_without_materials_load_as_in_the_grey_look(plain) -> None:
    for name, path in plain.items():
        grey, paint = load_mesh(path), load_mesh(path, materials=True)
        assert paint.materials is None, name
        np.testing.assert_array_equal(grey.faces, paint.faces, err_msg=name)
        np.testing.assert_array_equal(grey.vertices, paint.vertices, err_msg=name)


def test_mesh_refuses_materials_that_do_not_fit() -> None:
    v, f = np.eye(3), np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="do not fit 3 vertices"):
        Mesh(v, f, Materials(np.zeros((2, 4)), np.zeros((2, 2)), []))

    with pytest.raises(ValueError, match="do not add up"):
        Mesh(v, f, Materials(np.zeros((3, 4)), np.zeros((3, 2)), [Material(2)]))


# --- broken material assets: a warning and grey, never a crash -------------------------------------
def _broken(tmp_path: Path) -> dict[str, Path]:
    t = tmp_path
    garbage = _parent(t / "garbage")
    (garbage / "wood.png").write_bytes(b"this is not a png at all" * 20)
    truncated = _parent(t / "truncated")
    buf = truncated / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf)
    (truncated / "wood.png").write_bytes(buf.read_bytes()[:200])
    outside = _parent(t / "outside")
    (t / "secret.mtl").write_text("newmtl paint\nKd 1 0 0\n")
    return {
        "missing MTL": _obj(t / "no_mtl", "m", None, mtl_name="gone.mtl"),
        "missing texture": _obj(t / "no_tex", "m", "newmtl paint\nmap_Kd gone.png\n", uv=True),
        "garbage texture": _obj(garbage, "m", "newmtl paint\nmap_Kd wood.png\n", uv=True),
        "truncated texture": _obj(truncated, "m", "newmtl paint\nmap_Kd wood.png\n", uv=True),
        "MTL outside the folder": _obj(outside, "m", None, mtl_name="../secret.mtl"),
        "garbage MTL": _obj(t / "junk_mtl", "m", "\x00\xff newmtl\nKd x y z\nmap_Kd\nnewmtl\n\x01\x02", uv=True),
    }


def test_broken_material_assets_render_grey_with_a_warning(renderers, tmp_path: Path, caplog) -> None:
    files = _broken(tmp_path)
    for name, path in files.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ftspl"):
            mesh = load_mesh(path, materials=True)
        assert mesh.materials is None, name  # nothing left to wear: exactly the grey look
        if name != "garbage MTL":  # an MTL without usable entries is no asset problem
            warned = [r for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]
            assert warned, f"{name}: no warning logged"
            assert all("\n" not in r.getMessage() for r in warned), name
    path = files["truncated texture"]
    np.testing.assert_array_equal(_render(renderers, "materials", path), _render(renderers, "grey", path))


def test_a_broken_texture_keeps_the_materials_colour(tmp_path: Path, caplog) -> None:
    folder = _parent(tmp_path / "kd_and_bad_tex")
    (folder / "wood.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    path = _obj(folder, "m", "newmtl paint\nKd 0.2 0.3 0.9\nmap_Kd wood.png\n", uv=True)
    with caplog.at_level(logging.WARNING, logger="ftspl"):
        group = load_mesh(path, materials=True).materials.groups[0]
    assert group.texture is None and group.color == pytest.approx((0.2, 0.3, 0.9))
    assert any("wood.png" in r.getMessage() for r in caplog.records)


def test_texture_caps() -> None:
    big = Image.new("RGB", (3000, 1500), (10, 20, 30))
    arr = texture_array(big)
    assert arr.shape == (512, 1024, 4) and tuple(arr[0, 0]) == (10, 20, 30, 255)
    with pytest.raises(ValueError, match="exceed the limit of 1000"):
        texture_array(Image.new("L", (100, 100)), max_pixels=1000)


# --- rendering -----------------------------------------------------------------------------------
def test_grey_views_are_byte_identical_to_before(renderer: Renderer) -> None:
    want = GREY_VIEWS_BEFORE_LOOK.get(renderer.gl_renderer)
    if want is None:
        pytest.skip(f"grey views were recorded on {sorted(GREY_VIEWS_BEFORE_LOOK)}, not {renderer.gl_renderer}")
    views = renderer.render(normalize(reference_mesh(), "y"))
    assert hashlib.sha256(views.tobytes()).hexdigest() == want


def test_materials_look_colours_views_where_grey_stays_grey(renderers, painted) -> None:
    for name, (path, channel) in painted.items():
        grey = _object_pixels(_render(renderers, "grey", path))
        assert len(grey) and (grey.max(axis=1) - grey.min(axis=1)).max() <= 1, f"{name}: grey look not grey"
        paint = _object_pixels(_render(renderers, "materials", path))
        mean = paint.mean(axis=0)
        others = [c for c in range(3) if c != channel]
        assert mean[channel] > mean[others].max() + 40, f"{name}: mean colour {mean.round(1)}"


def test_shapes_without_materials_render_grey_bytes_in_the_materials_look(renderers, plain) -> None:
    for name, path in plain.items():
        np.testing.assert_array_equal(_render(renderers, "materials", path), _render(renderers, "grey", path),
                                      err_msg=name)


def test_grey_renderer_ignores_materials_and_a_mixed_mesh_draws_each_part(renderers, painted) -> None:
    grey = renderers["grey"]
    worn_by_grey = grey.render(normalize(load_mesh(painted["obj_kd"][0], materials=True), "y"))
    np.testing.assert_array_equal(worn_by_grey, grey.render(normalize(load_mesh(painted["obj_kd"][0]), "y")))
    # two parts: a red one with its material, a bare one in the spec's grey

    left, right = _box(), _box()
    left.apply_translation((-0.8, 0, 0))
    right.apply_translation((0.8, 0, 0))
    v = np.concatenate([left.vertices, right.vertices])
    f = np.concatenate([left.faces, right.faces + len(left.vertices)])
    mats = Materials(np.full((len(v), 4), 255), np.zeros((len(v), 2)),
                     [Material(len(left.faces), (0.9, 0.1, 0.1)), Material(len(right.faces))])
    front = renderers["materials"].render(normalize(Mesh(v, f, mats), "y"))[0]
    px = _object_pixels(front[:, : front.shape[1] // 2][None])
    assert px.mean(axis=0)[0] > px.mean(axis=0)[1:].max() + 40  # the red box on the left (-X)
    px = _object_pixels(front[:, front.shape[1] // 2 :][None])
    assert (px.max(axis=1) - px.min(axis=1)).max() <= 1  # the bare box in grey


def test_renderers_of_both_looks_side_by_side(gl_available, painted) -> None:
    """Two renderers in one process each draw in their own GL context."""
    mesh = normalize(load_mesh(painted["obj_kd"][0], materials=True), "y")
    with Renderer(PAINT) as paint:
        alone = paint.render(mesh)
    with Renderer(GREY) as grey_alone:
        grey_views = grey_alone.render(mesh)
    with Renderer(PAINT) as paint, Renderer(GREY) as grey:
        np.testing.assert_array_equal(paint.render(mesh), alone)
        np.testing.assert_array_equal(grey.render(mesh), grey_views)
        np.testing.assert_array_equal(paint.render(mesh), alone)


# --- an index of one look refuses a model of the other --------------------------------------------
def _set_active_look(home: Path, look: str) -> RenderSpec:
    """Rewrite the active model's manifest to render with ``look`` (as ``ftspl export`` with that look would:
    the look enters the model's identity too)."""
    from ftspl.engine.model.manifest import ModelManifest

    model_dir = home / "models" / (home / "models" / "ACTIVE").read_text().strip()
    manifest = model_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    spec = RenderSpec.from_dict(data["render_spec"]).with_look(look)
    data["render_spec"], data["render_spec_hash"] = spec.to_dict(), spec.digest()
    data["model_hash"] = ModelManifest.from_dict(data).model_hash
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True))
    return spec


@pytest.mark.parametrize("first,second", [("grey", "materials"), ("materials", "grey")])
def test_an_index_refuses_shapes_rendered_with_the_other_look(gl_available, model_home: Path, tmp_path: Path,
                                                               painted, first: str, second: str) -> None:
    import ftspl

    gallery = _parent(tmp_path / "gallery" / "box")
    for name in ("obj_kd", "ply_vertex"):
        src = painted[name][0]
        for f in src.parent.iterdir():
            (gallery / f"{name}_{f.name}").write_bytes(f.read_bytes())
    (gallery / "obj_kd_kd.obj").write_text((gallery / "obj_kd_kd.obj").read_text().replace(
        "mtllib kd.mtl", "mtllib obj_kd_kd.mtl"))
    spec = _set_active_look(model_home, first)
    with ftspl.open(model_home) as lib:
        report = lib.add(gallery.parent)
        assert not report.failures and report.added == 2
        assert lib.stats().render_spec_hash == spec.digest()
    other = _set_active_look(model_home, second)
    assert other.digest() != spec.digest()
    more = _parent(tmp_path / "more" / "box")
    (more / "plain.ply").write_bytes(_ply(tmp_path / "p", "p").read_bytes())
    with ftspl.open(model_home) as lib, pytest.raises(IndexStateError) as refused:
        lib.add(more.parent)
    message = str(refused.value)
    assert "\n" not in message and f"in the {first} look" in message and f"renders the {second} look" in message, message


def test_a_file_trimesh_cannot_read_with_materials_is_read_for_its_geometry(painted, monkeypatch, caplog) -> None:
    from ftspl.engine.loading import trimesh_parse

    real_load = trimesh_parse.trimesh.load

    def fails_with_materials(*args, **kwargs):
        if not kwargs.get("skip_materials", True):
            raise KeyError("a material parser bug")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(trimesh_parse.trimesh, "load", fails_with_materials)
    for name in ("obj_kd", "glb_factor", "ply_vertex"):
        path = painted[name][0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ftspl"):
            mesh = load_mesh(path, materials=True)
        assert mesh.materials is None and mesh.n_faces == 12, name
        assert any("cannot read it with its materials" in r.getMessage() for r in caplog.records), name


def test_training_view_cache_renders_either_look(gl_available, painted, tmp_path: Path) -> None:
    """``ftspl train`` renders its targets through the view cache: the spec's look decides the views."""
    from ftspl.train.viewcache import cache_views

    paths = [painted["obj_kd"][0], painted["ply_vertex"][0]]
    cached = {look: cache_views(paths, ["mesh", "mesh"], GREY.with_look(look), tmp_path / "views") for look in LOOKS}
    assert not set(cached["grey"].keys) & set(cached["materials"].keys)  # one cache entry per look
    for i in range(len(paths)):
        grey, paint = (_object_pixels(cached[look].load(i)) for look in LOOKS)
        assert (grey.max(axis=1) - grey.min(axis=1)).max() <= 1
        assert paint.mean(axis=0)[0] > paint.mean(axis=0)[1:].max() + 40  # both files are red


# --- hostile material references: confined to the mesh's folder, bombs refused before decoding ------
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(args[0], (str, Path)):
        _OPENED.append(str(args[0]))
    elif _OPENED is not None and event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
        _OPENED.append(f"network: {event}")


sys.addaudithook(_audit)  # permanent, but records only while _OPENED is a list


def _load_watched(path: Path) -> tuple[Mesh, list[str]]:
    global _OPENED
    _OPENED = []
    try:
        mesh = load_mesh(path, materials=True)
    finally:
        opened, _OPENED = _OPENED, None
    return mesh, opened


@pytest.mark.parametrize("ref", ["../secret.mtl", "/etc/passwd", "../../../../../../etc/passwd",
                                 "file:///etc/passwd", "http://127.0.0.1:9/evil.mtl"])
def test_material_references_outside_the_folder_are_not_opened(tmp_path: Path, ref: str, caplog) -> None:
    (tmp_path / "secret.mtl").write_text("newmtl paint\nKd 1 0 0\n")
    folder = _parent(tmp_path / "mesh")
    (folder / "local.mtl").write_text("newmtl paint\nKd 0 0 1\nmap_Kd ../../../etc/passwd\nmap_Bump /etc/shadow\n")
    obj = folder / "m.obj"
    obj.write_text(f"mtllib {ref}\nmtllib local.mtl\nusemtl paint\n"
                   "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nvt 0 0\nf 1/1 2/1 3/1\nf 1 3 4\n")
    with caplog.at_level(logging.WARNING, logger="ftspl"):
        mesh, opened = _load_watched(obj)
    assert mesh.n_faces == 2
    allowed = {obj.resolve(), (folder / "local.mtl").resolve()}

    def stray(p: str) -> bool:  # a connection, /etc, or a file of tmp_path other than the OBJ and its MTL
        if p.startswith(("network", "/etc")):
            return True
        path = Path(p).resolve()
        return path.is_relative_to(tmp_path.resolve()) and path not in allowed

    assert not [p for p in opened if stray(p)]
    assert any(r.levelno == logging.WARNING for r in caplog.records)  # what was left out is said


def test_a_texture_bomb_is_refused_before_decoding(tmp_path: Path, caplog) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = _parent(tmp_path / "bomb")
    w = h = 9000  # 81 M pixels: over the 64 M cap, under PIL's own bomb check
    raw = zlib.compress(b"\0" * (w * 3 + 1) * 4, 9)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                                      + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    path = _obj(folder, "m", "newmtl paint\nKd 0.2 0.9 0.2\nmap_Kd bomb.png\n", uv=True)
    with caplog.at_level(logging.WARNING, logger="ftspl"):
        group = load_mesh(path, materials=True).materials.groups[0]
    assert group.texture is None and group.color == pytest.approx((0.2, 0.9, 0.2))
    assert any("9000x9000 pixels exceed the limit of 64000000" in r.getMessage() for r in caplog.records)
