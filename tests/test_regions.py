"""Regional search (``--regions``): the windows, the fused ranking against brute force, the answer's regions,
models exported without the regional output, and one-line errors for bad values (CLI, API, HTTP)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_gallery, run_ftspl

from ftspl.engine.constants import Preprocess
from ftspl.engine.errors import UnknownKeyError, UsageError
from ftspl.engine.scoring import regions as R

PRE = Preprocess(image_size=224, crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3)


# ------------------------------------------------------------------------------ windows (no model)
@pytest.mark.parametrize("size", [(300, 200), (1, 1), (7, 3), (1024, 683), (224, 224)])
@pytest.mark.parametrize("scales", [(0.6,), (0.6, 0.4), (0.5,), (0.3,)])
def test_windows_are_valid_boxes_inside_the_photo(size, scales) -> None:
    w, h = size
    boxes = R.photo_boxes(w, h, scales)
    assert boxes[0] == (0, 0, w, h)  # the whole photo first
    assert len(boxes) == len(R.window_boxes(scales))
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def test_default_windows_are_the_whole_photo_five_at_60_and_nine_at_40() -> None:
    boxes = R.window_boxes((0.6, 0.4))
    assert len(boxes) == 15
    sizes = [round(b[2] - b[0], 6) for b in boxes]
    assert sizes == [1.0] + [0.6] * 5 + [0.4] * 9
    assert (0.2, 0.2, 0.8, 0.8) in [tuple(round(v, 6) for v in b) for b in boxes]  # the centre window at 0.6


@pytest.mark.parametrize("cells", [(7, 7), (4, 3), (2, 2)])
def test_feature_map_windows_lie_inside_the_map(cells) -> None:
    cx, cy = cells
    got = R.grid_cells((0.6, 0.4), cx, cy)
    assert got and len({c for c, _ in got}) == len(got)  # no duplicates
    for (x0, y0, x1, y1), s in got:
        assert 0 <= x0 < x1 <= cx and 0 <= y0 < y1 <= cy and s in (0.6, 0.4)
        assert (x0, y0, x1, y1) != (0, 0, cx, cy)  # the whole map is the graph's main output


@pytest.mark.parametrize("size", [(256, 256), (300, 200), (200, 300), (1024, 683), (5, 3)])
def test_input_boxes_map_back_inside_the_photo(size) -> None:
    from ftspl.engine.model.preprocess import resize_crop

    w, h = size
    for box in [(0, 0, 1, 1), (0, 0, 4 / 7, 4 / 7), (3 / 7, 3 / 7, 1, 1), (2 / 7, 2 / 7, 5 / 7, 5 / 7)]:
        x0, y0, x1, y1 = R.input_to_photo(box, w, h, PRE)
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    if size == (256, 256):  # shorter side to 256, centre 224 kept: 16 px off each edge
        assert R.input_to_photo((0, 0, 1, 1), w, h, PRE) == (16, 16, 240, 240)
    # the whole input square is the centre crop resize_crop keeps: same aspect (a square)
    x0, y0, x1, y1 = R.input_to_photo((0, 0, 1, 1), w, h, PRE)
    assert abs((x1 - x0) - (y1 - y0)) <= 1 + max(w, h) // 100
    assert resize_crop(Image.new("RGB", size), PRE).size == (224, 224)


def test_fusion_rules_on_a_small_matrix() -> None:
    d = np.array([[0.2, 1.0, 1.4], [0.9, 0.5, 1.3], [1.2, 1.1, 0.1], [1.0, 1.0, 1.0]])
    assert np.allclose(R.fuse_regions(d, "max"), [0.2, 0.5, 0.1])
    cos = 1 - d**2 / 2
    assert np.allclose(R.fuse_regions(d, "mean"), np.sqrt(2 - 2 * cos.mean(axis=0)))
    top = np.sort(d, axis=0)[:3]
    assert np.allclose(R.fuse_regions(d, "top3"), np.sqrt(2 - 2 * (1 - top**2 / 2).mean(axis=0)))


# ------------------------------------------------------------------------------ choosing the mode
def _resolve(regions=None, fusion=None, fuse=False, rerank="none", has_output=True):
    return R.resolve(regions, fusion, fuse=fuse, rerank=rerank, has_output=has_output, model_id="m1")


def test_bad_values_are_one_line_errors_naming_the_valid_ones() -> None:
    for kwargs, want in [({"regions": "everywhere"}, "unknown regions 'everywhere'; valid: crops, none, rmac"),
                         ({"regions": "crops", "fusion": "min"},
                          "unknown region fusion 'min'; valid: max, mean, top3")]:
        with pytest.raises(UnknownKeyError) as exc:
            _resolve(**kwargs)
        assert str(exc.value) == want
    with pytest.raises(UsageError, match="fractions between 0 and 1"):
        R.RegionConfig(mode="crops", scales=(1.5,))


def test_explicit_regions_that_cannot_apply_are_refused_and_the_default_falls_back(monkeypatch) -> None:
    with pytest.raises(UsageError, match=r"^--regions crops searches each photo's regions but --fuse"):
        _resolve("crops", fuse=True)
    with pytest.raises(UsageError, match=r"--rerank view re-ranks whole-photo lists"):
        _resolve("rmac", rerank="view")
    with pytest.raises(UsageError, match=r"model m1 was exported without regional embeddings.*--regions crops"):
        _resolve("rmac", has_output=False)
    assert _resolve("crops", has_output=False).mode == "crops"  # crops need no regional output
    monkeypatch.setattr(R, "DEFAULT_REGIONS", "rmac")
    assert _resolve().mode == "rmac"
    assert _resolve(has_output=False).mode == "none"  # an older model: the whole photo
    assert _resolve(fuse=True).mode == "none" and _resolve(rerank="blend").mode == "none"


# ------------------------------------------------------------------------------ a tiny index
@pytest.fixture(scope="module")
def indexed(tmp_path_factory, exported_models: Path, gl_available) -> tuple[Path, Path]:
    """(home, photo): the exported pretrained model (with its regional output) and an index of six shapes."""
    import ftspl

    root = tmp_path_factory.mktemp("regions")
    home = root / "home"
    shutil.copytree(exported_models, home / "models")
    report = ftspl.open(home).add(make_gallery(root / "gallery", 6))
    assert report.added == 6 and not report.failures
    rng = np.random.default_rng(3)
    pixels = (rng.random((90, 160, 3)) * 120).astype(np.uint8)
    pixels[20:70, 90:140] = (200, 180, 40)  # an object right of centre
    photo = root / "room.png"
    Image.fromarray(pixels).save(photo)
    return home, photo


def _brute_force(lib, img: Image.Image, mode: str, fusion: str) -> tuple[list[int], np.ndarray, list]:
    """Every stored shape scored against every region, fused, sorted: the exact answer."""
    enc = lib.engine.encoders
    rows, windows = R.embed_regions(enc, [img], R.RegionConfig(mode=mode, fusion=fusion))[0]
    ids, mat = lib.reader().store.all_embeddings()
    mat = mat / np.linalg.norm(mat, axis=1, keepdims=True)
    dist = np.linalg.norm(rows[:, None, :].astype(np.float64) - mat[None, :, :], axis=2)
    fused = R.fuse_regions(dist, fusion)
    order = np.argsort(fused, kind="stable")
    return [int(ids[j]) for j in order], fused[order], [windows[int(np.argmin(dist[:, j]))] for j in order]


def test_manifest_lists_the_regional_windows(exported_models: Path) -> None:
    man = json.loads(next(exported_models.glob("*/manifest.json")).read_text())
    enc = man["encoders"]["image_encoder"]
    assert enc["region_output_name"] == "region_embeddings"
    assert len(enc["regions"]) == 14  # 5 windows at 0.6 and 9 at 0.4 of lite0's 7x7 map
    for r in enc["regions"]:
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 and r["scale"] in (0.6, 0.4)


@pytest.mark.parametrize("mode", ["crops", "rmac"])
def test_fused_ranking_equals_brute_force_on_a_tiny_index(indexed, mode) -> None:
    import ftspl

    home, photo = indexed
    img = Image.open(photo).convert("RGB")
    with ftspl.open(home) as lib:
        for fusion in R.REGION_FUSIONS:
            ans = lib.query(img, 6, regions=mode, region_fusion=fusion)
            want_ids, want_d, want_win = _brute_force(lib, img, mode, fusion)
            assert ans.regions == mode
            assert [h.id for h in ans.hits] == want_ids, fusion
            assert np.allclose([h.distance for h in ans.hits], want_d, atol=1e-5), fusion
            for h, w in zip(ans.hits, want_win):  # the region reported is the one nearest to the shape
                got = None if h.region is None else (h.region.x0, h.region.y0, h.region.x1, h.region.y1)
                assert got == (None if w is None else tuple(w))
                assert got is None or (0 <= got[0] < got[2] <= 160 and 0 <= got[1] < got[3] <= 90)


def test_regions_with_a_box_are_in_the_photos_pixels(indexed) -> None:
    import ftspl

    home, photo = indexed
    with ftspl.open(home) as lib:
        ans = lib.query(str(photo), 6, box=(60, 10, 160, 90), regions="crops", region_fusion="max")
    for h in ans.hits:
        r = h.region
        assert r is not None and 60 <= r.x0 < r.x1 <= 160 and 10 <= r.y0 < r.y1 <= 90
    d = ans.to_dict()
    assert d["regions"] == "crops" and set(d["hits"][0]["region"]) == {"x0", "y0", "x1", "y1"}


def test_whole_photo_answers_are_unchanged_by_the_regional_output(indexed) -> None:
    """``regions=none`` (the whole photo) answers as a plain search of the whole-photo embedding."""
    import ftspl

    home, photo = indexed
    with ftspl.open(home) as lib:
        ans = lib.query(str(photo), 6, regions="none")
        emb = R.embed_regions(lib.engine.encoders, [Image.open(photo).convert("RGB")],
                              R.RegionConfig(mode="rmac"))[0][0][0]
    assert ans.regions == "none" and all(h.region is None for h in ans.hits)
    ids, mat = ftspl.open(home).reader().store.all_embeddings()
    order = np.argsort(np.linalg.norm(mat - emb, axis=1), kind="stable")
    assert [h.id for h in ans.hits] == [int(ids[j]) for j in order]


def test_a_manifest_without_the_regional_output_still_queries(indexed, tmp_path) -> None:
    """A model exported before regional search: its manifest names no regional output."""
    import ftspl

    home, photo = indexed
    old = tmp_path / "old"
    shutil.copytree(home, old)
    man_path = next((old / "models").glob("*/manifest.json"))
    man = json.loads(man_path.read_text())
    for key in ("region_output_name", "regions"):
        man["encoders"]["image_encoder"].pop(key)
    man_path.write_text(json.dumps(man))
    with ftspl.open(old) as lib:
        assert not lib.engine.encoders.has_region_output
        plain = lib.query(str(photo), 3)  # the default, or none where the default is rmac and the graph lacks it
        expected = "none" if R.DEFAULT_REGIONS == "rmac" else R.DEFAULT_REGIONS
        assert plain.regions == expected and len(plain.hits) == 3
        assert lib.query(str(photo), 3, regions="crops").regions == "crops"
        with pytest.raises(UsageError, match=r"exported without regional embeddings; export it again"):
            lib.query(str(photo), 3, regions="rmac")


def test_cli_regions_json_and_one_line_errors(indexed) -> None:
    home, photo = indexed
    r = run_ftspl(home, "query", str(photo), "--top", "2", "--regions", "rmac", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["regions"] == "rmac" and len(out["hits"]) == 2 and "region" in out["hits"][0]
    for args, want in [(("--regions", "all"), "unknown regions 'all'; valid: crops, none, rmac"),
                       (("--regions", "crops", "--region-fusion", "min"),
                        "unknown region fusion 'min'; valid: max, mean, top3")]:
        r = run_ftspl(home, "query", str(photo), *args)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [f"error: {want}"]


def test_http_regions_and_422_for_bad_values(indexed) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from ftspl.engine.home import Home
    from ftspl.serve.app import create_app
    from ftspl.serve.config import ServeConfig
    from ftspl.serve.live import LiveIndex

    home, photo = indexed
    live = LiveIndex(Home(home), poll_s=0.05)
    try:
        with TestClient(create_app(ServeConfig(home=home), live)) as api:
            files = {"photo": ("room.png", photo.read_bytes(), "image/png")}
            r = api.post("/api/query", files=files, data={"top": "2", "regions": "crops", "region_fusion": "mean"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["regions"] == "crops" and "region" in body["hits"][0]
            for data, want in [({"regions": "all"}, "regions must be one of none, crops, rmac, got 'all'"),
                               ({"region_fusion": "min"}, "region_fusion must be one of max, mean, top3, got 'min'")]:
                r = api.post("/api/query", files=files, data=data)
                assert r.status_code == 422 and r.json()["error"] == want
    finally:
        live.close()
