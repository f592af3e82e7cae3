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
from PIL import Image

from conftest import run_ftspl

from ftspl.engine.errors import UnknownKeyError
from ftspl.engine.index import viewcodes
from ftspl.engine.index.reader import Hit
from ftspl.engine.index.schema import ShapeRecord
from ftspl.engine.index.store import ShapeStore
from ftspl.engine.scoring.views import MatchConfig, best_views, cosine_of, rerank, views_note


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
    from ftspl.export.onnx_export import ExportConfig, ModelMeta, WithViewEmbeddings, export_encoders
    from ftspl.train.backbones import build_backbone
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
        folder, man = export_encoders(img, mv, meta, home, cfg)
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
