"""The quality study's bookkeeping (aggregation, table, verdict), its figures, and (slow) a quick real run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality


def _metrics(v: float) -> dict:
    return {m: (1 - v if m == "ANMRR" else v) for m in quality.METRICS}


def test_aggregate_mean_and_sample_std():
    per_seed = {0: {"FTSPL": {"metrics": _metrics(0.5)}}, 1: {"FTSPL": {"metrics": _metrics(0.7)}},
                2: {"FTSPL": {"metrics": _metrics(0.9)}}}
    agg = quality.aggregate(per_seed, ["FTSPL", "CNN"])
    assert list(agg) == ["FTSPL"]  # rows without results are left out, not zero-filled
    mean, std = agg["FTSPL"]["NN"]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)  # ddof=1
    assert agg["FTSPL"]["ANMRR"][0] == pytest.approx(0.3)


def test_beats_uses_one_std_and_reads_anmrr_as_lower_is_better():
    rows = {
        "source_only": {m: [0.5, 0.01] for m in quality.METRICS},
        "FTSPL": {m: [0.52, 0.03] for m in quality.METRICS},
    }
    rows["FTSPL"]["NN"] = [0.6, 0.02]
    rows["FTSPL"]["ANMRR"] = [0.45, 0.02]  # lower ANMRR: a gain of 0.05
    v = quality.beats(rows)
    assert v["NN"]["beats_by_1std"] and v["ANMRR"]["beats_by_1std"]
    assert v["ANMRR"]["gain"] == pytest.approx(0.05)
    assert not v["FT"]["beats_by_1std"]  # +0.02 is inside max(std) = 0.03


def test_markdown_table_has_every_row_and_the_paper_numbers():
    rows = {r: {m: [0.1, 0.01] for m in quality.METRICS} for r in ("CNN", "source_only", "FTSPL")}
    md = quality.markdown(rows, 3)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert len(lines) == 4  # header + 3 rows
    assert "0.874 0.665 0.844 0.164 0.704 0.316" in md  # the paper's FTSPL on MI3DOR (Table IV)
    assert "0.424 0.323 0.469 0.099 0.345 0.667" in md  # the paper's fine-tuned CNN, beside source_only
    assert "| CNN |" in md and md.count(" - |") >= 1


def test_study_budget_is_the_train_configs_default():
    """One copy of the tuned budget: the study trains with what ``ftspl train`` defaults to."""
    from dataclasses import asdict

    from ftspl.train.config import TrainConfig

    default = TrainConfig()
    study = asdict(quality.StudyConfig())
    assert {k: v for k, v in study.items() if k not in ("mode", "device")} == {
        k: getattr(default, k) for k in study if k not in ("mode", "device")}
    assert study["mode"] == default.mode == "head"
    assert (default.rounds, default.warmup_epochs, default.epochs, default.lam) == (5, 5, 4, 0.25)


def test_unknown_row_is_one_clear_line(capsys):
    with pytest.raises(SystemExit, match="unknown row.*valid: CNN"):
        quality.main(["--rows", "FTSPL,oracle", "--data", "nowhere"])


# -- figures on a synthetic work folder ------------------------------------------------------------
@pytest.fixture
def fake_work(tmp_path, monkeypatch) -> Path:
    """What quality.py leaves in WORK for two seeds: <row>.json + <row>.npz, with real tiny meshes."""
    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    classes = ["box", "ball", "cone"]
    meshes, photos = [], []
    for c, make in zip(classes, (lambda: trimesh.creation.box((1, 2, 1)), lambda: trimesh.creation.icosphere(1),
                                 lambda: trimesh.creation.cone(1, 2))):
        for i in range(3):
            p = tmp_path / "target" / c / f"{c}{i}.ply"
            p.parent.mkdir(parents=True, exist_ok=True)
            make().export(p)
            meshes.append((str(p), c))
        for i in range(2):
            q = tmp_path / "queries" / c / f"{c}{i}.png"
            q.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(q)
            photos.append((str(q), c))
    work = tmp_path / "work"
    for seed in (0, 1):
        d = work / f"seed{seed}"
        d.mkdir(parents=True)
        for row in ("CNN", "source_only", "FT", "SPL", "FTSPL", "FTSPL_global"):
            centres = rng.normal(size=(3, 8))
            q = np.stack([centres[classes.index(c)] + 0.3 * rng.normal(size=8) for _, c in photos])
            t = np.stack([centres[classes.index(c)] + 0.3 * rng.normal(size=8) for _, c in meshes])
            emb = type("E", (), {})()
            emb.query, emb.target = q, t
            emb.query_labels, emb.target_labels = [c for _, c in photos], [c for _, c in meshes]
            emb.query_paths, emb.target_paths = [p for p, _ in photos], [p for p, _ in meshes]
            metrics, pr = quality.score(emb)
            quality.save_embeddings(d / f"{row}.npz", emb)
            acc = [] if row in ("CNN", "source_only") else [0.5, 0.6 + 0.01 * seed, 0.7]
            (d / f"{row}.json").write_text(json.dumps({
                "metrics": metrics, "pr": pr, "pseudo_acc_per_round": acc,
                "pseudo_acc_selected_per_round": [None, 0.8, 0.75] if acc else [],
            }))
    return work


def test_figures_are_written(fake_work, tmp_path):
    pytest.importorskip("sklearn")  # t-SNE; a dev dependency
    import figures

    out = tmp_path / "figs"
    assert figures.main(["--work", str(fake_work), "--out", str(out), "--seeds", "0,1"]) == 0
    for name in ("pr_curves.png", "tsne.png", "retrieval_examples.png", "pseudo_label_accuracy.png"):
        img = Image.open(out / name)
        assert img.size[0] > 300 and img.size[1] > 200
        # not a blank canvas: a plotted figure has many distinct colours
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_score_ranks_perfect_embeddings_perfectly():
    emb = type("E", (), {})()
    emb.query = np.eye(3)
    emb.target = np.repeat(np.eye(3), 2, axis=0) + 0.01
    emb.query_labels = ["a", "b", "c"]
    emb.target_labels = ["a", "a", "b", "b", "c", "c"]
    m, pr = quality.score(emb)
    assert m["NN"] == 1.0 and m["FT"] == 1.0 and m["ANMRR"] == pytest.approx(0.0)
    assert len(pr["precision"]) == 6


# -- slow: the real study, tiny ------------------------------------------------------------------
@pytest.mark.slow
def test_quick_study_on_tiny_data(tmp_path, monkeypatch):
    from test_train import SHAPES

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.meshes import Mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    with Renderer(RenderSpec()) as r:
        for label, make in SHAPES.items():
            for s in range(5):
                m = make(s)
                views = r.render(normalize(Mesh(m.vertices.astype(np.float32), m.faces.astype(np.int32)), "y"))
                img = views[1].copy()
                img[(img > 250).all(-1)] = rng.integers(60, 200, 3)
                group = "source" if s < 3 else "queries"
                p = data / group / label / f"{label}{s}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(p)
            for s in range(5, 8):
                p = data / "target" / label / f"{label}{s}.ply"
                p.parent.mkdir(parents=True, exist_ok=True)
                make(s).export(p)
    out = tmp_path / "out"
    rc = quality.main(["--quick", "--data", str(data), "--seeds", "0,1", "--rows", "CNN,source_only,FTSPL",
                       "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "quality.json").read_text())
    assert set(res["rows"]) == {"CNN", "source_only", "FTSPL"}
    for row in res["rows"].values():
        assert set(row) == set(quality.METRICS)
        assert all(len(v) == 2 and 0 <= v[0] <= 1 and v[1] >= 0 for v in row.values())
    assert res["config"]["seeds"] == [0, 1] and res["config"]["study"]["mode"] == "head"
    assert len(res["pseudo_acc"]["0"]["FTSPL"]) == quality.QUICK.rounds + 1
    assert "| FTSPL |" in (out / "quality.md").read_text()
    # a second call resumes from the per-run results instead of training again
    before = (tmp_path / "work" / "seed0" / "FTSPL.json").stat().st_mtime_ns
    assert quality.main(["--quick", "--data", str(data), "--seeds", "0", "--rows", "FTSPL",
                         "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    assert (tmp_path / "work" / "seed0" / "FTSPL.json").stat().st_mtime_ns == before


def test_finished_row_is_reused_only_for_the_same_config(tmp_path, monkeypatch):
    """A rerun with other flags in the same --work must train again, not report the old numbers."""
    import types
    from dataclasses import replace

    from ftspl.train import loop

    calls = []

    def fake_train(cfg, return_embeddings=False, home=None):
        calls.append(cfg.lam)
        emb = types.SimpleNamespace(query_labels=np.zeros(3), target_labels=np.zeros(4))
        return types.SimpleNamespace(embeddings=emb, rounds=[])

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr(quality, "score", lambda emb: (_metrics(0.5), {}))
    monkeypatch.setattr(quality, "save_embeddings", lambda path, emb: None)
    split = quality.Split(source=tmp_path / "s", queries=tmp_path / "q", target=tmp_path / "t", classes=["a"], counts={})
    study = quality.StudyConfig()
    quality.run_row("FTSPL", 0, split, study, tmp_path)
    quality.run_row("FTSPL", 0, split, study, tmp_path)
    assert len(calls) == 1  # same config: the finished result is reused
    quality.run_row("FTSPL", 0, split, replace(study, lam=study.lam / 2), tmp_path)
    assert len(calls) == 2  # other lambda: trained again
    quality.run_row("FTSPL", 0, replace(split, queries=tmp_path / "val"), replace(study, lam=study.lam / 2), tmp_path)
    assert len(calls) == 3  # other query set (--eval-on val): scored again


def test_paired_differences_are_per_seed_and_read_anmrr_as_a_gain():
    per_seed = {s: {"CNN": {"metrics": _metrics(0.4)}, "source_only": {"metrics": _metrics(0.5 + 0.1 * s)},
                    "FTSPL": {"metrics": _metrics(0.6 + 0.2 * s)}} for s in (0, 1, 2)}
    del per_seed[2]["CNN"]  # a seed without the reference is left out of that pairing
    d = quality.paired_differences(per_seed, ["CNN", "source_only", "FTSPL", "DANN"])
    mean, std, n = d["FTSPL"]["vs_source_only"]["NN"]
    assert (mean, n) == (pytest.approx(0.2), 3) and std == pytest.approx(0.1)  # diffs 0.1, 0.2, 0.3
    assert d["FTSPL"]["vs_source_only"]["ANMRR"][0] == pytest.approx(0.2)  # lower ANMRR is a positive gain
    assert d["FTSPL"]["vs_CNN"]["NN"][2] == 2 and d["FTSPL"]["vs_CNN"]["NN"][0] == pytest.approx(0.3)
    assert "DANN" not in d and "vs_CNN" not in d["CNN"] and "vs_source_only" not in d["source_only"]


def test_paired_differences_on_the_synthetic_work_folder(fake_work):
    per_seed = {s: {r: json.loads((fake_work / f"seed{s}" / f"{r}.json").read_text())
                    for r in ("CNN", "source_only", "FTSPL")} for s in (0, 1)}
    d = quality.paired_differences(per_seed, ["CNN", "source_only", "FTSPL"])
    for m in quality.METRICS:
        diffs = [per_seed[s]["FTSPL"]["metrics"][m] - per_seed[s]["CNN"]["metrics"][m] for s in (0, 1)]
        if m == "ANMRR":
            diffs = [-x for x in diffs]
        assert d["FTSPL"]["vs_CNN"][m][0] == pytest.approx(np.mean(diffs), abs=1e-4)
        assert d["FTSPL"]["vs_CNN"][m][1] == pytest.approx(np.std(diffs, ddof=1), abs=1e-4)


def test_table_i_baselines_are_rows():
    from ftspl.train.config import PRESETS

    for row in ("CORAL", "DANN", "MMD", "JAN"):
        assert row in quality.ROWS and row in PRESETS
