"""The view that matched (issue 17 part 2): per-view output, compact codes, matched views, re-ranking, CLI and API.

Unit tests run on synthetic data; the end-to-end ones index tiny meshes with the
pretrained model (``exported_models``, which now carries the per-view output).
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_ftspl
from PIL import Image

from ftspl.engine.errors import UnknownKeyError
from ftspl.engine.index.store import viewcodes
from ftspl.engine.index.reader import Hit
from ftspl.engine.index.store.schema import ShapeRecord
from ftspl.engine.index.store import ShapeStore
from ftspl.engine.scoring.views import (
    MatchConfig,
    best_views,
    cosine_of,
    rerank,
    views_note,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


# --- codes and strips -------------------------------------------------------------------------
def test_int8_codes_keep_cosines_within_a_hundredth() -> None:
    rng = np.random.default_rng(0)
    views, photos = _unit(rng.normal(size=(12, 256))), _unit(rng.normal(size=(20, 256)))
    scale, codes = viewcodes.quantize(views)
    assert len(codes) == 12 * 256
    back = viewcodes.dequantize(scale, codes, 12, 256)
    np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1.0, atol=1e-5)
    assert np.abs(photos @ views.T - photos @ back.T).max() < 0.01
    with pytest.raises(ValueError, match="expected 12 x 255"):
        viewcodes.dequantize(scale, codes, 12, 255)
    with pytest.raises(ValueError, match="finite"):
        viewcodes.quantize(np.full((2, 3), np.nan))


def test_strip_crops_back_to_each_view() -> None:
    colours = [(255 * (i % 2), 20 * i, 255 - 20 * i) for i in range(12)]
    views = np.stack([np.full((32, 32, 3), c, np.uint8) for c in colours])
    strip = viewcodes.make_strip(views)
    assert Image.open(io.BytesIO(strip)).size == (12 * viewcodes.STRIP_PX, viewcodes.STRIP_PX)
    for i, c in enumerate(colours):
        crop = np.asarray(viewcodes.crop_view(strip, i, 12), np.float32)
        assert crop.shape == (viewcodes.STRIP_PX, viewcodes.STRIP_PX, 3)
        assert np.abs(crop[8:-8, 8:-8].mean(axis=(0, 1)) - c).max() < 12  # lossy WebP, flat colour
    png = viewcodes.view_png(strip, 3, 12)
    assert png.startswith(b"\x89PNG")
    with pytest.raises(IndexError, match="out of range"):
        viewcodes.crop_view(strip, 12, 12)


# --- the store --------------------------------------------------------------------------------
def _record(path: str, rng, views: bool = True) -> ShapeRecord:
    per_view = _unit(rng.normal(size=(12, 8))) if views else None
    strip = viewcodes.make_strip(np.zeros((12, 16, 16, 3), np.uint8)) if views else None
    return ShapeRecord(path=path, content_hash="h" + path, label="a", faces=1, kind="mesh",
                       embedding=_unit(rng.normal(size=8)), view_embeddings=per_view, view_strip=strip)


def test_store_writes_codes_with_the_shape_and_drops_them_with_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    db = tmp_path / "s.sqlite"
    with ShapeStore(db) as store:
        store.set_info(embed_dim=8)
        recs = [_record(str(tmp_path / f"m{i}.obj"), rng) for i in range(3)]
        ids = store.upsert_batch(recs)
        got = store.view_embeddings(ids)
        assert sorted(got) == sorted(ids)
        for i, r in zip(ids, recs):
            assert np.abs(got[i] - r.view_embeddings).max() < 0.02
        assert store.view_strip(ids[0])[1] == 12
        # the same path re-added by a model without per-view output: its codes go too
        store.upsert_batch([_record(recs[0].path, rng, views=False)])
        assert ids[0] not in store.view_embeddings(ids) and store.view_strip(ids[0]) is None
        store.remove_paths([recs[1].path])  # ON DELETE CASCADE
        assert sorted(store.view_embeddings(ids)) == [ids[2]]
    with ShapeStore(db, readonly=True) as ro:
        assert sorted(ro.view_embeddings(ids)) == [ids[2]]


def test_a_store_from_before_codes_opens_and_has_none(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    db = tmp_path / "old.sqlite"
    with ShapeStore(db) as store:
        store.set_info(embed_dim=8)
        ids = store.upsert_batch([_record(str(tmp_path / "old.obj"), rng, views=False)])
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert viewcodes.TABLE not in tables  # an older model's add leaves the schema as it was
    with ShapeStore(db, readonly=True) as ro:
        assert ro.view_embeddings(ids) == {} and ro.view_strip(ids[0]) is None


# --- matching and re-ranking ------------------------------------------------------------------
def _hit(rank: int, dist: float, sim: float | None, i: int) -> Hit:
    return Hit(rank, i, f"/s{i}", dist, "a", "mesh", view=None if sim is None else 0, view_similarity=sim)


def test_best_view_is_the_most_similar_one() -> None:
    views = _unit(np.eye(4, 6, dtype=np.float32) + 0.1)
    photo = _unit(np.array([0, 0, 1, 0.2, 0, 0], np.float32))
    i, s = best_views(photo, views)
    assert i == 2 and s == pytest.approx(float(views[2] @ photo))


def test_rerank_rules() -> None:
    # pooled order 1, 2, 3; the third has by far the best view
    hits = [_hit(1, 0.5, 0.60, 1), _hit(2, 0.6, 0.55, 2), _hit(3, 0.7, 0.95, 3)]
    assert [h.id for h in rerank(hits, 3, MatchConfig())] == [1, 2, 3]
    assert [h.id for h in rerank(hits, 2, MatchConfig(rerank="view"))] == [3, 1]
    assert [h.id for h in rerank(hits, 3, MatchConfig(rerank="blend", blend_weight=0.0))] == [1, 2, 3]
    blend = rerank(hits, 3, MatchConfig(rerank="blend", blend_weight=0.5))
    assert [h.rank for h in blend] == [1, 2, 3] and blend[0].id == 3
    assert blend[0].distance == 0.7  # distances stay pooled
    # a hit without codes scores its pooled cosine under every rule
    mixed = [_hit(1, 0.5, None, 1), _hit(2, 0.6, 0.5, 2)]
    assert cosine_of(0.5) > 0.5 and [h.id for h in rerank(mixed, 2, MatchConfig(rerank="view"))] == [1, 2]
    with pytest.raises(UnknownKeyError, match="valid: blend, none, view"):
        MatchConfig(rerank="best")
    assert MatchConfig(rerank="view").candidates(10) == 50 and MatchConfig().candidates(10) == 10


def test_views_note_says_why_views_are_missing() -> None:
    from ftspl.engine.index.reader import QueryResult

    assert "exported without per-view" in views_note("m1", False, [])
    full = QueryResult("p", [_hit(1, 0.1, 0.9, 1)])
    assert views_note("m1", True, [full]) is None
    assert "1 hit(s)" in views_note("m1", True, [full, QueryResult("q", [_hit(1, 0.1, None, 2)])])


# --- export: the pooled output is unchanged ---------------------------------------------------
@pytest.mark.slow
def test_export_adds_per_view_output_and_keeps_the_pooled_one(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from ftspl.engine.constants import Preprocess, RenderSpec
    from ftspl.engine.home import Home
    from ftspl.engine.model.encoders import Encoders
    from ftspl.export.onnx_export import (
        ExportConfig,
        ModelMeta,
        WithViewEmbeddings,
        export_encoders,
    )
    from ftspl.train.backbone_registry import build_backbone
    from ftspl.train.model import Bottleneck, ImageEncoder, MultiViewEncoder

    torch.manual_seed(0)
    net = build_backbone("efficientnet_lite0", pretrained=False)
    head = Bottleneck(net.feat_dim, 16)
    nn.init.normal_(head.bn.running_mean)
    img, mv = ImageEncoder(net, head).eval(), MultiViewEncoder(net, head).eval()
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        pooled, views = WithViewEmbeddings(mv)(x)
        assert torch.equal(pooled, mv(x))
        assert views.shape == (2, 3, 16)
        torch.testing.assert_close(views[1, 2], img(x[1, 2:3])[0])  # a view embeds like a photo
    pre = Preprocess(image_size=32, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    meta = ModelMeta("efficientnet_lite0", 16, pre, RenderSpec(image_size=32, views=3), "random-init", [], {}, {})
    home = Home(tmp_path)
    for with_views in (True, False):
        cfg = ExportConfig(exporter="torchscript", view_embeddings=with_views)
        folder, _man = export_encoders(img, mv, meta, home, cfg)
        enc = Encoders(folder)
        assert enc.has_view_output is with_views
        batch = np.random.default_rng(0).normal(size=(2, 3, 3, 32, 32)).astype(np.float32)
        got_pooled, got_views = enc.embed_views_full(batch)
        with torch.no_grad():
            np.testing.assert_allclose(got_pooled, mv(torch.from_numpy(batch)).numpy(), atol=1e-4)
        np.testing.assert_allclose(got_pooled, enc.embed_views(batch), atol=1e-6)
        if with_views:
            with torch.no_grad():
                want = WithViewEmbeddings(mv)(torch.from_numpy(batch))[1].numpy()
            np.testing.assert_allclose(got_views, want, atol=1e-4)
        else:
            assert got_views is None


# --- end to end: index add, ftspl query, the HTTP API -----------------------------------------
def _gallery(root: Path) -> Path:
    """Five tiny meshes in two labels; the L-shaped one looks different from every side."""
    from conftest import asymmetric_mesh

    shapes = {"boxy": [trimesh.creation.box((1, 2, 1)), trimesh.creation.box((2, 1, 1)), asymmetric_mesh()],
              "round": [trimesh.creation.icosphere(2), trimesh.creation.cylinder(0.5, 2.0)]}
    for label, meshes in shapes.items():
        for j, mesh in enumerate(meshes):
            p = root / label / f"{label}_{j}.obj"
            p.parent.mkdir(parents=True, exist_ok=True)
            mesh.export(p)
    return root


def _photo(path: Path) -> Path:
    img = np.full((160, 200, 3), 255, np.uint8)
    img[40:120, 60:140] = (120, 80, 40)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def view_home(tmp_path_factory, exported_models, gl_available) -> Path:
    home = tmp_path_factory.mktemp("views-home")
    shutil.copytree(exported_models, home / "models")
    r = run_ftspl(home, "index", "add", str(_gallery(home.parent / f"{home.name}-gallery")), "--json")
    assert r.returncode == 0, r.stderr
    return home


def test_query_json_reports_the_matched_view_and_it_is_the_closest(view_home: Path, tmp_path: Path) -> None:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.model.preprocess import to_tensor

    photo = _photo(tmp_path / "photo.png")
    r = run_ftspl(view_home, "query", str(photo), "--top", "5", "--regions", "none", "--json")  # the whole photo
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["rerank"] == "none" and out["views_note"] is None
    hits = out["results"][0]["hits"]
    assert len(hits) == 5 and all(0 <= h["view"] < 12 and -1 <= h["view_similarity"] <= 1 for h in hits)
    # the reported view is the argmax of the stored codes against the photo's embedding
    lib = Library(Home(view_home))
    emb = lib.encoders.embed_photos(to_tensor(load_photo(photo), lib.encoders.preprocess)[None])[0]
    with lib.open_reader() as reader:
        by_path = {h.path: h.id for h in reader.search(emb[None], 5)[0]}
        codes = reader.view_embeddings(list(by_path.values()))
    for h in hits:
        sims = codes[by_path[h["path"]]] @ emb
        assert h["view"] == int(np.argmax(sims)) and h["view_similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    # re-ranked by the best view: the whole gallery is within the top 50, so the order is by similarity
    rv = run_ftspl(view_home, "query", str(photo), "--top", "5", "--rerank", "view", "--json")
    assert rv.returncode == 0, rv.stderr
    vh = json.loads(rv.stdout)["results"][0]["hits"]
    assert [h["view_similarity"] for h in vh] == sorted((h["view_similarity"] for h in hits), reverse=True)
    assert [h["rank"] for h in vh] == [1, 2, 3, 4, 5]


def test_query_table_sheet_and_bad_rerank(view_home: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "photo.png")
    sheet = tmp_path / "sheet.png"
    r = run_ftspl(view_home, "query", str(photo), "--top", "3", "--rerank", "blend", "--sheet", str(sheet))
    assert r.returncode == 0, r.stderr
    assert "view (similarity)" in r.stdout and sheet.is_file()
    assert Image.open(sheet).size[0] > 3 * 128
    bad = run_ftspl(view_home, "query", str(photo), "--rerank", "best")
    assert bad.returncode == 2 and "valid: blend, none, view" in bad.stderr
    assert "Traceback" not in bad.stderr
    fused = run_ftspl(view_home, "query", str(photo), str(photo), "--fuse", "--rerank", "view")
    assert fused.returncode == 2 and "--fuse list keeps its fused order" in fused.stderr
    ok = run_ftspl(view_home, "query", str(photo), str(photo), "--fuse", "--json")
    assert ok.returncode == 0, ok.stderr
    assert all(0 <= h["view"] < 12 for h in json.loads(ok.stdout)["results"][0]["hits"])  # nearest the photos' mean


def test_an_index_without_codes_answers_with_a_note(view_home: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    shutil.copytree(view_home, home)
    with sqlite3.connect(home / "index" / "shapes.sqlite") as db:  # as if indexed before codes existed
        db.execute(f"DROP TABLE {viewcodes.TABLE}")
    r = run_ftspl(home, "query", str(_photo(tmp_path / "p.png")), "--top", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert all(h["view"] is None and h["view_similarity"] is None for h in out["results"][0]["hits"])
    assert "2 hit(s)" in out["views_note"] and "--rebuild" in out["views_note"]


def test_http_api_gives_matched_views_and_serves_them(view_home: Path) -> None:
    pytest.importorskip("starlette")
    import base64
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient

    from ftspl.engine.home import Home
    from ftspl.serve.app import create_app
    from ftspl.serve.config import ServeConfig
    from ftspl.serve.live import LiveIndex

    buf = io.BytesIO()
    Image.open(_photo(Path(str(view_home) + "-photo.png"))).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    live = LiveIndex(Home(view_home), poll_s=0.05)
    try:
        with TestClient(create_app(ServeConfig(home=view_home), live)) as api:
            body = api.post("/api/query", json={"image": image, "top": 3}).json()
            assert body["rerank"] == "none" and body["views_note"] is None
            hit = body["hits"][0]
            assert 0 <= hit["view"] < 12 and isinstance(hit["view_similarity"], float)
            got = api.get(hit["view_image"])
            assert got.status_code == 200 and got.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(got.content)).size == (viewcodes.STRIP_PX, viewcodes.STRIP_PX)
            view = api.post("/api/query", json={"image": image, "top": 3, "rerank": "view"}).json()
            assert view["rerank"] == "view"
            sims = [h["view_similarity"] for h in view["hits"]]
            assert sims == sorted(sims, reverse=True)
            for bad, code, text in (({"rerank": "best"}, 422, "rerank must be one of"),
                                    ({"rerank": "blend", "rerank_weight": 2}, 422, "rerank_weight")):
                r = api.post("/api/query", json={"image": image, **bad})
                assert r.status_code == code and text in r.json()["error"]
            sid = hit["id"]
            r = api.get(f"/api/shapes/{sid}/preview.png?view=12")
            assert r.status_code == 404 and "has 12 views" in r.json()["error"]
            assert api.get(f"/api/shapes/{sid}/preview.png?view=../x").status_code == 422
            assert api.get("/api/shapes/999999/preview.png?view=0").status_code == 404
    finally:
        live.close()


@pytest.mark.slow
def test_page_shows_the_matched_view(view_home: Path, tmp_path: Path) -> None:
    """Debian's chromium: each card shows its matched view; the dialog shows it beside the four views."""
    pytest.importorskip("starlette")
    from test_serve_browser import CHROMIUM, save
    from test_serve_live import running_server

    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium ({CHROMIUM}) is not installed here")
    photo = _photo(tmp_path / "photo.png")
    with sync_api.sync_playwright() as p, running_server(view_home) as (base, _):
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(base + "/")
            page.wait_for_function("() => document.querySelector('#library').textContent.includes('5 shapes')")
            page.select_option("#rerank", "view")
            page.set_input_files("#photos", [str(photo)])
            page.wait_for_function("() => document.querySelectorAll('.hit img').length === 5 && "
                                   "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)")
            srcs = page.evaluate("[...document.querySelectorAll('.hit img')].map(i => i.src)")
            assert all("preview.png?view=" in s for s in srcs)
            assert page.evaluate("[...document.querySelectorAll('.hit img')].every(i => i.naturalWidth === 64)")
            assert "re-ranked by view" in page.inner_text(".result-status")
            card = page.locator(".hit").nth(0)
            assert "view " in card.inner_text() and "similarity" in card.inner_text()
            card.click()
            page.wait_for_selector("#detail[open]")
            page.wait_for_function("() => document.querySelector('#detail-matched').naturalWidth > 0")
            assert "Closest view to your photo: view" in page.inner_text("#detail-match-caption")
            assert "matched view" in page.inner_text("#detail-meta")
            save(page, tmp_path, "serve-matched-view.png")
            assert errors == []
        finally:
            browser.close()
