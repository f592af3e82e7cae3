"""The SH3D benchmark: photo-domain renderer, split, jar extraction, and (slow) a real small build."""

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
from ftspl.data.bench import GROUPS, BenchConfig, split_models
from ftspl.data.photo_domain import PhotoConfig, PhotoRenderer
from ftspl.data.sh3d import DEFAULT_MTL, Sh3dModel, extract_icon, extract_model
from ftspl.data.textured import TextureLoadError, load_textured_mesh

ROOT = Path(__file__).resolve().parents[1]
SIZE = 96


# ------------------------------------------------------------------ fixtures
def _textured_box(folder: Path) -> Path:
    """A box whose faces map a red|green texture (UVs per face corner), plus a half-transparent pane."""
    folder.mkdir(parents=True, exist_ok=True)
    box = trimesh.creation.box(extents=(1.0, 0.8, 0.6))
    lines = ["mtllib box.mtl", "o box"]
    lines += [f"v {x:.5f} {y:.5f} {z:.5f}" for x, y, z in box.vertices]
    lines += ["vt 0.05 0.1", "vt 0.95 0.1", "vt 0.5 0.9", "vn 0 0 1"]
    lines.append("usemtl paint")
    lines += [f"f {a + 1}/1 {b + 1}/2 {c + 1}/3" for a, b, c in box.faces]
    n = len(box.vertices)
    lines += ["o pane", "v -0.5 0.5 0.4", "v 0.5 0.5 0.4", "v 0 0.9 0.4", "usemtl glass", f"f {n + 1} {n + 2} {n + 3}"]
    (folder / "box.obj").write_text("\n".join(lines) + "\n")
    (folder / "box.mtl").write_text(
        "newmtl paint\nKd 1 1 1\nmap_Kd tex.png\n\nnewmtl glass\nKd 0.2 0.3 0.9\nd 0.3\nKs 0.5 0.5 0.5\n"
    )
    tex = np.zeros((16, 16, 3), np.uint8)
    tex[:, :8] = (230, 20, 20)  # left half red
    tex[:, 8:] = (20, 200, 20)  # right half green
    Image.fromarray(tex).save(folder / "tex.png")
    return folder / "box.obj"


def _backgrounds() -> list[Background]:
    photo = Image.new("RGB", (200, 150), (20, 40, 220))  # saturated blue: easy to find in a composite
    texture = Image.new("RGB", (120, 120), (200, 180, 40))
    return [Background("photo", "test:blue", "test", photo), Background("texture", "test:ochre", "test", texture)]


PLAIN = PhotoConfig(
    image_size=SIZE, background_mix=(("photo", 1.0),), background_blur=(0.0, 0.0), shadow_prob=0.0,
    brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, blur_prob=0.0, noise_sigma=(0.0, 0.0),
    jpeg_quality=(95, 95), front_bias=1.0, front_sigma_deg=1e-6, elevation_deg=(10.0, 10.0),
    fill=(0.8, 0.8), offset=0.0, roll_deg=0.0,
)


@pytest.fixture(scope="module")
def renderer():
    with PhotoRenderer(PhotoConfig(image_size=SIZE)) as r:
        yield r


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


# ------------------------------------------------------------- the renderer
def test_load_textured_mesh_keeps_materials(tmp_path: Path) -> None:
    mesh = load_textured_mesh(_textured_box(tmp_path / "m"))
    assert len(mesh.parts) == 2 and mesh.textured
    paint = next(p for p in mesh.parts if p.texture is not None)
    glass = next(p for p in mesh.parts if p.texture is None)
    assert paint.texture.shape[2] == 4 and paint.uvs.shape == (len(paint.positions), 2)
    assert glass.alpha == pytest.approx(0.3) and glass.specular == pytest.approx(0.5)
    allv = np.concatenate([p.positions for p in mesh.parts])
    assert np.linalg.norm(allv, axis=1).max() == pytest.approx(1.0, abs=1e-5)  # normalised


def test_load_textured_mesh_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.obj"
    bad.write_text("this is not an obj\n")
    with pytest.raises(TextureLoadError, match="bad.obj"):
        load_textured_mesh(bad)


def test_photo_is_deterministic_per_seed_and_varies_across_seeds(tmp_path: Path, renderer) -> None:
    mesh = load_textured_mesh(_textured_box(tmp_path / "m"))
    a = renderer.render(mesh, np.random.default_rng(7), _backgrounds(), n=2)
    b = renderer.render(mesh, np.random.default_rng(7), _backgrounds(), n=2)
    c = renderer.render(mesh, np.random.default_rng(8), _backgrounds(), n=2)
    assert a == b
    assert a[0] != c[0] and a[0] != a[1]  # another seed, and another photo of one draw, differ
    for data in a + c:
        img = Image.open(io.BytesIO(data))
        assert img.format == "JPEG" and img.size == (SIZE, SIZE)


def test_photo_shows_texture_on_the_background(tmp_path: Path) -> None:
    mesh = load_textured_mesh(_textured_box(tmp_path / "m"))
    with PhotoRenderer(PLAIN) as r:
        img = _decode(r.render(mesh, np.random.default_rng(0), _backgrounds())[0])
    red = (img[..., 0] > 120) & (img[..., 1] < 90) & (img[..., 2] < 90)
    green = (img[..., 1] > 110) & (img[..., 0] < 90) & (img[..., 2] < 90)
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)
    assert red.sum() > 20 and green.sum() > 20  # both halves of the texture map are visible
    assert blue[:8].mean() > 0.9 and blue[:, :6].mean() > 0.9  # the frame's edges are the background
    assert 0.1 < 1 - blue.mean() < 0.9  # and the object fills a sensible part of it


def test_photo_backgrounds_come_from_the_pool(tmp_path: Path) -> None:
    mesh = load_textured_mesh(_textured_box(tmp_path / "m"))
    cfg = replace(PLAIN, background_mix=(("texture", 1.0),))
    with PhotoRenderer(cfg) as r:
        img = _decode(r.render(mesh, np.random.default_rng(0), _backgrounds())[0])
    assert np.abs(img[:6, :6] - np.array([200, 180, 40])).max() < 30  # the ochre texture, not blue


# ---------------------------------------------------------------- the split
def _fake_models(counts: dict[str, int]) -> list[Sh3dModel]:
    out = []
    for c, n in counts.items():
        for i in range(n):
            out.append(
                Sh3dModel(source="sweethome3d-furniture:Lib.sh3f", catalog_id=len(out), name=f"{c}{i}",
                          model_path=f"lib/{c}{i}/{c}{i}.obj", icon_path=f"lib/{c}{i}.png", label=c,
                          license="CC-BY", creator="someone", faces=1000 * (i + 1))
            )
    return out


MODELS = _fake_models({"chair": 20, "table": 9, "lamp": 8, "rare": 7})


def test_split_is_disjoint_and_covers_each_class() -> None:
    groups = split_models(MODELS, BenchConfig())
    assert sorted(groups["target"]) == ["chair", "lamp", "table"]  # "rare" has < 8 models
    for c in ("chair", "table", "lamp"):
        keys = [m.key for g in GROUPS for m in groups[g][c]]
        assert len(keys) == len(set(keys)) == sum(1 for m in MODELS if m.label == c)
        assert len(groups["source"][c]) >= 2 and len(groups["queries"][c]) >= 1 and len(groups["target"][c]) >= 1
        assert all(m.label == c for g in GROUPS for m in groups[g][c])
    assert len(groups["val"]["chair"]) == 2 and len(groups["source"]["chair"]) == 6  # 8 source: 2 to val


def test_split_is_deterministic_per_seed() -> None:
    def keys(cfg):
        return {g: {c: [m.key for m in ms] for c, ms in d.items()} for g, d in split_models(MODELS, cfg).items()}

    assert keys(BenchConfig(seed=3)) == keys(BenchConfig(seed=3))
    assert keys(BenchConfig(seed=3)) != keys(BenchConfig(seed=4))
    # a class's split does not depend on the other classes
    only_chairs = [m for m in MODELS if m.label == "chair"]
    assert keys(BenchConfig(seed=3))["queries"]["chair"] == [
        m.key for m in split_models(only_chairs, BenchConfig(seed=3))["queries"]["chair"]
    ]


def test_split_caps_and_filters() -> None:
    groups = split_models(MODELS, BenchConfig(max_per_class=8, max_classes=2, val=0.0, max_faces=20_000))
    assert sorted(groups["target"]) == ["chair", "table"]
    assert sum(len(groups[g]["chair"]) for g in GROUPS) == 8
    assert all(m.faces <= 20_000 for g in GROUPS for ms in groups[g].values() for m in ms)
    assert not any(groups["val"].values())


def test_bad_config_is_a_usage_error() -> None:
    from ftspl.engine.errors import UsageError

    with pytest.raises(UsageError, match="queries"):
        split_models(MODELS, BenchConfig(source=0.7, queries=0.4))


# ---------------------------------------------------------- jar extraction
def test_jar_model_gets_the_builtin_materials(tmp_path: Path) -> None:
    libdir = tmp_path / "sweethome3d" / "furniture"
    libdir.mkdir(parents=True)
    mtl = b"newmtl white\nKd 1 1 1\nnewmtl red\nKd 0.9 0.1 0.1\n"
    fake_class = b"\xca\xfe\xba\xbe\x00\x01" + b"\x01" + len(mtl).to_bytes(2, "big") + mtl + b"\x01\x00\x02ok"
    with zipfile.ZipFile(libdir.parent / "sweethome3d.jar", "w") as zf:
        zf.writestr("com/eteks/sweethome3d/j3d/OBJLoader.class", fake_class)
        zf.writestr("res/stool.obj", "g seat\nusemtl red\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
        zf.writestr("res/stool.png", b"\x89PNG-icon")
        zf.writestr("res/other.obj", "v 0 0 0\n")  # same folder, another model: must not be copied
    model = Sh3dModel(source="sweethome3d:DefaultFurnitureCatalog", catalog_id=5, name="Stool",
                      model_path="res/stool.obj", icon_path="res/stool.png", label="stool",
                      license="GPL / CC-BY", creator="eTeks", faces=1)
    obj = extract_model(libdir, model, tmp_path / "out")
    assert sorted(p.name for p in obj.parent.iterdir()) == sorted([DEFAULT_MTL, "stool.obj"])
    assert obj.read_text().startswith(f"mtllib {DEFAULT_MTL}\n")
    assert (obj.parent / DEFAULT_MTL).read_bytes() == mtl
    mesh = load_textured_mesh(obj)
    assert mesh.parts[0].color == pytest.approx((0.9, 0.1, 0.1), abs=0.01)
    assert extract_icon(libdir, model, tmp_path / "icon.png").read_bytes() == b"\x89PNG-icon"


# ------------------------------------------------------ the real benchmark
@pytest.mark.slow
def test_small_benchmark_builds_from_debian(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftspl.cli.data_cmd import data_app
    from ftspl.data.backgrounds import fetch_backgrounds
    from ftspl.data.bench import BENCH_PRESETS, _render_model
    from ftspl.data.sh3d import all_models, fetch_sources
    from ftspl.engine.home import Home

    cache = Home.resolve(cwd=ROOT).debian_cache
    out = tmp_path / "bench"
    res = CliRunner().invoke(data_app, ["sh3d", "--out", str(out), "--small", "--seed", "1", "--cache", str(cache), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(summary["classes"]) >= 15 and manifest["seed"] == 1 and not manifest["failed"]
    assert manifest["packages"]["sweethome3d-furniture"] and manifest["packages"]["sweethome3d"]
    # files on disk match the manifest's split, and no model is in two groups
    seen: dict[str, str] = {}
    for g in GROUPS:
        for c, keys in manifest["groups"][g].items():
            for k in keys:
                assert k not in seen, f"{k} in {seen.get(k)} and {g}"
                seen[k] = g
                if g == "target":
                    assert any((out / g / c / k).glob("*.obj"))
                else:
                    assert (out / g / c / f"{k}__icon.png").is_file()
                    assert len(list((out / g / c).glob(f"{k}__r*.jpg"))) == 2
    assert summary["photos"]["queries"] == 3 * summary["models"]["queries"]
    # the tuning gallery holds exactly the source models' meshes; every folder and the seed carry a role
    for c, keys in manifest["groups"]["source"].items():
        assert sorted(p.name for p in (out / "val_gallery" / c).iterdir()) == sorted(keys)
        assert all(any((out / "val_gallery" / c / k).glob("*.obj")) for k in keys)
    assert manifest["seed_role"] == summary["seed_role"] == "tune"  # seed 1
    assert {k: v["role"] for k, v in manifest["splits"].items()} == {
        "source": "train", "val": "tune", "val_gallery": "tune", "queries": "report", "target": "report"}
    notice = (out / "NOTICE.txt").read_text()
    used = [m for m in all_models() if m.key in seen]
    assert all(m.creator in notice for m in used if m.creator)
    # one model's photos are reproducible from (seed, model) alone
    key = manifest["groups"]["queries"][summary["classes"][0]][0]
    model = next(m for m in used if m.key == key)
    backgrounds, _ = fetch_backgrounds(cache)
    cfg = replace(BENCH_PRESETS["small"], seed=1)
    with PhotoRenderer(replace(cfg.photo, image_size=cfg.image_size)) as r:
        again = _render_model(r, fetch_sources(cache), model, cfg, backgrounds)
    assert again[0] == (out / "queries" / model.label / f"{key}__r0.jpg").read_bytes()
