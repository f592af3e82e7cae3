"""Open-set calibration: the threshold, its AUROC, and storage bound to the model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ftspl.engine.errors import UsageError
from ftspl.engine.scoring.openset import (
    auroc,
    calibrate,
    distance_of,
    load_calibration,
    score_of,
    threshold_for_precision,
)


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    known = np.round(rng.normal(0.6, 0.2, 50), 1)  # rounded: many ties
    unknown = np.round(rng.normal(0.9, 0.2, 30), 1)
    y = np.r_[np.zeros(50), np.ones(30)]  # unknown is the positive class, scored by distance
    assert auroc(known, unknown) == pytest.approx(roc_auc_score(y, np.r_[known, unknown]))
    assert auroc(np.array([0.1, 0.2]), np.array([0.5])) == 1.0
    assert auroc(np.array([0.5]), np.array([0.1, 0.2])) == 0.0


def test_threshold_is_the_largest_distance_meeting_the_precision() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    known = np.array([True, True, True, False, True, False])
    # accepted up to 0.3: 3/3; 0.4: 3/4; 0.5: 4/5 = 0.8; 0.6: 4/6
    assert threshold_for_precision(d, known, 1.0) == 0.3
    assert threshold_for_precision(d, known, 0.8) == 0.5
    assert threshold_for_precision(d, known, 0.75) == 0.5
    assert threshold_for_precision(np.array([0.1, 0.2]), np.array([False, True]), 0.9) is None
    # photos at the same distance are accepted or refused together
    assert threshold_for_precision(np.array([0.1, 0.2, 0.2]), np.array([True, True, False]), 0.9) == 0.1


def test_calibrate_reports_what_it_chose() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    cal = calibrate(d, ["a", "a", "b", "zebra", "zebra"], {"a", "b"}, 0.95, "h1", "m1", "photos/")
    assert cal.max_distance == 0.3 and cal.known == 3 and cal.unknown == 2
    assert cal.auroc == 1.0 and cal.known_accepted == 1.0 and cal.unknown_rejected == 1.0
    with pytest.raises(UsageError, match="none of the photos' classes"):
        calibrate(d, ["x"] * 5, {"a"}, 0.95, "h1", "m1", "photos/")


def test_stored_threshold_is_bound_to_its_model(tmp_path) -> None:
    cal = calibrate(np.array([0.1, 0.5]), ["a", "z"], {"a"}, 0.95, "hash-1", "m1", "p/")
    cal.save(tmp_path)
    assert load_calibration(tmp_path, "hash-1") == cal
    assert load_calibration(tmp_path, "hash-2") is None  # another model: never applied
    assert load_calibration(tmp_path / "nowhere", "hash-1") is None


def test_score_and_distance_are_one_cut_in_two_units() -> None:
    for s in (-1.0, 0.0, 0.3, 0.99, 1.0):
        assert score_of(distance_of(s)) == pytest.approx(s)
    with pytest.raises(UsageError, match="--min-score"):
        distance_of(1.5)


@pytest.mark.slow
def test_calibrate_then_query_marks_no_match(model_home, tmp_path) -> None:
    """``eval --calibrate`` stores a threshold that ``query`` applies; the flags override it."""
    import json

    import trimesh
    from conftest import run_ftspl
    from PIL import Image

    gallery = tmp_path / "gallery" / "boxy"
    gallery.mkdir(parents=True)
    for i, size in enumerate([(1, 2, 1), (2, 1, 1), (1, 1, 3)]):
        trimesh.creation.box(size).export(gallery / f"b{i}.stl")
    assert run_ftspl(model_home, "index", "add", str(tmp_path / "gallery")).returncode == 0
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for label, colour in (("boxy", (120, 80, 40)), ("zebra", (20, 20, 20))):
        (photos / label).mkdir(parents=True)
        for i in range(3):
            img = np.full((96, 96, 3), 255, np.uint8)
            img[20:76, 30:66] = np.clip(np.array(colour) + rng.integers(-20, 20, 3), 0, 255)
            Image.fromarray(img).save(photos / label / f"{i}.png")
    r = run_ftspl(model_home, "eval", str(photos), "--calibrate", "--precision", "0.01", "--json")
    assert r.returncode == 0, r.stderr
    cal = json.loads(r.stdout)
    assert cal["known"] == 3 and cal["unknown"] == 3 and 0 <= cal["auroc"] <= 1
    assert (model_home / "index" / "calibration.json").exists()

    q = run_ftspl(model_home, "query", str(photos / "zebra" / "0.png"), "--top", "3", "--json")
    assert q.returncode == 0, q.stderr
    out = json.loads(q.stdout)
    assert out["max_distance"] == pytest.approx(cal["max_distance"], abs=1e-6)
    hits = out["results"][0]["hits"]
    assert [h["match"] for h in hits] == [h["distance"] <= out["max_distance"] for h in hits]
    assert out["results"][0]["match"] == hits[0]["match"]

    none = json.loads(run_ftspl(model_home, "query", str(photos / "boxy" / "0.png"), "--max-distance", "0", "--json").stdout)
    assert none["max_distance_from"] == "--max-distance" and not none["results"][0]["match"]
    every = json.loads(run_ftspl(model_home, "query", str(photos / "boxy" / "0.png"), "--min-score", "-1", "--json").stdout)
    assert every["results"][0]["match"] and all(h["match"] for h in every["results"][0]["hits"])
    both = run_ftspl(model_home, "query", str(photos / "boxy" / "0.png"), "--min-score", "0.5", "--max-distance", "1")
    assert both.returncode == 2 and "not both" in both.stderr and "Traceback" not in both.stderr


def test_fusion_rules_on_a_known_matrix() -> None:
    from ftspl.engine.errors import UnknownKeyError
    from ftspl.engine.scoring.fusion import fuse, fuse_embeddings

    d = np.array([[0.2, 0.9, 1.0], [1.2, 0.3, 1.1], [0.4, np.inf, 1.3]])
    assert np.argsort(fuse(d, "max")).tolist() == [0, 1, 2]
    # rank: -sum 1/(60 + rank) over the photos that reached the shape (ranks per row: 1 2 3 / 3 1 2 / 1 - 2)
    expected = -np.array([1 / 61 + 1 / 63 + 1 / 61, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62 + 1 / 62])
    np.testing.assert_allclose(fuse(d, "rank"), expected)
    with pytest.raises(UnknownKeyError, match="mean"):
        fuse(d, "median")
    # mean ranks exactly as a search with the normalised mean embedding
    rng = np.random.default_rng(3)
    photos = rng.normal(size=(3, 16))
    photos /= np.linalg.norm(photos, axis=1, keepdims=True)
    gallery = rng.normal(size=(40, 16))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    dist = np.linalg.norm(photos[:, None] - gallery[None], axis=2)
    via_mean = np.linalg.norm(fuse_embeddings(photos) - gallery, axis=1)
    assert np.argsort(fuse(dist, "mean")).tolist() == np.argsort(via_mean).tolist()


@pytest.mark.slow
def test_query_fuse_gives_one_list_for_several_photos(model_home, tmp_path) -> None:
    import json

    import trimesh
    from conftest import run_ftspl
    from PIL import Image

    for i, size in enumerate([(1, 2, 1), (2, 1, 1), (1, 1, 3), (3, 1, 1)]):
        p = tmp_path / "gallery" / "boxy" / f"b{i}.stl"
        p.parent.mkdir(parents=True, exist_ok=True)
        trimesh.creation.box(size).export(p)
    assert run_ftspl(model_home, "index", "add", str(tmp_path / "gallery")).returncode == 0
    photos = []
    for i, colour in enumerate([(120, 80, 40), (90, 90, 90)]):
        img = np.full((96, 96, 3), 255, np.uint8)
        img[20:76, 30 + 5 * i : 66] = colour
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(img).save(photos[-1])
    single = json.loads(run_ftspl(model_home, "query", *map(str, photos), "--top", "4", "--regions", "none",
                                  "--json").stdout)  # whole photos, as the fused list uses
    assert len(single["results"]) == 2
    for how in ("mean", "max", "rank"):
        r = run_ftspl(model_home, "query", *map(str, photos), "--top", "4", "--fuse", "--fusion", how, "--json")
        assert r.returncode == 0, r.stderr
        (res,) = json.loads(r.stdout)["results"]
        assert res["photo"] == f"{photos[0]} + {photos[1]}" and [h["rank"] for h in res["hits"]] == [1, 2, 3, 4]
        assert sorted(h["path"] for h in res["hits"]) == sorted(h["path"] for h in single["results"][0]["hits"])
        if how == "max":  # the best photo's distance to each shape
            best = {h["path"]: min(x["distance"] for s in single["results"] for x in s["hits"] if x["path"] == h["path"])
                    for h in res["hits"]}
            assert all(h["distance"] == pytest.approx(best[h["path"]], abs=1e-5) for h in res["hits"])
    bad = run_ftspl(model_home, "query", str(photos[0]), "--fuse", "--fusion", "median")
    assert bad.returncode == 2 and "--fusion must be one of mean, max, rank" in bad.stderr
