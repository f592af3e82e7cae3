"""Which round to keep: the per-round reference (``queries_shapes``), the study's criteria, regret and
rule (benchmarks/selection_study.py), and its refusal of report seeds and report builds."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import selection_study as study  # noqa: E402

from ftspl.data import protocol  # noqa: E402
from ftspl.engine.errors import UsageError  # noqa: E402
from ftspl.train.config import TrainConfig, validate  # noqa: E402

pytest.importorskip("torch")
from test_train import _cache, cfg_for, same, tiny, weights  # noqa: E402, F401  (fixtures)


# -- the study's pure functions ----------------------------------------------------------------------
def _round(r: int, ref: float, val: tuple[float, float], snd: float, ent: float, margin: float) -> dict:
    return {"round": r, "reference": {"FT": ref, "NN": ref}, "val": {"FT": val[0], "acc": val[1], "n": 10},
            "unsup": {"snd": snd, "centroid_entropy": ent, "centroid_margin": margin}}


ROUNDS = [  # reference FT peaks at round 2, as the val FT does; the val accuracy peaks at round 3
    _round(0, 0.50, (0.40, 0.60), 1.0, 0.9, 0.1),
    _round(1, 0.55, (0.45, 0.65), 2.0, 0.8, 0.2),
    _round(2, 0.60, (0.50, 0.70), 3.0, 0.7, 0.1),
    _round(3, 0.58, (0.48, 0.75), 2.5, 0.6, 0.3),
    _round(4, 0.52, (0.42, 0.70), 0.5, 0.5, 0.05),
]


def test_spearman_ranks_ties_and_tuples():
    assert study.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert study.spearman([3, 2, 1], [10, 20, 30]) == pytest.approx(-1.0)
    assert study.spearman([(1, 0), (1, 1), (2, 0)], [1, 2, 3]) == pytest.approx(1.0)  # lexicographic
    assert study.spearman([1, 1, 1], [1, 2, 3]) is None
    assert study.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # average ranks for ties


def test_each_criterion_keeps_a_round_and_pays_its_regret():
    got = study.study_run(ROUNDS)
    assert got[study.SHIPPED] == {"round": 2, "regret": 0.0, "spearman": 1.0}
    assert got["val acc, FT"]["round"] == 3 and got["val acc, FT"]["regret"] == pytest.approx(0.02)
    assert got["snd"]["round"] == 2 and got["snd"]["spearman"] == pytest.approx(0.9)
    assert got["centroid_entropy"] == {"round": 4, "regret": pytest.approx(0.08), "spearman": 0.3}  # lower is better
    assert got["centroid_margin"]["round"] == 3
    assert got["last round"] == {"round": 4, "regret": pytest.approx(0.08), "spearman": 0.3}
    # the shipped criterion is the one training keeps its round by
    from ftspl.train.validation import best_round

    assert best_round(ROUNDS)["round"] == got[study.SHIPPED]["round"]
    # rounds without the criterion's value are left out, and a run without any is not scored on it
    no_val = [{k: v for k, v in r.items() if k != "val"} for r in ROUNDS]
    assert study.SHIPPED not in study.study_run(no_val) and "snd" in study.study_run(no_val)


def test_the_rule_gives_a_tie_to_the_shipped_criterion():
    runs = {"a": study.study_run(ROUNDS), "b": study.study_run(ROUNDS[:2] + ROUNDS[3:])}
    summary = study.summarise(runs)
    assert summary["val acc, FT"]["runs"] == 2 and summary["last round"]["rounds_kept"] == [4, 4]
    assert study.decide(summary) == study.SHIPPED
    tie = {study.SHIPPED: {"mean_regret": 0.0105}, "snd": {"mean_regret": 0.0100}}
    assert study.decide(tie) == study.SHIPPED
    clear = {study.SHIPPED: {"mean_regret": 0.0200}, "snd": {"mean_regret": 0.0100}, "last round": {"mean_regret": 0.0105}}
    assert study.decide(clear) == "snd"


def test_the_study_refuses_report_seeds_and_report_builds(tmp_path):
    with pytest.raises(SystemExit, match="5 are not tuning seeds"):
        study.main(["--seeds", "0,5", "--bench", "folders", "--data-root", str(tmp_path)])
    build = tmp_path / "s0"  # a folder named like a tuning seed whose manifest says it is report seed 5
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({"seed": 5, **protocol.manifest_record(5)}))
    with pytest.raises(SystemExit, match="seed 5 is a report seed and cannot be used to tune"):
        study.main(["--seeds", "0", "--bench", "folders", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit, match="--rows: unknown CNN"):
        study.main(["--rows", "CNN"])


# -- the per-round reference ------------------------------------------------------------------------
def test_queries_shapes_need_queries_and_leave_tuning_keys_alone():
    with pytest.raises(UsageError, match="queries_shapes .* needs queries"):
        validate(TrainConfig(queries_shapes="gallery"))
    from studylib import cell_key

    cfg = TrainConfig(source="s", target="t")
    import dataclasses

    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "queries_shapes"}
    old = dataclasses.make_dataclass("TrainConfig", list(fields))(**fields)  # a config from before the field
    assert cell_key("FTSPL", old, "tune") == cell_key("FTSPL", cfg, "tune")
    assert cell_key("FTSPL", replace(cfg, queries_shapes="g"), "tune") != cell_key("FTSPL", cfg, "tune")


@pytest.mark.slow
def test_each_round_records_the_queries_ranking_their_own_shapes(tiny, tmp_path):  # noqa: F811
    """queries_shapes = the target folder: each round's ``reference`` equals the ``metrics`` of the same
    run without it (its queries rank the target), and the weights are the same (the reference trains nothing)."""
    from ftspl.train.loop import train

    base = cfg_for(tiny, tmp_path / "a", queries=str(tiny / "source"), rounds=2, epochs=1, warmup_epochs=1)
    a = train(replace(base, queries_shapes=str(tiny / "target")))
    b = train(replace(base, out=str(tmp_path / "b")))
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert [r["round"] for r in a.rounds] == [0, 1, 2]
    for ra, rb in zip(a.rounds, b.rounds):
        assert ra["reference_on"] == "queries ranking queries_shapes" and "reference" not in rb
        assert rb["metrics_on"] == "queries" and ra["metrics_on"] == "validation photos"  # not the queries
        assert set(ra["reference"]) >= {"NN", "FT", "ST", "DCG"} and ra["reference"] == rb["metrics"]
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())["rounds"]
    assert [r["reference"] for r in saved] == [r["reference"] for r in a.rounds]


@pytest.mark.slow
def test_tiny_study_runs_its_cells_on_the_tuning_split(tmp_path, monkeypatch):
    from studylib import QUICK
    from test_quality import _tiny_builds

    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path / "cache"))
    data, work, out = tmp_path / "data", tmp_path / "work", tmp_path / "selection.json"
    _tiny_builds(data)
    args = ["--seeds", "0", "--rows", "FTSPL", "--bench", "folders", "--data-root", str(data), "--work", str(work),
            "--out", str(out), "--quick"]
    assert study.main(args) == 0
    rec = json.loads(out.read_text())
    assert rec["command"].startswith("python benchmarks/selection_study.py") and rec["config"]["seeds"] == [0]
    assert rec["winner"] in rec["summary"] and rec["rule"] == study.RULE
    (run,) = rec["runs"]
    assert [r["round"] for r in run["rounds"]] == list(range(QUICK["rounds"] + 1))
    assert all(0 <= r["reference"]["FT"] <= 1 and r["val"]["n"] > 0 for r in run["rounds"])
    assert run["criteria"][study.SHIPPED]["round"] == run["kept_round"]  # what training itself kept
    cfg = json.loads(next((work / "seed0" / "selection").glob("run-FTSPL-*/config.json")).read_text())
    assert (Path(cfg["queries"]).name, Path(cfg["queries_shapes"]).name) == ("val", "val_gallery")
    assert not (work / "seed5").exists()
    stamp = {p: p.stat().st_mtime_ns for p in (work / "seed0" / "selection").glob("*.json")}
    assert study.main(args) == 0  # a second call reads the cached runs
    assert {p: p.stat().st_mtime_ns for p in (work / "seed0" / "selection").glob("*.json")} == stamp
