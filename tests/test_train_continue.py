"""``ftspl train --continue RUN --target ALL/``: a finished run's rounds again on a grown shape set."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from test_train import Killed, _cache, cfg_for, die_after_round_1, same, tiny, weights  # noqa: F401  (fixtures)

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.train.continuation import continued_config, finished_run


@pytest.fixture(scope="module")
def half_run(tiny, tmp_path_factory) -> tuple[Path, Path]:  # noqa: F811
    """A finished run on 2 of the 3 target shapes per class, and the folder of all of them."""
    from ftspl.train.loop import train

    root = tmp_path_factory.mktemp("half")
    half = root / "half"
    for p in sorted((tiny / "target").rglob("*.ply")):
        if not p.stem.endswith("5"):  # tall3, tall4, round3, round4
            (half / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, half / p.parent.name / p.name)
    mp = pytest.MonkeyPatch()  # the module's cache, as test_train's autouse fixture sets it per test
    mp.setenv("FTSPL_CACHE", str(tmp_path_factory.getbasetemp() / "train-cache"))
    try:
        train(cfg_for(tiny, root / "run", target=str(half)))
    finally:
        mp.undo()
    return root / "run", tiny / "target"


@pytest.mark.slow
def test_continue_starts_from_the_runs_network_and_trains_on_every_shape(half_run, tmp_path):
    from ftspl.train.loop import train

    run, everything = half_run
    base_rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    cfg = continued_config(run, everything, tmp_path / "cont")
    assert cfg.init_from == str(run.resolve()) and cfg.target == str(everything)
    assert replace(cfg, target="", out="", init_from=None, extra={}) == replace(
        finished_run(run)[0], target="", out="", extra={})  # everything else is RUN's config
    # without warm-up epochs, round 0 only scores the starting network: a check that it is RUN's
    res = train(replace(cfg, warmup_epochs=0))
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    info = json.loads((tmp_path / "cont" / "run.json").read_text())
    assert info["n_target"] == 6 and json.loads((run / "run.json").read_text())["n_target"] == 4
    chosen = json.loads((run / "run.json").read_text())["selection"]["best_round"]
    assert info["continued_from"]["run"] == str(run.resolve()) and info["continued_from"]["round"] == chosen
    assert info["continued_from"]["n_target"] == 4 and info["source_digest"]
    # RUN's exported network, on RUN's validation photos (the same carve-out)
    assert res.rounds[0]["val"] == next(r["val"] for r in base_rounds if r["round"] == chosen)
    assert res.rounds[2]["selected"] == 6  # pseudo-labels and selection cover the grown set
    assert not same(weights(run), weights(tmp_path / "cont"))
    # a continued run is an ordinary run: it can be continued again
    assert continued_config(tmp_path / "cont", everything, tmp_path / "again").init_from == str((tmp_path / "cont").resolve())


@pytest.mark.slow
def test_a_killed_continuation_resumes_to_the_same_weights(half_run, tmp_path):
    from ftspl.train.loop import train

    run, everything = half_run
    train(continued_config(run, everything, tmp_path / "whole"))

    with pytest.raises(Killed):
        train(continued_config(run, everything, tmp_path / "cut"), on_round=die_after_round_1)
    res = train(continued_config(run, everything, tmp_path / "cut"), resume=True)
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    assert same(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


def test_continue_refuses_what_it_cannot_continue(half_run, tmp_path):
    run, everything = half_run
    with pytest.raises(UsageError, match="no such run folder"):
        continued_config(tmp_path / "nope", everything)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a training run folder"):
        continued_config(tmp_path / "empty", everything)
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    m = json.loads((cut / "metrics.json").read_text())
    (cut / "metrics.json").write_text(json.dumps({"rounds": m["rounds"][:2]}))
    with pytest.raises(UsageError, match=r"stopped after round 1 of 2; finish it first with 'ftspl train --resume"):
        finished_run(cut)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FtsplError, match="no meshes"):  # the scan's one-line file error
        continued_config(run, tmp_path / "nothing")
    with pytest.raises(UsageError, match="keeps .*source photos"):
        continued_config(run, everything, source=tmp_path)
    with pytest.raises(UsageError, match="keeps the backbone"):
        continued_config(run, everything, backbone="alexnet")
    with pytest.raises(UsageError, match="is the run being continued"):
        continued_config(run, everything, out=run)
    assert continued_config(run, everything).out == str(run.with_name(run.name + "-continued"))


def test_continue_refuses_changed_source_photos(half_run, tiny, tmp_path):  # noqa: F811
    run, everything = half_run
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    src = tmp_path / "src"
    shutil.copytree(tiny / "source", src)
    cfg = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**cfg, "source": str(src)}))
    continued_config(moved, everything)  # the same photos elsewhere: fine
    next((src / "tall").glob("*.png")).unlink()
    with pytest.raises(UsageError, match="source photos changed"):
        continued_config(moved, everything)
    shutil.copytree(src / "tall", src / "extra")
    with pytest.raises(UsageError, match="classes"):
        continued_config(moved, everything)


@pytest.mark.slow
def test_cli_continue_json_and_one_line_errors(half_run, tmp_path):
    from conftest import run_ftspl

    run, everything = half_run
    r = run_ftspl(tmp_path / "home", "train", "--continue", str(run), "--target", str(everything), "--out",
                  str(tmp_path / "c"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["continued_from"] == str(run.resolve()) and [x["round"] for x in out["rounds"]] == [0, 1, 2]
    again = ["train", "--continue", str(run), "--target", str(everything), "--out", str(tmp_path / "c"), "--json"]
    r = run_ftspl(tmp_path / "home", *again)
    assert r.returncode == 2 and "--resume" in r.stderr  # the folder holds a run: resume it, never overwrite
    r = run_ftspl(tmp_path / "home", *again, "--resume")  # a finished run resumes to its own rounds
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["rounds"] == out["rounds"]
    (tmp_path / "empty").mkdir()
    r = run_ftspl(tmp_path / "home", "train", "--continue", str(tmp_path / "empty"), "--target", str(everything))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a training run folder" in r.stderr
    r = run_ftspl(tmp_path / "home", "train", "--continue", str(run), "--target", str(everything), "--backbone", "alexnet")
    assert r.returncode == 2 and "keeps the backbone" in r.stderr and "Traceback" not in r.stderr
    r = run_ftspl(tmp_path / "home", "train", "--target", str(everything))
    assert r.returncode == 2 and "--source" in r.stderr and "Traceback" not in r.stderr
