"""Scene photos: catalogue sizes, room layouts, the scene renderer, split rules, the build and the CLI flag."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ftspl.data.backgrounds import Background
from ftspl.data.bench import BenchConfig, _config_record, _link_from
from ftspl.data.catalogue import CatalogueSize, Texture, catalogue_sizes, parse_properties
from ftspl.data.protocol import check_use, manifest_record
from ftspl.data.room import SUPPORTS, Candidate, Layout, Placed, SceneConfig, overlap, plan_room
from ftspl.data.scene_build import rule_breaks
from ftspl.data.sh3d import Sh3dModel
from ftspl.data.textured import Part, TexturedMesh
from ftspl.data.variety import apply_variety
from ftspl.engine.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]

# label -> (width, height, depth, drop_on_top): a furnished home's worth of classes
_SIZES = {
    "chair": (0.5, 0.9, 0.55, None), "table": (1.4, 0.75, 0.8, 0.75), "sofa": (2.0, 0.85, 0.9, None),
    "lamp": (0.4, 1.6, 0.4, None), "bottle": (0.1, 0.3, 0.1, None), "cabinet": (1.0, 0.9, 0.5, 0.9),
    "flower_pot": (0.4, 0.5, 0.4, None), "stool": (0.4, 0.6, 0.4, 0.6), "bookshelf": (0.9, 1.9, 0.35, None),
    "person": (0.5, 1.7, 0.3, None),
}


def _candidates(n_per_class: int = 3) -> list[Candidate]:
    return [Candidate(f"{label}-{i}", label, CatalogueSize(w, h, d, drop_on_top=drop))
            for label, (w, h, d, drop) in _SIZES.items() for i in range(n_per_class)]


def _supports(cands: list[Candidate]) -> list[Candidate]:
    return [c for c in cands if c.size.drop_on_top]


# ------------------------------------------------------------------------- catalogue
def test_parse_properties_reads_continuations_escapes_and_comments() -> None:
    text = "# comment\n! also\nname#1=Caf\\u00e9 chair\nwidth#1 = 45.5\nmodelRotation#1=0 0 1 \\\n  0 1 0 -1 0 0\n"
    props = parse_properties(text)
    assert props == {"name#1": "Café chair", "width#1": "45.5", "modelRotation#1": "0 0 1 0 1 0 -1 0 0"}


def test_catalogue_sizes_come_from_the_library_entry(tmp_path: Path) -> None:
    libdir = tmp_path / "furniture"
    libdir.mkdir()
    props = ("id#1=x\nmodel#1=/lib/chair/chair.obj\nwidth#1=50\ndepth#1=60\nheight#1=90\nelevation#1=10\n"
             "dropOnTopElevation#1=45\nmodelRotation#1=0 0 1 0 1 0 -1 0 0\n"
             "model#2=/lib/other/other.obj\nwidth#2=10\ndepth#2=10\nheight#2=10\n"
             "model#3=/lib/win/win.obj\nwidth#3=100\ndepth#3=20\nheight#3=120\ndoorOrWindow#3=true\n")
    with zipfile.ZipFile(libdir / "Lib.sh3f", "w") as zf:
        zf.writestr("PluginFurnitureCatalog.properties", props)

    def model(n: int, path: str) -> Sh3dModel:
        return Sh3dModel("sweethome3d-furniture:Lib.sh3f", n, "m", path, "", "chair", "", "", 10)

    chair, wrong, window = model(1, "lib/chair/chair.obj"), model(2, "lib/moved/x.obj"), model(3, "lib/win/win.obj")
    sizes = catalogue_sizes(libdir, [chair, wrong, window])
    assert set(sizes) == {chair.key, window.key}  # an entry naming another OBJ is left out
    s = sizes[chair.key]
    assert (s.width, s.height, s.depth, s.elevation, s.drop_on_top) == pytest.approx((0.5, 0.9, 0.6, 0.1, 0.45))
    assert np.allclose(s.rotation_matrix(), [[0, 0, 1], [0, 1, 0], [-1, 0, 0]])
    assert sizes[window.key].door_or_window and sizes[window.key].rotation is None


# --------------------------------------------------------------------------- layouts
def _layout_state(lay: Layout) -> list:
    return [(p.key, round(p.x, 9), round(p.z, 9), round(p.yaw, 9), round(p.y, 9), p.on) for p in lay.items]


def test_room_layout_is_deterministic_and_physically_sound() -> None:
    cands = _candidates()
    n_others = []
    for seed in range(40):
        main = cands[seed % len(cands)]
        lay = plan_room(main, cands, _supports(cands), np.random.default_rng(seed))
        again = plan_room(main, cands, _supports(cands), np.random.default_rng(seed))
        assert _layout_state(lay) == _layout_state(again) and np.allclose(lay.eye, again.eye)
        keys = lay.keys()
        assert keys[0] == main.key and len(set(keys)) == len(keys)  # each model once
        assert all(p.label != main.label for p in lay.items[1:])  # the others are of other classes
        assert lay.x0 < lay.eye[0] < lay.x1 and lay.z0 < lay.eye[2] < lay.z1 and 0 < lay.eye[1] < lay.height
        floor = [p for p in lay.items if p.on is None]
        for i, a in enumerate(floor):
            c = a.corners()
            assert lay.x0 - 1e-6 <= c[:, 0].min() and c[:, 0].max() <= lay.x1 + 1e-6
            assert lay.z0 - 1e-6 <= c[:, 1].min() and c[:, 1].max() <= lay.z1 + 1e-6
            assert all(not overlap(c, b.corners()) for b in floor[i + 1:])
            assert a.top < lay.height
        for p in lay.items:
            if p.on is not None:  # on top of its host, at the height things rest on it
                host = lay.items[p.on]
                assert p.y == pytest.approx(host.y + host.size.drop_on_top) and host.label in SUPPORTS
        n_others.append(len(lay.items) - 1 - (lay.main.on is not None))
    assert max(n_others) <= 6 and np.mean(n_others) >= 2


def test_a_small_main_model_stands_on_a_support() -> None:
    cands = _candidates()
    bottle = next(c for c in cands if c.label == "bottle")
    lay = plan_room(bottle, cands, _supports(cands), np.random.default_rng(3), SceneConfig(on_top_prob=1.0))
    support = lay.items[lay.main.on]
    assert support.role == "support" and support.label != "bottle"
    assert lay.main.y == pytest.approx(support.size.drop_on_top) and lay.floor_main is support
    assert lay.target[1] > support.size.drop_on_top  # the camera aims at the bottle, not the table


def test_dropping_a_model_takes_what_stands_on_it() -> None:
    s = CatalogueSize(1, 1, 1, drop_on_top=1.0)
    items = [Placed("m", "chair", s, "main"), Placed("t", "table", s, "front"), Placed("b", "bottle", s, "on_top", on=1),
             Placed("l", "lamp", s, "beside"), Placed("v", "vase", s, "on_top", on=3)]
    lay = Layout(0, 5, 0, 5, 3, items)
    lay.drop({1, 0})  # the main model never goes
    assert lay.keys() == ["m", "l", "v"] and lay.items[2].on == 1


# ----------------------------------------------------------------------- split rules
def test_rule_breaks_finds_models_outside_their_split() -> None:
    groups = {"source": {"chair": ["s1", "s2"], "table": ["s3"]}, "val": {"chair": ["v1"]},
              "queries": {"chair": ["q1"]}, "target": {"chair": ["t1"]}}
    ok = {"source/chair/s1__scene0.jpg": {"models": ["s1", "s3"]},
          "val_scenes/chair/v1__scene0.jpg": {"models": ["v1", "s2", "s3"]}}
    assert rule_breaks(ok, groups) == []
    bad = {"source/chair/s1__scene0.jpg": {"models": ["s1", "t1"]},  # a target model in training
           "source/chair/s2__scene0.jpg": {"models": ["s2", "v1"]},  # a val model in training
           "val_scenes/chair/v1__scene0.jpg": {"models": ["v1", "q1"]},  # a query model beside a val one
           "val_scenes/chair/s1__scene0.jpg": {"models": ["s1"]}}  # a source model as a val scene's main
    assert [b.split(":")[0] for b in rule_breaks(bad, groups)] == sorted(bad)


def test_scene_settings_are_checked_and_recorded_only_when_asked() -> None:
    with pytest.raises(UsageError, match="source_scenes and val_scenes must be >= 0"):
        BenchConfig(source_scenes=-1).check()
    with pytest.raises(UsageError, match="val_scenes needs val models"):
        BenchConfig(val_scenes=2, val=0.0).check()
    assert not {"source_scenes", "val_scenes", "scene"} & set(_config_record(BenchConfig()))
    rec = _config_record(apply_variety(BenchConfig(), "scenes"))
    assert rec["source_scenes"] == 4 and rec["val_scenes"] == 0 and rec["scene"]["others"] == [2, 6]
    assert apply_variety(BenchConfig(), "scenes").photo_for("source") == BenchConfig().photo_for("source")


def test_scene_photos_are_never_linked_from_an_earlier_build(tmp_path: Path) -> None:
    base = tmp_path / "base"
    for g in ("source", "val", "queries", "target", "val_gallery", "val_scenes"):
        (base / g / "chair").mkdir(parents=True)
        (base / g / "chair" / "m__r0.jpg").write_bytes(b"r")
        (base / g / "chair" / "m__scene0.jpg").write_bytes(b"s")
    cfg = replace(BenchConfig(seed=1), source_scenes=2, val_scenes=2)
    (base / "manifest.json").write_text(json.dumps({"config": _config_record(cfg)}))
    out = tmp_path / "out"
    assert _link_from(base, out, BenchConfig(seed=1)) == ["val", "queries", "target", "val_gallery", "source"]
    assert (out / "source" / "chair" / "m__r0.jpg").exists() and not list(out.rglob("*__scene*"))
    assert not (out / "val_scenes").exists()


def test_val_scenes_is_a_tuning_split_only_where_built(tmp_path: Path) -> None:
    for name, scenes in (("with", True), ("without", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"seed": 0, **manifest_record(0, scenes=scenes)}))
    check_use(tmp_path / "with", "tune", "val_scenes")
    with pytest.raises(UsageError, match="cannot be used to report"):
        check_use(tmp_path / "with", "report", "val_scenes")
    with pytest.raises(UsageError, match="val_scenes.*--scenes"):
        check_use(tmp_path / "without", "tune", "val_scenes")


# --------------------------------------------------------------------------- rendering
def _box_mesh(color: tuple[float, float, float]) -> TexturedMesh:
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    v = np.asarray(box.vertices, np.float32)[np.asarray(box.faces).ravel()]
    faces = np.arange(len(v), dtype=np.uint32).reshape(-1, 3)
    part = Part(positions=v, normals=np.zeros_like(v), uvs=np.zeros((len(v), 2), np.float32), faces=faces,
                color=color, alpha=1.0, texture=None, specular=0.1, shininess=10.0)
    return TexturedMesh([part])


def _room_inputs() -> tuple[list[Background], list[Texture]]:
    pool = [Background("photo", "mate-backgrounds:sky.jpg", "t", Image.new("RGB", (64, 64), (120, 180, 250)))]
    textures = [Texture("oak", "Floor", Image.new("RGB", (16, 16), (150, 110, 70)), 0.4, 0.4),
                Texture("bricks", "Wall", Image.new("RGB", (16, 16), (170, 90, 70)), 0.3, 0.2)]
    return pool, textures


def test_placed_parts_keep_the_catalogue_size_and_stand_on_the_floor() -> None:
    from ftspl.data.scenes import placed_parts

    p = Placed("m", "table", CatalogueSize(1.5, 0.75, 0.8), "main", x=2.0, z=1.0, yaw=np.pi / 2, y=0.1)
    pos = placed_parts(_box_mesh((1, 0, 0)), p)[0].positions
    ext = pos.max(0) - pos.min(0)
    assert ext == pytest.approx([0.8, 0.75, 1.5], abs=1e-5)  # turned 90 degrees: depth along X
    assert pos[:, 1].min() == pytest.approx(0.1) and pos[:, [0, 2]].mean(0) == pytest.approx([2.0, 1.0], abs=1e-5)


def test_scene_render_is_deterministic_and_leaves_out_what_hides_the_main_model(gl_available) -> None:
    from ftspl.data.photo_domain import PhotoConfig
    from ftspl.data.scenes import SceneRenderer

    chair = CatalogueSize(0.6, 0.9, 0.6)

    def layout() -> Layout:
        items = [Placed("main", "chair", chair, "main", x=0.0, z=0.5),
                 Placed("wall", "sofa", CatalogueSize(2.0, 2.0, 0.3), "front", x=0.0, z=2.0),  # a screen before it
                 Placed("side", "lamp", CatalogueSize(0.3, 1.5, 0.3), "beside", x=1.4, z=0.5)]
        lay = Layout(-2.5, 2.5, 0.0, 5.0, 2.6, items, eye=np.array([0.0, 1.3, 3.8]),
                     target=items[0].centre, fov=55.0)
        lay.light_dir = np.array([0.3, 0.8, 0.5]) / np.linalg.norm([0.3, 0.8, 0.5])
        return lay

    meshes = {"main": _box_mesh((0.9, 0.1, 0.1)), "wall": _box_mesh((0.1, 0.1, 0.9)), "side": _box_mesh((0.1, 0.8, 0.1))}
    pool, textures = _room_inputs()
    photo = PhotoConfig(image_size=64)
    with SceneRenderer(photo) as r:
        outs = []
        for _ in range(2):
            lay = layout()
            outs.append((r.render_scene(lay, meshes, np.random.default_rng(4), pool, textures, photo), lay.keys()))
        shown = layout()
        shown.items[1].x = 2.0  # out of the way: nothing to leave out
        kept = r.render_scene(shown, meshes, np.random.default_rng(4), pool, textures, photo)
    (a, keys_a), (b, keys_b) = outs
    assert a == b and keys_a == keys_b == ["main", "side"]  # the screen hid the chair: left out
    assert shown.keys() == ["main", "wall", "side"] and kept != a
    img = np.asarray(Image.open(io.BytesIO(a)).convert("RGB")).astype(int)
    red = (img[..., 0] > 120) & (img[..., 1] < 80) & (img[..., 2] < 80)
    assert red.sum() > 20  # the main model shows


# ------------------------------------------------------------- the real build, the CLI flag
@pytest.mark.slow
def test_tiny_scene_build_keeps_the_split_rules_and_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from ftspl.cli.data_cmd import data_app
    from ftspl.data import bench
    from ftspl.engine.home import Home

    tiny = BenchConfig(renders=1, icons=False, max_classes=3, max_per_class=8, max_faces=20_000,
                       scene=SceneConfig(others=(2, 3)))
    monkeypatch.setitem(bench.BENCH_PRESETS, "small", tiny)
    cache = Home.resolve(cwd=ROOT).debian_cache
    out = tmp_path / "bench"
    argv = ["sh3d", "--out", str(out), "--small", "--scenes", "--variety", "scenes", "--cache", str(cache), "--json"]
    res = CliRunner().invoke(data_app, argv)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["splits"]["val_scenes"] == manifest["splits"]["val_scenes"]["role"] == "tune"
    counts = manifest["counts"]
    assert manifest["photos"]["val_scenes"] == 4 * counts["val"] and not manifest["failed"]
    assert manifest["photos"]["source"] == counts["source"] * (1 + 4)  # one render and four scenes each
    record = json.loads((out / "scenes.json").read_text())["photos"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*__scene*.jpg"))
    assert files == sorted(record) and len(files) == 4 * (counts["source"] + counts["val"])
    held_out = {k for g in ("queries", "target") for ks in manifest["groups"][g].values() for k in ks}
    val = {k for ks in manifest["groups"]["val"].values() for k in ks}
    for rel, rec in record.items():
        assert not held_out & set(rec["models"]), rel  # a query or target model is in no scene
        if rel.startswith("source/"):
            assert not val & set(rec["models"]), rel
        assert len(rec["models"]) >= 1 and rec["classes"][0] == rel.split("/")[1]
    assert rule_breaks(record, manifest["groups"]) == []
    check_use(out, "tune", "val_scenes")
    # resumable and deterministic: a removed photo comes back byte for byte
    victim = out / files[0]
    before = victim.read_bytes()
    victim.unlink()
    assert CliRunner().invoke(data_app, argv).exit_code == 0
    assert victim.read_bytes() == before
