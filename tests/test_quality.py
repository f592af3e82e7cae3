"""The study's protocol and bookkeeping: tune and report splits apart, the tuning rule, the bootstrap,
the committed grids behind every default, and (slow) a tiny tune + report run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality  # noqa: E402
import studylib  # noqa: E402
import tune  # noqa: E402

from ftspl.data import protocol  # noqa: E402
from ftspl.engine.errors import UsageError  # noqa: E402


def _build(root: Path, seed: int, roles: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"seed": seed, "classes": ["a", "b"], **(protocol.manifest_record(seed) if roles else {})}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# -- the protocol ------------------------------------------------------------------------------------
def test_tune_and_report_seeds_are_disjoint():
    assert not set(protocol.TUNE_SEEDS) & set(protocol.REPORT_SEEDS)
    assert protocol.seed_role(0) == "tune" and protocol.seed_role(5) == "report" and protocol.seed_role(42) == "free"
    assert protocol.SPLITS["val"]["ranks"] == "val_gallery" and protocol.SPLITS["queries"]["ranks"] == "target"


def test_check_use_accepts_only_the_matching_role(tmp_path):
    tune_build, report_build = _build(tmp_path / "s0", 0), _build(tmp_path / "s5", 5)
    protocol.check_use(tune_build, "tune", "val")
    protocol.check_use(report_build, "report", "queries")
    with pytest.raises(UsageError, match="seed 0 is a tune seed and cannot be used to report"):
        protocol.check_use(tune_build, "report", "queries")
    with pytest.raises(UsageError, match="seed 5 is a report seed and cannot be used to tune"):
        protocol.check_use(report_build, "tune", "val")
    with pytest.raises(UsageError, match="val: a tune split cannot be used to report"):
        protocol.check_use(report_build, "report", "val")
    with pytest.raises(UsageError, match="queries: a report split cannot be used to tune"):
        protocol.check_use(tune_build, "tune", "queries")
    with pytest.raises(UsageError, match="built before splits carried roles"):
        protocol.check_use(_build(tmp_path / "old", 5, roles=False), "report", "queries")
    with pytest.raises(UsageError, match="no readable benchmark manifest"):
        protocol.check_use(tmp_path / "nowhere", "report", "queries")


def test_quality_refuses_a_tuning_split_as_a_report_split(tmp_path):
    # by seed number, before any data is built
    with pytest.raises(SystemExit, match="0 are not report seeds"):
        quality.main(["--seeds", "0", "--bench", "folders", "--data-root", str(tmp_path)])
    # by the build's manifest: a folder that says it is a tuning build is refused as a report split
    _build(tmp_path / "s5", 0)
    with pytest.raises(SystemExit, match="seed 0 is a tune seed and cannot be used to report"):
        quality.main(["--seeds", "5", "--bench", "folders", "--data-root", str(tmp_path), "--rows", "CNN",
                      "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_tune_refuses_a_report_seed(tmp_path):
    with pytest.raises(SystemExit, match="5 are not tuning seeds"):
        tune.main(["--seeds", "0,5", "--bench", "folders", "--data-root", str(tmp_path)])


def test_split_scored_names_what_each_purpose_ranks(tmp_path):
    s = studylib.folder_split(_build(tmp_path / "s0", 0), 0)
    assert s.scored("tune") == (s.val, s.val_gallery)
    with pytest.raises(UsageError):
        s.scored("report")


def test_unknown_rows_and_grids_are_one_clear_line():
    with pytest.raises(SystemExit, match="unknown oracle; valid: CNN, CNN_centred"):
        quality.main(["--rows", "FTSPL,oracle"])
    with pytest.raises(SystemExit, match="--grids: unknown nope; valid: all, FTSPL_method"):
        tune.main(["--grids", "nope"])


# -- the tuning rule and the committed grids ------------------------------------------------------------
def _cell(order: int, ft: float, nn: float) -> dict:
    return {"order": order, "mean": {"FT": [ft, 0.0], "NN": [nn, 0.0]}}


def test_rule_is_best_ft_then_nn_then_grid_order():
    assert tune.pick([_cell(0, 0.50, 0.9), _cell(1, 0.52, 0.1)])["order"] == 1  # best FT wins, whatever NN
    assert tune.pick([_cell(0, 0.5200, 0.6), _cell(1, 0.5205, 0.5), _cell(2, 0.519, 0.9)])["order"] == 0  # tie on FT
    assert tune.pick([_cell(0, 0.52, 0.6), _cell(1, 0.52, 0.6)])["order"] == 0  # full tie: the earlier cell


def test_every_row_gets_the_same_tuning_effort():
    per_row: dict[str, int] = {}
    for g in tune.GRIDS.values():
        per_row[g.row] = per_row.get(g.row, 0) + len(g.cells({}))
    assert set(per_row) == {"FTSPL", "source_only", "CORAL", "DANN", "MMD", "JAN"}
    assert len(set(per_row.values())) == 1, per_row
    for name in tune.GRIDS:  # stages start from an earlier stage of the same row
        after = tune.GRIDS[name].after
        assert after is None or tune.GRIDS[after].row == tune.GRIDS[name].row


def test_every_tuned_default_is_its_committed_grids_winner():
    """TrainConfig's and the presets' tuned values are what benchmarks/tune.py chose (results committed)."""
    results = tune.load_results(list(tune.GRIDS))
    assert set(results) == set(tune.GRIDS), f"missing: {set(tune.GRIDS) - set(results)}"
    for name, rec in results.items():
        assert rec["seeds"] and all(protocol.seed_role(s) == "tune" for s in rec["seeds"]), name
        assert rec["winner"]["label"] == tune.pick(rec["cells"])["label"], f"{name}: the rule does not give the winner"
        assert len(rec["cells"]) == len(tune.GRIDS[name].cells({}))
    assert tune.check(results) == []


def test_check_names_a_default_that_differs(tmp_path):
    rec = {"row": "FTSPL", "lives_in": "TrainConfig", "winner": {"fields": {"lam": 123.0}}}
    bad = tune.check({"FTSPL_keep": rec})
    assert len(bad) == 1 and bad[0].startswith("FTSPL_keep: TrainConfig.lam is ") and bad[0].endswith("chose 123.0")
    assert tune.check({"FTSPL_method": rec}) == []  # an earlier stage: its row's last stage is what is checked


# -- aggregation and the bootstrap --------------------------------------------------------------------
def _result(seed: int, values: dict[str, list[float]], groups: list[str]) -> dict:
    return {"seed": seed, "query_groups": groups, "metrics": {m: float(np.mean(values.get(m, [0.5]))) for m in studylib.METRICS},
            "per_query": {m: values.get(m, [0.5] * len(groups)) for m in studylib.PAIRED}}


def test_paired_bootstrap_separates_a_shift_from_noise():
    rng = np.random.default_rng(0)
    groups = [f"m{i // 4}" for i in range(80)]
    a, b, c = [], [], []
    for seed in (5, 6, 7):
        base = rng.uniform(0.3, 0.7, 80)
        vals = lambda x: {m: list(x) for m in studylib.PAIRED}  # noqa: E731
        b.append(_result(seed, vals(base), groups))
        a.append(_result(seed, vals(base + 0.1), groups))  # better by 0.1 on every query
        c.append(_result(seed, vals(base + rng.normal(0, 0.05, 80)), groups))  # noise only
    shift = studylib.paired(a, b)
    assert shift["FT"]["mean"] == pytest.approx(0.1) and not shift["FT"]["within_noise"]
    assert shift["FT"]["ci95"][0] > 0.09
    assert shift["ANMRR"]["mean"] == pytest.approx(-0.1)  # higher ANMRR is worse: read as a loss
    noise = studylib.paired(c, b)
    assert noise["FT"]["within_noise"] and noise["FT"]["ci95"][0] < 0 < noise["FT"]["ci95"][1]
    assert shift["seeds"] == [5, 6, 7]


def test_paired_refuses_rows_scored_on_other_queries():
    a = [_result(5, {}, ["m1", "m2"])]
    b = [_result(5, {}, ["m1", "m3"])]
    with pytest.raises(ValueError, match="different queries"):
        studylib.paired(a, b)


def test_mean_std_is_the_sample_std_over_seeds():
    rs = [{"metrics": {m: v for m in studylib.METRICS}} for v in (0.5, 0.7, 0.9)]
    mean, std = studylib.mean_std(rs)["NN"]
    assert mean == pytest.approx(0.7) and std == pytest.approx(0.2)


def test_score_ranks_perfect_embeddings_perfectly_and_per_query():
    q = np.eye(3)
    t = np.repeat(np.eye(3), 2, axis=0) + 0.01
    m, per, pr = studylib.score(q, ["a", "b", "c"], t, ["a", "a", "b", "b", "c", "c"])
    assert m["NN"] == 1.0 and m["FT"] == 1.0 and m["ANMRR"] == pytest.approx(0.0)
    assert per["FT"] == [1.0, 1.0, 1.0] and len(pr["precision"]) == 6


def test_query_groups_are_the_photographed_models():
    assert studylib.query_groups(["/x/chair/abc__r0.jpg", "/x/chair/abc__icon.png", "/x/t/def__r3.jpg"]) == \
        ["abc", "abc", "def"]


def test_markdown_has_the_paper_numbers_and_marks_noise():
    row = {m: [0.5, 0.01] for m in studylib.METRICS}
    d = {m: {"mean": 0.01, "seed_std": 0.0, "ci95": [-0.01, 0.03], "within_noise": True} for m in studylib.PAIRED}
    md = quality.markdown({"rows": {"source_only": row, "FTSPL": row}, "paired": {"FTSPL": {"source_only": d}},
                           "config": {"seeds": [5, 6]}})
    assert "0.874 0.665 0.844 0.164 0.704 0.316" not in md.split("| source_only |")[1].split("\n")[0]
    assert "0.424 0.323 0.469 0.099 0.345 0.667" in md  # the paper's fine-tuned CNN, beside source_only
    assert "+0.010 [-0.010, +0.030]*" in md


# -- slow: a tiny tune and report, end to end -------------------------------------------------------
def _tiny_builds(root: Path) -> None:
    """s0 (a tuning build) and s5 (a report build): photos and meshes of two shape classes."""
    from test_train import SHAPES

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.meshes import Mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    rng = np.random.default_rng(0)
    with Renderer(RenderSpec()) as r:
        for seed in (0, 5):
            build = _build(root / f"s{seed}", seed)
            for label, make in SHAPES.items():
                for s in range(10):
                    group = ["source", "source", "source", "val", "val", "queries", "queries", "target", "target",
                             "target"][s]
                    m = make(s + seed)
                    if group == "target" or (group == "source" and s < 2):
                        folder = "target" if group == "target" else "val_gallery"
                        p = build / folder / label / f"{label}{s}" / f"{label}{s}.ply"
                        p.parent.mkdir(parents=True, exist_ok=True)
                        m.export(p)
                    if group == "target":
                        continue
                    views = r.render(normalize(Mesh(m.vertices.astype(np.float32), m.faces.astype(np.int32)), "y"))
                    for v in (1, 5):
                        img = views[v].copy()
                        img[(img > 250).all(-1)] = rng.integers(60, 200, 3)
                        p = build / group / label / f"{label}{s}__r{v}.png"
                        p.parent.mkdir(parents=True, exist_ok=True)
                        Image.fromarray(img).save(p)


@pytest.mark.slow
def test_tiny_tune_then_report(tmp_path, monkeypatch):
    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path / "cache"))
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "out"
    _tiny_builds(data)
    common = ["--bench", "folders", "--data-root", str(data), "--work", str(work), "--out", str(out), "--quick"]
    assert tune.main(["--grids", "FTSPL_keep", "--seeds", "0", *common]) == 0
    for name in ("FTSPL_method", "FTSPL_budget", "FTSPL_keep"):  # a stage runs the stages it starts from
        rec = json.loads((out / f"tune_{name}.json").read_text())
        assert rec["seeds"] == [0] and len(rec["cells"]) == len(tune.GRIDS[name].cells({}))
        assert rec["winner"]["label"] == tune.pick(rec["cells"])["label"]
        assert all(c["per_seed"]["0"]["FT"] >= 0 for c in rec["cells"])
    # tuning scored only the val photos against the val gallery of the tuning build
    results = list((work / "seed0" / "tune").glob("FTSPL-*.json"))
    assert results and all(json.loads(p.read_text())["n_gallery"] == 4 for p in results)
    assert not (work / "seed5").exists()

    assert quality.main(["--seeds", "5", "--rows", "CNN,CNN_centred,source_only,FTSPL", *common]) == 0
    res = json.loads((out / "quality.json").read_text())
    assert set(res["rows"]) == {"CNN", "CNN_centred", "source_only", "FTSPL"}
    assert res["config"]["seeds"] == [5]
    assert set(res["paired"]["FTSPL"]) == {"CNN", "CNN_centred", "source_only"}
    assert all(json.loads(p.read_text())["n_gallery"] == 6 for p in (work / "seed5" / "report").glob("*.json"))
    assert (work / "figures" / "seed5" / "FTSPL.npz").exists()
    # a second call reuses every cell instead of training again
    stamp = {p: p.stat().st_mtime_ns for p in (work / "seed5" / "report").glob("*.json")}
    assert quality.main(["--seeds", "5", "--rows", "CNN,CNN_centred,source_only,FTSPL", *common]) == 0
    assert {p: p.stat().st_mtime_ns for p in (work / "seed5" / "report").glob("*.json")} == stamp


# -- the published figures are the study's ---------------------------------------------------------
def test_quality_doc_and_readme_show_the_committed_study():
    """Every table row of benchmarks/results/quality.md stands in docs/QUALITY.md, and the README's
    FTSPL / source_only / CNN / JAN figures are quality.json's, on report seeds only."""
    md = (ROOT / "benchmarks" / "results" / "quality.md").read_text()
    doc = (ROOT / "docs" / "QUALITY.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| row |")]
    assert len(rows) > 20 and all(ln in doc for ln in rows), [ln for ln in rows if ln not in doc][:3]
    res = json.loads((ROOT / "benchmarks" / "results" / "quality.json").read_text())
    assert all(protocol.seed_role(s) == "report" for s in res["config"]["seeds"]) and not res["config"]["quick"]
    readme = (ROOT / "README.md").read_text()
    for row, metric in (("FTSPL", "FT"), ("source_only", "FT"), ("FTSPL", "NN"), ("source_only", "NN"),
                        ("CNN", "FT"), ("JAN", "FT")):
        assert f"{res['rows'][row][metric][0]:.3f}" in readme, (row, metric)
    tuned = (ROOT / "benchmarks" / "results" / "tune.md").read_text()
    assert all(f"### {name} " in tuned for name in tune.GRIDS)


def test_the_rooms_table_in_the_doc_is_the_result_files():
    """docs/QUALITY.md's "Photos of real rooms" table is what benchmarks/rooms_table.py assembles from the
    committed looks, scenes and regions results, and the shipped defaults are the ones those files chose."""
    import rooms_table

    from ftspl.engine.scoring import regions as R
    from ftspl.train.config import TrainConfig

    doc = (ROOT / "docs" / "QUALITY.md").read_text()
    table = rooms_table.markdown(rooms_table.merged(rooms_table.rows()))
    assert table in doc
    res = lambda name: json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())  # noqa: E731
    assert TrainConfig.look == res("looks")["decision"]["look"]
    decision = res("regions")["decision"]
    assert (R.DEFAULT_REGIONS, R.DEFAULT_REGION_FUSION, tuple(R.DEFAULT_SCALES)) == \
        (decision["regions"], decision["region_fusion"], tuple(decision["scales"]))
    assert all(protocol.seed_role(s) == "tune" for name in ("looks", "scenes", "regions")
               for s in res(name)["config"]["seeds"])
    reported = [s for name in ("looks", "scenes", "regions") for s in res(name)["config"]["report_seeds"]]
    assert reported and all(protocol.seed_role(s) == "report" for s in reported)
    assert all(r["cells"]["queries"] for r in rooms_table.merged(rooms_table.rows())), "a row without report queries"


def test_a_flag_the_user_typed_wins_over_a_presets_tuned_value(tmp_path, monkeypatch):
    """A preset brings its tuned values (config.TUNED); what the user chose explicitly still wins."""
    from typer.testing import CliRunner

    import ftspl.cli.train_cmds as train_cmds
    from ftspl.cli.main import app
    from ftspl.modelling import train_config
    from ftspl.train.config import TUNED, TrainConfig

    jan = TUNED["JAN"]
    cfg = train_config("JAN", None, set(), lr=TrainConfig().lr, epochs=TrainConfig().epochs)  # untyped defaults
    assert (cfg.lr, cfg.keep_pretrained, cfg.align_weight) == (jan["lr"], jan["keep_pretrained"], jan["align_weight"])
    cfg = train_config("JAN", None, {"lr"}, lr=0.05)  # typed
    assert cfg.lr == 0.05 and cfg.keep_pretrained == jan["keep_pretrained"] and cfg.preset == "JAN"
    assert train_config("JAN", lr=0.05).lr == 0.05  # the Python API: every setting given is chosen

    seen = {}
    monkeypatch.setattr(train_cmds, "train_cmd", lambda preset, settings, overrides, *a, explicit=None, **k:
                        seen.update(cfg=train_config(preset, overrides, explicit, **settings)))
    args = ["train", "--source", str(tmp_path), "--target", str(tmp_path), "--preset", "JAN"]
    assert CliRunner().invoke(app, [*args, "--lr", "0.05"]).exit_code == 0
    assert seen["cfg"].lr == 0.05 and seen["cfg"].epochs == jan["epochs"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert seen["cfg"].lr == jan["lr"] and seen["cfg"].keep_pretrained == jan["keep_pretrained"]
