"""The headless 12-view renderer (runs on Mesa llvmpipe here; skipped only without EGL)."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

import ftspl
from ftspl.engine.constants import IMAGE_SIZE, VIEWS, RenderSpec
from ftspl.engine.errors import RenderError
from ftspl.engine.index.store.viewcodes import make_strip, strip_tiles
from ftspl.engine.loading.meshes import Mesh, load_mesh, normalize
from ftspl.engine.rendering.renderer import (
    Renderer,
    camera_positions,
    make_preview,
    reference_mesh,
    render_reference,
)


def _prepared(mesh: trimesh.Trimesh, up: str = "y") -> Mesh:
    return normalize(Mesh(mesh.vertices, mesh.faces), up)


def _drawn(image: np.ndarray) -> np.ndarray:
    """Mask of pixels that are not background white."""
    return image.min(axis=-1) < 250


def _plane() -> Mesh:
    """A horizontal square (y = 0) of two triangles."""
    v = np.array([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]], dtype=np.float32)
    return normalize(Mesh(v, [[0, 2, 1], [0, 3, 2]]), "y")


# --- output basics ------------------------------------------------------------------


def test_output_shape_dtype_and_background(renderer: Renderer, small_spec: RenderSpec, asym_mesh) -> None:
    views = renderer.render(_prepared(asym_mesh))
    size = small_spec.image_size
    assert views.shape == (small_spec.views, size, size, 3) and views.dtype == np.uint8
    assert views.flags["C_CONTIGUOUS"]
    for view in views:
        drawn = _drawn(view)
        assert 0.03 < drawn.mean() < 0.8  # the shape is there, but not everywhere
        for corner in (view[0, 0], view[0, -1], view[-1, 0], view[-1, -1]):
            assert tuple(corner) == (255, 255, 255)
    grey = views[_drawn(views)]
    assert (np.ptp(grey.astype(int), axis=-1) <= 1).all()  # grey material: R == G == B


def test_default_spec_gives_twelve_224px_views(gl_available, asym_mesh) -> None:
    with Renderer(RenderSpec()) as r:
        views = r.render(_prepared(asym_mesh))
    assert views.shape == (VIEWS, IMAGE_SIZE, IMAGE_SIZE, 3)
    assert _drawn(views).any(axis=(1, 2)).all()


def test_same_bytes_twice_and_with_a_new_renderer(renderer: Renderer, small_spec, asym_mesh) -> None:
    mesh = _prepared(asym_mesh)
    first = renderer.render(mesh)
    assert renderer.render(mesh).tobytes() == first.tobytes()
    with Renderer(small_spec) as other:
        assert other.render(mesh).tobytes() == first.tobytes()


def test_same_bytes_in_another_process(renderer: Renderer, mesh_files: dict[str, Path]) -> None:
    path = mesh_files[".ply"]
    mine = hashlib.sha256(renderer.render(normalize(load_mesh(path), "y")).tobytes()).hexdigest()
    code = (
        "import hashlib, sys\n"
        "from ftspl.engine.constants import RenderSpec\n"
        "from ftspl.engine.loading.meshes import load_mesh, normalize\n"
        "from ftspl.engine.rendering.renderer import Renderer\n"
        "with Renderer(RenderSpec(image_size=64)) as r:\n"
        "    print(hashlib.sha256(r.render(normalize(load_mesh(sys.argv[1]), 'y')).tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(ftspl.__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == mine


# --- cameras ---------------------------------------------------------------------------


def test_camera_positions_follow_the_spec() -> None:
    spec = RenderSpec()
    eyes = camera_positions(spec)
    assert eyes.shape == (12, 3)
    dist = spec.camera_distance * spec.normalize_radius
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), dist)
    np.testing.assert_allclose(eyes[:, 1], dist * np.sin(np.radians(30.0)))  # 30 degrees up
    np.testing.assert_allclose(eyes[0], [0, eyes[0, 1], dist * np.cos(np.radians(30.0))], atol=1e-12)  # az 0: +Z
    assert eyes[3, 0] > 0 and abs(eyes[3, 2]) < 1e-9  # az 90: +X
    azimuths = np.degrees(np.arctan2(eyes[:, 0], eyes[:, 2])) % 360
    np.testing.assert_allclose(azimuths, np.arange(12) * 30.0, atol=1e-9)


def test_views_differ_by_azimuth(renderer: Renderer, asym_mesh) -> None:
    views = renderer.render(_prepared(asym_mesh)).astype(int)
    for i in range(1, 12):
        assert np.abs(views[i] - views[0]).mean() > 2.0, f"view {i} looks like view 0"


def test_azimuth_start_shifts_the_cameras(renderer: Renderer, small_spec, asym_mesh) -> None:
    mesh = _prepared(asym_mesh)
    views = renderer.render(mesh)
    with Renderer(replace(small_spec, azimuth_start_deg=30.0)) as shifted:
        moved = shifted.render(mesh)
    # camera k of the shifted ring is camera k+1 of the default ring (up to tile rounding)
    diff = np.abs(moved[:-1].astype(int) - views[1:].astype(int))
    assert diff.mean() < 0.5
    assert np.abs(moved[0].astype(int) - views[0].astype(int)).mean() > 2.0


def test_left_and_right_are_not_mirrored(renderer: Renderer, asym_mesh) -> None:
    # The big block is on -X. Azimuth 0 looks from +Z (so +X is on the image's
    # right): more of the shape is drawn on the left. Azimuth 180 mirrors that.
    views = renderer.render(_prepared(asym_mesh))
    half = views.shape[2] // 2

    def left_minus_right(view: np.ndarray) -> float:
        drawn = _drawn(view)
        return float(drawn[:, :half].sum() - drawn[:, half:].sum())

    assert left_minus_right(views[0]) > 50
    assert left_minus_right(views[6]) < -50


def test_up_is_up(renderer: Renderer) -> None:
    # A tall, thin column: drawn taller than wide, and the top of the image is
    # where +Y is (a wide cap sits on top of the column).
    column = trimesh.creation.box(extents=(0.3, 2.0, 0.3))
    cap = trimesh.creation.box(extents=(1.2, 0.2, 1.2))
    cap.apply_translation((0, 1.0, 0))
    views = renderer.render(_prepared(trimesh.util.concatenate([column, cap])))
    drawn = _drawn(views[0])
    rows, cols = np.nonzero(drawn)
    assert np.ptp(rows) > np.ptp(cols)  # taller than wide
    top_width = drawn[rows.min() + 2].sum()
    bottom_width = drawn[rows.max() - 2].sum()
    assert top_width > 2 * bottom_width


def test_elevation_looks_down_on_a_horizontal_plane(gl_available, small_spec) -> None:
    size = small_spec.image_size
    centre = slice(size // 2 - 4, size // 2 + 4)
    with Renderer(small_spec) as above:
        views = above.render(_plane())
    assert _drawn(views[:, centre, centre]).all()  # seen from 30 degrees up it covers the middle
    with Renderer(replace(small_spec, elevation_deg=0.0)) as level:
        edge_on = level.render(_plane())
    assert _drawn(edge_on).mean() < 0.02  # edge-on it is (almost) invisible


def test_bad_winding_renders_the_same(renderer: Renderer, asym_mesh) -> None:
    mesh = _prepared(asym_mesh)
    flipped = Mesh(mesh.vertices, mesh.faces[:, ::-1])
    a, b = renderer.render(mesh).astype(int), renderer.render(flipped).astype(int)
    assert np.abs(a - b).mean() < 0.2


def test_one_sided_lighting_darkens_back_faces(gl_available, small_spec, asym_mesh) -> None:
    mesh = _prepared(asym_mesh)
    inside_out = Mesh(mesh.vertices, mesh.faces[:, ::-1])
    with Renderer(replace(small_spec, two_sided=False)) as r:
        good, bad = r.render(mesh), r.render(inside_out)
    mask = _drawn(good)
    assert good[mask].mean() > bad[mask].mean() + 30


def test_large_vertex_indices_need_uint32(renderer: Renderer) -> None:
    # One big triangle whose vertices sit past index 65535: 16-bit indices would
    # wrap to the unused vertices at the origin and draw nothing.
    vertices = np.zeros((70_003, 3), dtype=np.float32)
    vertices[-3:] = [[-0.8, -0.5, 0.0], [0.8, -0.5, 0.0], [0.0, 0.8, 0.0]]
    views = renderer.render(Mesh(vertices, [[70_000, 70_001, 70_002]]))
    assert _drawn(views[0]).mean() > 0.1


def test_material_and_background_come_from_the_spec(gl_available, small_spec, asym_mesh) -> None:
    spec = replace(small_spec, background_rgb=(0.0, 0.0, 1.0), material_rgb=(1.0, 0.0, 0.0), specular=0.0)
    with Renderer(spec) as r:
        views = r.render(_prepared(asym_mesh))
    assert tuple(views[0, 0, 0]) == (0, 0, 255)
    drawn = (views != [0, 0, 255]).any(axis=-1)
    assert (views[drawn][:, 1] == 0).all() and views[drawn][:, 0].max() > 100


def test_msaa_smooths_edges(gl_available, small_spec, asym_mesh) -> None:
    mesh = _prepared(asym_mesh)
    with Renderer(replace(small_spec, samples=0)) as r:
        aliased = r.render(mesh)
    with Renderer(replace(small_spec, samples=4)) as r:
        smooth = r.render(mesh)

    def levels(views: np.ndarray) -> int:
        return len(np.unique(views[..., 0]))

    assert levels(smooth) > levels(aliased)


def test_views_other_than_twelve(gl_available, asym_mesh) -> None:
    spec = RenderSpec(views=5, azimuth_step_deg=72.0, image_size=32)
    with Renderer(spec) as r:
        views = r.render(_prepared(asym_mesh))
    assert views.shape == (5, 32, 32, 3)
    assert _drawn(views).any(axis=(1, 2)).all()


def test_closed_renderer_refuses(gl_available, small_spec, asym_mesh) -> None:
    r = Renderer(small_spec)
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError):
        r.render(_prepared(asym_mesh))


def test_missing_egl_is_a_one_line_render_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import moderngl

    def broken(**kwargs):
        raise Exception("libEGL.so not loaded\n(details)")  # what glcontext raises

    monkeypatch.setattr(moderngl, "create_standalone_context", broken)
    with pytest.raises(RenderError) as info:
        Renderer(RenderSpec(image_size=8))
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("cannot create a headless OpenGL (EGL) context: libEGL.so not loaded")
    assert "apt-get install libegl1 libgl1-mesa-dri libegl-mesa0" in msg


# --- reference render and previews ----------------------------------------------------


def test_render_reference_is_not_blank(gl_available) -> None:
    views = render_reference()
    assert views.shape == (VIEWS, IMAGE_SIZE, IMAGE_SIZE, 3)
    drawn = _drawn(views).mean()
    assert 0.05 < drawn < 0.6
    assert len(reference_mesh().faces) > 100


def test_make_preview_is_a_deterministic_png(renderer: Renderer, asym_mesh) -> None:
    views = renderer.render(_prepared(asym_mesh))
    png = make_preview(views, size=128)
    assert png.startswith(b"\x89PNG") and make_preview(views, size=128) == png
    image = Image.open(io.BytesIO(png))
    assert image.size == (128, 128) and image.mode == "RGB"
    grid = np.asarray(image).astype(int)
    # quadrants are views 0, 3, 6, 9 (0/90/180/270 degrees), downsampled by area like the view strip's
    tiles = strip_tiles(views)
    for k, view in enumerate((0, 3, 6, 9)):
        tile = np.asarray(Image.fromarray(views[view]).resize((64, 64), Image.Resampling.BOX)).astype(int)
        quad = grid[(k // 2) * 64 : (k // 2 + 1) * 64, (k % 2) * 64 : (k % 2 + 1) * 64]
        assert np.abs(quad - tile).max() == 0
        assert np.array_equal(np.asarray(tiles[view]), tile)
    # the strip's tiles given by the caller (index add resizes each view once) make the same bytes
    assert make_preview(views, size=128, tiles=tiles) == png
    assert make_preview(views, size=64, tiles=tiles) == make_preview(views, size=64)  # other size: ignored
    assert make_strip(views, tiles=tiles) == make_strip(views)


def test_make_preview_with_few_views_and_bad_input() -> None:
    views = np.full((2, 16, 16, 3), 255, dtype=np.uint8)
    views[0, 4:12, 4:12] = 0
    image = np.asarray(Image.open(io.BytesIO(make_preview(views, size=32))))
    assert image.shape == (32, 32, 3) and image[16, 16].max() < 50
    with pytest.raises(ValueError):
        make_preview(np.zeros((12, 16, 16), dtype=np.uint8))
    with pytest.raises(ValueError):
        make_preview(np.zeros((12, 16, 16, 3), dtype=np.float32))


def test_invalid_meshes_are_refused_before_gl(renderer: Renderer) -> None:
    with pytest.raises(ValueError, match="without faces"):
        renderer.render(Mesh(np.zeros((3, 3)), np.zeros((0, 3))))
    with pytest.raises(ValueError, match="does not exist"):
        renderer.render(Mesh(np.zeros((3, 3)), [[0, 1, 3]]))
