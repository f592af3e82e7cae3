"""Model selection on validation photos: the carve, the criterion, the best round, the verdict."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_train import _cache, cfg_for, tiny  # noqa: F401  (fixtures)

from ftspl.train.validation import best_round, carve, score, verdict, verdict_line


def test_carve_is_seeded_stratified_and_disjoint():
    labels = [0] * 10 + [1] * 3 + [2] * 2
    paths = [f"p{i:02d}" for i in range(len(labels))]
    tr, va = carve(labels, paths, 0.15, seed=0)
    assert sorted(tr + va) == list(range(len(labels))) and not set(tr) & set(va)
    per = {k: sum(1 for i in va if labels[i] == k) for k in (0, 1, 2)}
    assert per == {0: 2, 1: 1, 2: 0}  # round(1.5) = 2; at least 1 from 3 photos; none from 2
    assert carve(labels, paths, 0.15, seed=0) == (tr, va)
    assert carve(labels, paths, 0.15, seed=1)[1] != va
    assert carve(labels, paths, 0.0, seed=0) == (list(range(len(labels))), [])


def test_score_separates_good_from_bad_embeddings():
    src = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    sy = torch.tensor([0, 0, 1, 1])
    val = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    good = score(src, sy, val, torch.tensor([0, 1]), 2)
    bad = score(src, sy, val, torch.tensor([1, 0]), 2)
    assert good.acc == 1.0 and good.ft == 1.0 and bad.acc == 0.0 and bad.ft == 0.0


def test_best_round_and_verdict():
    base = {"acc": 0.6, "FT": 0.5, "n": 10}
    rounds = [{"round": r, "val": {"acc": a, "FT": f, "n": 10}, "val_baseline": base}
              for r, (a, f) in enumerate([(0.5, 0.4), (0.6, 0.6), (0.7, 0.55), (0.7, 0.6), (0.6, 0.6)])]
    assert best_round(rounds)["round"] == 3  # highest FT, accuracy breaks ties, earliest wins a full tie
    v = verdict(rounds)
    assert v["best_round"] == 3 and v["adapted_better"] is True and verdict_line(v) is None
    worse = [dict(r, val={"acc": 0.9, "FT": 0.45, "n": 10}) for r in rounds]
    v = verdict(worse)
    assert v["adapted_better"] is False and "NOT better than the pretrained" in verdict_line(v)
    assert best_round([{"round": 0}]) is None and verdict([{"round": 0}]) is None


@pytest.mark.slow
def test_run_validates_on_carved_photos_and_exports_the_best_round(tiny, tmp_path):  # noqa: F811
    from ftspl.export.from_run import run_model
    from ftspl.train.loop import train
    from ftspl.train.runio import BEST, load_best

    res = train(cfg_for(tiny, tmp_path / "run"))
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["n_source"] == 10  # 12 photos, one per class carved for validation, never trained on
    for rec in res.rounds:
        assert rec["metrics_on"] == "validation photos" and rec["val"]["n"] == 2
        assert rec["val_baseline"] == res.rounds[0]["val_baseline"]  # the pretrained CNN, beside every round
    sel = info["selection"]
    assert sel == verdict(res.rounds) and sel["best_round"] == best_round(res.rounds)["round"]
    assert isinstance(sel["adapted_better"], bool) and "val photos" in sel["criterion"]
    assert load_best(tmp_path / "run")["round"] == sel["best_round"] and (tmp_path / "run" / BEST).exists()
    _img, _mv, meta = run_model(tmp_path / "run")
    assert meta.training["round"] == sel["best_round"] and meta.metrics["round"] == sel["best_round"]


@pytest.mark.slow
def test_explicit_val_photos_are_used_and_nothing_is_carved(tiny, tmp_path):  # noqa: F811
    from ftspl.train.loop import train

    res = train(cfg_for(tiny, tmp_path / "run", val=str(tiny / "source"), rounds=1, epochs=1, warmup_epochs=1))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["n_source"] == 12
    assert res.rounds[-1]["val"]["n"] == 12
    res = train(replace(cfg_for(tiny, tmp_path / "none", rounds=1, epochs=1, warmup_epochs=1), val_frac=0.0))
    assert "val" not in res.rounds[-1] and res.rounds[-1]["metrics_on"] == "source photos"
    sel = json.loads((tmp_path / "none" / "run.json").read_text())["selection"]
    assert sel["best_round"] == 1 and sel["adapted_better"] is None


def test_val_frac_is_validated():
    from ftspl.engine.errors import UsageError
    from ftspl.train.config import TrainConfig, validate

    with pytest.raises(UsageError, match="--val-frac"):
        validate(TrainConfig(val_frac=1.0))
    assert np.isclose(TrainConfig().val_frac, 0.15)


@pytest.mark.slow
def test_val_shapes_switch_the_criterion_to_photo_to_shape_retrieval(tiny, tmp_path):  # noqa: F811
    from ftspl.engine.errors import UsageError
    from ftspl.train.loop import train
    from ftspl.train.validation import CRITERION_SHAPES

    cfg = cfg_for(tiny, tmp_path / "run", val_shapes=str(tiny / "target"), rounds=1, epochs=1, warmup_epochs=1)
    res = train(cfg)
    for rec in res.rounds:
        assert rec["val"]["criterion"] == CRITERION_SHAPES == rec["val_baseline"]["criterion"]
        assert rec["val"]["n"] == 2 and 0 <= rec["val"]["acc"] <= 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["selection"]["criterion"] == CRITERION_SHAPES
    with pytest.raises(UsageError, match="needs validation photos"):
        train(replace(cfg, out=str(tmp_path / "r2"), val_frac=0.0))


@pytest.mark.slow
def test_cli_train_says_which_round_and_whether_it_beat_the_pretrained_cnn(tiny, tmp_path):  # noqa: F811
    from conftest import run_ftspl

    args = ["train", "--source", str(tiny / "source"), "--target", str(tiny / "target"), "--rounds", "1",
            "--epochs", "1", "--warmup-epochs", "1", "--batch-size", "4", "--augment-copies", "1"]
    r = run_ftspl(tmp_path / "home", *args, "--out", str(tmp_path / "a"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    sel = json.loads((tmp_path / "a" / "run.json").read_text())["selection"]
    assert out["adapted_better"] == sel["adapted_better"] and out["selection"]["best_round"] == sel["best_round"]
    r = run_ftspl(tmp_path / "home", *args, "--out", str(tmp_path / "b"), "--preset", "MMD", "--val-frac", "0.3")
    assert r.returncode == 0, r.stderr
    text = r.stdout + r.stderr
    assert "best round on validation" in text and "(CNN " in text
    assert ("NOT better than the pretrained CNN" in text) == (not verdict(
        json.loads((tmp_path / "b" / "metrics.json").read_text())["rounds"])["adapted_better"])
