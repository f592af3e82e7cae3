"""Photo-domain variety: presets, the knobs' effects, unchanged defaults, linking an earlier build."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_data_bench import PLAIN, SIZE, _backgrounds, _decode, _textured_box

from ftspl.data.backgrounds import Background
from ftspl.data.bench import BenchConfig, _config_record, _link_from
from ftspl.data.photo_domain import PhotoConfig, PhotoRenderer
from ftspl.data.textured import load_textured_mesh
from ftspl.data.variety import (
    PHOTO_VARIETY,
    VARIETY_FIELDS,
    apply_variety,
    colour_matrix,
    composite_occluders,
    downscale_upscale,
    motion_blur,
    vignette,
    white_balance,
)
from ftspl.engine.errors import UnknownKeyError, UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    return load_textured_mesh(_textured_box(tmp_path_factory.mktemp("m")))


# ------------------------------------------------------------------ presets
def test_unknown_variety_lists_the_valid_names() -> None:
    with pytest.raises(UnknownKeyError, match="valid: all, base, camera, clutter, materials, more_renders"):
        apply_variety(BenchConfig(), "fog")


def test_variety_changes_the_source_photos_only() -> None:
    base = BenchConfig(seed=3)
    assert apply_variety(base, "base") == base
    more = apply_variety(base, "more_renders")
    assert more.photo_for("source")[1] == 8 and more.photo_for("val")[1] == more.photo_for("queries")[1] == 4
    cam = apply_variety(base, "all")
    src, val = cam.photo_for("source")[0], cam.photo_for("val")[0]
    assert src.clutter == (0, 3) and src.material_prob > 0 and src.lowres_prob > 0
    assert val == replace(base.photo, image_size=base.image_size)  # val/queries keep the base settings


def test_default_manifest_record_is_unchanged() -> None:
    """Default builds keep the manifest of before the knobs, so no existing build is rebuilt."""
    rec = _config_record(BenchConfig())
    assert "source_photo" not in rec and "source_renders" not in rec
    assert not set(VARIETY_FIELDS) & set(rec["photo"])
    var = _config_record(apply_variety(BenchConfig(), "clutter"))
    assert var["source_photo"]["clutter"] == [0, 3] and "material_prob" not in var["source_photo"]


# ---------------------------------------------------------------- rendering
def test_default_knobs_draw_nothing(box) -> None:
    """A per-call config equal to the renderer's gives the same bytes from the same generator."""
    with PhotoRenderer(PhotoConfig(image_size=SIZE)) as r:
        a = r.render(box, np.random.default_rng(5), _backgrounds(), n=2)
        b = r.render(box, np.random.default_rng(5), _backgrounds(), n=2, cfg=PhotoConfig(image_size=SIZE))
    assert a == b


@pytest.mark.parametrize("name", ["clutter", "materials", "camera"])
def test_each_variety_is_deterministic_and_changes_the_photo(box, name) -> None:
    cfg = replace(PhotoConfig(image_size=SIZE), **PHOTO_VARIETY[name]["photo"])
    with PhotoRenderer(PhotoConfig(image_size=SIZE)) as r:
        cut = r.cutouts(box, np.random.default_rng(1), 1)
        a = r.render(box, np.random.default_rng(9), _backgrounds(), n=3, cfg=cfg, cutouts=cut)
        b = r.render(box, np.random.default_rng(9), _backgrounds(), n=3, cfg=cfg, cutouts=cut)
        base = r.render(box, np.random.default_rng(9), _backgrounds(), n=3)
    assert a == b and a != base


def test_per_call_config_must_keep_the_framebuffer_size(box) -> None:
    with PhotoRenderer(PhotoConfig(image_size=SIZE)) as r, pytest.raises(ValueError, match="image_size"):
        r.render(box, np.random.default_rng(0), _backgrounds(), cfg=PhotoConfig(image_size=SIZE * 2))


def test_material_variation_recolours_the_texture(box) -> None:
    """Saturation 0.01 on every part: the red|green texture turns grey, the object stays in view."""
    grey = replace(PLAIN, material_prob=1.0, material_hue=0.0, material_saturation=(0.01, 0.01),
                   material_albedo=(1.0, 1.0))
    with PhotoRenderer(PLAIN) as r:
        plain = _decode(r.render(box, np.random.default_rng(0), _backgrounds())[0])
        img = _decode(r.render(box, np.random.default_rng(0), _backgrounds(), cfg=grey)[0])
    red = lambda im: ((im[..., 0] > 120) & (im[..., 1] < 90) & (im[..., 2] < 90)).sum()
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)
    assert red(plain) > 20 and red(img) == 0
    assert 0.1 < 1 - blue.mean() < 0.9


def test_colour_matrix_rotates_hue_about_grey() -> None:
    assert np.allclose(colour_matrix(0.0, 1.0, 1.0), np.eye(3))
    assert np.allclose(colour_matrix(1 / 3, 1.0, 1.0) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-9)
    assert np.allclose(colour_matrix(0.2, 0.5, 0.8) @ [0.5, 0.5, 0.5], [0.4, 0.4, 0.4])  # grey stays grey
    assert np.allclose(colour_matrix(0.0, 0.0, 1.0) @ [1.0, 0.0, 0.0], [0.299] * 3)


def test_catalogue_clutter_appears_in_the_photo(box) -> None:
    magenta = np.zeros((40, 30, 4), np.float32)
    magenta[..., [0, 2, 3]] = 1.0
    cfg = replace(PLAIN, clutter=(2, 2), clutter_object=1.0, clutter_front=1.0, clutter_max_cover=1.0)
    with PhotoRenderer(PLAIN) as r:
        img = _decode(r.render(box, np.random.default_rng(0), _backgrounds(), cfg=cfg, cutouts=[magenta])[0])
        plain = _decode(r.render(box, np.random.default_rng(0), _backgrounds())[0])
    is_magenta = lambda im: ((im[..., 0] > 180) & (im[..., 2] > 180) & (im[..., 1] < 80)).sum()
    assert is_magenta(plain) == 0 and is_magenta(img) > 50


def test_occluders_in_front_hide_at_most_the_cap() -> None:
    size = 64
    yy, xx = np.mgrid[0:size, 0:size]
    alpha = (((yy - 32) ** 2 + (xx - 32) ** 2) < 15**2).astype(np.float32)[..., None]
    pool = [Background("photo", "t:red", "t", Image.new("RGB", (80, 80), (255, 0, 0)))]
    cfg = replace(PhotoConfig(), clutter_front=1.0, clutter_object=0.0, clutter_max_cover=0.25)
    covers = []
    for seed in range(12):
        bg, front = composite_occluders(np.zeros((size, size, 3), np.float32), alpha, np.random.default_rng(seed),
                                        replace(cfg, clutter=(2, 2)), pool, [])
        assert not bg.any()  # nothing was placed behind
        for occ, y, x in front:
            layer = np.zeros((size, size, 1), np.float32)
            ys, xs = slice(max(y, 0), min(y + occ.shape[0], size)), slice(max(x, 0), min(x + occ.shape[1], size))
            layer[ys, xs] = occ[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x, 3:]
            covers.append(float((layer * alpha).sum() / alpha.sum()))
    assert covers and max(covers) <= 0.25 + 1e-6 and max(covers) > 0.02  # partial occlusion, capped


# ------------------------------------------------------------ lens and sensor
def test_lens_and_sensor_effects() -> None:
    flat = np.full((32, 32, 3), 0.5, np.float32)
    v = vignette(flat, 0.5)
    assert v[0, 0, 0] < 0.3 and v[16, 16, 0] > 0.49
    wb = white_balance(flat, np.random.default_rng(0), 0.1)
    assert np.all(wb[..., 1] == 0.5) and np.all(np.abs(wb[..., [0, 2]] - 0.5) <= 0.05 + 1e-6)
    dot = np.zeros((32, 32, 3), np.float32)
    dot[16, 16] = 255.0
    for seed in range(4):  # whatever the direction, a point becomes a streak of the same energy
        streak = motion_blur(dot, np.random.default_rng(seed), (6.0, 6.0))
        assert streak[16, 16, 0] < 100 and (streak[..., 0] > 0).sum() >= 5 and np.isclose(streak.sum(), dot.sum())
    assert np.allclose(motion_blur(flat, np.random.default_rng(1), (5.0, 5.0)), 0.5)
    checker = Image.fromarray(((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)).convert("RGB")
    small = np.asarray(downscale_upscale(checker, np.random.default_rng(0), (0.5, 0.5)), float)
    assert small.shape == (64, 64, 3) and small.std() < 0.2 * np.asarray(checker, float).std()


# ------------------------------------------------------------------ linking
def _fake_build(root: Path, cfg: BenchConfig) -> None:
    for g in ("source", "val", "queries", "target", "val_gallery"):
        (root / g / "chair").mkdir(parents=True)
        (root / g / "chair" / f"{g}.jpg").write_bytes(g.encode())
    (root / "manifest.json").write_text(json.dumps({"config": _config_record(cfg)}))


def test_link_from_an_earlier_build(tmp_path: Path) -> None:
    base = BenchConfig(seed=1)
    _fake_build(tmp_path / "base", base)
    out = tmp_path / "clutter"
    linked = ["val", "queries", "target", "val_gallery"]
    assert _link_from(tmp_path / "base", out, apply_variety(base, "clutter")) == linked
    assert os.path.samefile(out / "val" / "chair" / "val.jpg", tmp_path / "base" / "val" / "chair" / "val.jpg")
    assert os.path.samefile(out / "val_gallery" / "chair" / "val_gallery.jpg",
                            tmp_path / "base" / "val_gallery" / "chair" / "val_gallery.jpg")
    assert not (out / "source").exists()  # the source photos are the variety's own
    same = tmp_path / "same"
    assert "source" in _link_from(tmp_path / "base", same, base)
    with pytest.raises(UsageError, match="another split"):
        _link_from(tmp_path / "base", tmp_path / "other", BenchConfig(seed=2))
    with pytest.raises(UsageError, match="not a finished benchmark build"):
        _link_from(tmp_path / "nothing", tmp_path / "x", base)


def test_cli_rejects_an_unknown_variety(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ftspl.cli.data_cmd import data_app

    res = CliRunner().invoke(data_app, ["sh3d", "--out", str(tmp_path / "b"), "--variety", "fog"])
    assert res.exit_code == 2 and "valid: all, base, camera" in res.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("flags, preset", [([], "full"), (["--small"], "small"), (["--variety", "base"], None)])
def test_cli_builds_the_presets_default_variety_unless_told(tmp_path: Path, monkeypatch, flags, preset) -> None:
    """``ftspl data sh3d`` gives the source photos DEFAULT_VARIETY of its preset; ``--variety`` overrides it."""
    from typer.testing import CliRunner

    import ftspl.data.bench as bench
    from ftspl.cli.data_cmd import data_app
    from ftspl.data.variety import DEFAULT_VARIETY

    seen = {}

    def fake_build(out, cache, cfg, progress=None, link_from=None):
        seen["cfg"] = cfg
        raise UsageError("stopped by the test")

    monkeypatch.setattr(bench, "build_sh3d_benchmark", fake_build)
    res = CliRunner().invoke(data_app, ["sh3d", "--out", str(tmp_path / "b"), "--cache", str(tmp_path), *flags])
    assert res.exit_code == 2 and "stopped by the test" in res.output
    base = replace(bench.BENCH_PRESETS[preset or "full"], seed=0)
    assert seen["cfg"] == apply_variety(base, DEFAULT_VARIETY[preset] if preset else "base")


def test_jpeg_of_every_variety_decodes(box) -> None:
    cfg = replace(PhotoConfig(image_size=SIZE), **PHOTO_VARIETY["all"]["photo"])
    with PhotoRenderer(PhotoConfig(image_size=SIZE)) as r:
        for data in r.render(box, np.random.default_rng(4), _backgrounds(), n=4, cfg=cfg):
            assert Image.open(io.BytesIO(data)).size == (SIZE, SIZE)


# ------------------------------------------------------- benchmarks/photo_variety.py
def _study_module():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import photo_variety
    import studylib
    import varietylib

    return photo_variety, studylib, varietylib


def _record(row: str, seed: int, purpose: str, ft: float) -> dict:
    metrics = {"NN": ft + 0.1, "FT": ft, "ST": ft + 0.2, "F": 0.3, "DCG": ft, "ANMRR": 1 - ft, "AUC": 0.5}
    per = {m: [ft, ft] for m in ("NN", "FT", "ST", "DCG")}
    per["ANMRR"] = [1 - ft, 1 - ft]
    return {"row": row, "seed": seed, "purpose": purpose, "metrics": metrics, "per_query": per,
            "query_groups": ["m1", "m2"], "n_query": 2, "n_gallery": 3, "seconds": 1.0}


@pytest.mark.parametrize("argv, message", [(["--seeds", "5"], "--seeds: 5 are not tuning seeds"),
                                           (["--report-seeds", "1"], "--report-seeds: 1 are not report seeds")])
def test_photo_variety_refuses_a_seed_of_the_other_role(argv, message) -> None:
    photo_variety, _, _ = _study_module()
    with pytest.raises(SystemExit, match=message):
        photo_variety.main(argv)


def test_photo_variety_rule_picks_the_best_variety_but_base_and_breaks_ties_by_nn() -> None:
    photo_variety, _, _ = _study_module()
    mean = lambda ft, nn: {"mean": {"FT": [ft, 0.0], "NN": [nn, 0.0]}}  # noqa: E731
    val = {"base": {"FTSPL": mean(0.9, 0.9)}, "clutter": {"FTSPL": mean(0.6, 0.5)},
           "camera": {"FTSPL": mean(0.6004, 0.4)}, "materials": {"FTSPL": mean(0.5, 0.9)}}
    assert photo_variety.choose(val, "FTSPL", list(PHOTO_VARIETY)) == "clutter"  # tie on FT, higher NN
    assert photo_variety.choose({"base": val["base"]}, "FTSPL", list(PHOTO_VARIETY)) == "none"


def test_photo_variety_chooses_on_tuning_seeds_and_reports_on_report_seeds(tmp_path: Path, monkeypatch) -> None:
    """Every val / val_hard cell is purpose tune on a tuning seed; only base and the chosen variety are
    reported, purpose report, on the report seeds; the result file says what ran."""
    import argparse
    photo_variety, studylib, varietylib = _study_module()
    ft = {"base": 0.5, "clutter": 0.55, "camera": 0.52}

    def fake_build(variety, seed, data_root, link):
        root = tmp_path / f"{variety}-s{seed}"
        return SimpleNamespace(root=root, source=root / "source", val=root / "val", val_gallery=root / "val_gallery",
                               queries=root / "queries", target=root / "target", classes=["a"], counts={},
                               photos={"source": 4}, failed={})

    calls = []

    def fake_run_cell(row, split, purpose, fields, work):
        calls.append((purpose, split.seed, split.root.name.split("-")[0], row))
        return _record(row, split.seed, purpose, ft[split.root.name.split("-")[0]])

    def fake_hard(row, split, purpose, fields, work, photos, tag):
        calls.append((f"{purpose}:{tag}", split.seed, split.root.name.split("-")[0], row))
        return _record(row, split.seed, purpose, ft[split.root.name.split("-")[0]] - 0.1)

    monkeypatch.setattr(varietylib, "build_variety", fake_build)
    monkeypatch.setattr(varietylib, "build_hard_val", lambda seed, root, base: tmp_path / f"hard{seed}")
    monkeypatch.setattr(varietylib, "digest", lambda folder: "same")
    monkeypatch.setattr(varietylib, "score_trained_cell", fake_hard)
    monkeypatch.setattr(studylib, "run_cell", fake_run_cell)
    out = tmp_path / "pv.json"
    args = argparse.Namespace(data_root=tmp_path, study_data=tmp_path, work=tmp_path / "w", out=out, no_hard_val=False,
                              queries="auto", json=True)
    assert photo_variety.run_study(args, ["--seeds", "0,1"], ["base", "clutter", "camera"], [0, 1], [5, 6],
                                   ["source_only", "FTSPL"]) == 0
    tuned = {(p, s) for p, s, _, _ in calls if p.startswith("tune")}
    assert tuned == {("tune", 0), ("tune", 1), ("tune:val_hard", 0), ("tune:val_hard", 1)}
    reported = {(s, v) for p, s, v, _ in calls if p == "report"}
    assert reported == {(5, "base"), (5, "clutter"), (6, "base"), (6, "clutter")}
    res = json.loads(out.read_text())
    assert res["chosen_on_val"] == "clutter" and res["command"] == "python benchmarks/photo_variety.py --seeds 0,1"
    assert res["config"]["seeds"] == [0, 1] and res["config"]["report_seeds"] == [5, 6] and res["date"]
    vs = res["val"]["clutter"]["FTSPL"]["vs_base"]["FT"]
    assert vs["mean"] == pytest.approx(0.05) and not vs["within_noise"]
    assert set(res["queries"]) == {"base", "clutter"} and res["queries"]["base"]["FTSPL"]["seeds"] == [5, 6]


# ------------------------------------------------------- the default variety
def test_every_bench_preset_has_a_default_variety_that_exists() -> None:
    from ftspl.data.bench import BENCH_PRESETS
    from ftspl.data.variety import DEFAULT_VARIETY

    assert set(DEFAULT_VARIETY) == set(BENCH_PRESETS)
    assert all(v in PHOTO_VARIETY for v in DEFAULT_VARIETY.values())


def test_the_full_builds_default_variety_is_the_one_the_study_chose() -> None:
    """The benchmark's source photos follow benchmarks/photo_variety.py's rule, not a hand pick."""
    from ftspl.data.variety import DEFAULT_VARIETY

    chosen = json.loads((ROOT / "benchmarks" / "results" / "photo_variety.json").read_text())["chosen_on_val"]
    assert DEFAULT_VARIETY["full"] == (chosen if chosen != "none" else "base")


@pytest.mark.parametrize("variety, folder, linked", [("base", "data-full-s3", False),
                                                     ("more_renders", "data-full-more_renders-s3", True)])
def test_build_split_keeps_each_variety_in_its_own_folder(tmp_path: Path, monkeypatch, variety, folder, linked) -> None:
    """A folder never changes config (cached cells are keyed by the source folder); a variety links the base build."""
    import ftspl.data.bench as bench

    _, studylib, _ = _study_module()
    (tmp_path / "data-full-s3").mkdir()
    (tmp_path / "data-full-s3" / "manifest.json").write_text("{}")
    seen = {}

    def fake_build(out, cache, cfg, progress=None, link_from=None):
        seen.update(out=Path(out), cfg=cfg, link=link_from)
        return SimpleNamespace(root=Path(out), **{k: Path(out) / k for k in ("source", "val", "val_gallery", "queries", "target")},
                               classes=[], counts={}, photos={})

    monkeypatch.setattr(bench, "build_sh3d_benchmark", fake_build)
    split = studylib.build_split(3, tmp_path, "full", variety)
    assert seen["out"] == tmp_path / folder and split.source == tmp_path / folder / "source"
    assert seen["cfg"] == apply_variety(replace(bench.BENCH_PRESETS["full"], seed=3), variety)
    assert (seen["link"] == tmp_path / "data-full-s3") is linked
