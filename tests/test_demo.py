"""``ftspl demo``: the whole chain (data -> train -> export -> index -> query -> eval) on the small benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_pick_queries_takes_one_render_per_class():
    from ftspl.cli.demo import _pick_queries

    photos = [(Path(f"q/{c}/m{i}__{k}.jpg"), c) for c in ("bed", "chair", "lamp") for i in range(2)
              for k in ("icon", "r0", "r1")]
    photos.append((Path("q/sofa/s__icon.png"), "sofa"))  # a class with an icon only still gets a row
    picked = _pick_queries(photos, 10)
    assert [lab for _, lab in picked] == ["bed", "chair", "lamp", "sofa"]
    assert all("__r" in p.stem for p, lab in picked if lab != "sofa")
    assert len(_pick_queries(photos, 2)) == 2


def test_finished_run_needs_same_config_and_all_rounds(tmp_path):
    from ftspl.cli.demo import _finished_run
    from ftspl.train.config import TrainConfig

    cfg = TrainConfig(source="s", target="t", out=str(tmp_path), rounds=2)
    assert not _finished_run(tmp_path, cfg)
    (tmp_path / "config.json").write_text(cfg.to_json())
    (tmp_path / "metrics.json").write_text(json.dumps({"rounds": [{}, {}]}))
    assert not _finished_run(tmp_path, cfg)  # killed after round 1
    (tmp_path / "metrics.json").write_text(json.dumps({"rounds": [{}, {}, {}]}))
    assert _finished_run(tmp_path, cfg)
    from dataclasses import replace

    assert not _finished_run(tmp_path, replace(cfg, lr=0.5))


def test_demo_trains_with_the_config_defaults(tmp_path):
    """The demo's budget is TrainConfig's (the study's), not a copy; it validates on val, never on queries."""
    from types import SimpleNamespace

    from ftspl.cli.demo import DemoConfig, _train_config
    from ftspl.train.config import PRESETS, TrainConfig

    data = SimpleNamespace(source=tmp_path / "s", target=tmp_path / "t", val=tmp_path / "v", queries=tmp_path / "q")
    cfg = _train_config(data, tmp_path / "run", DemoConfig(seed=3))
    default = TrainConfig()
    for k in ("rounds", "epochs", "warmup_epochs", "lam", "lr", "augment_copies", "batch_size", "mode", "up"):
        assert getattr(cfg, k) == getattr(default, k), k
    assert cfg.queries == str(tmp_path / "v") and cfg.seed == 3 and cfg.device == "cpu"
    assert cfg.preset == "FTSPL" and all(getattr(cfg, k) == v for k, v in PRESETS["FTSPL"].items())


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, monkeypatch):
    """The real demo: fresh view/feature caches; the Debian packages come from the shared cache when present."""
    from conftest import run_ftspl

    from ftspl.engine.home import Home

    cache = tmp_path / "cache"
    cache.mkdir()
    shared = Home.resolve(cwd=ROOT).debian_cache
    if shared.is_dir():
        (cache / "debian").symlink_to(shared)
    out = tmp_path / "demo"
    monkeypatch.setenv("FTSPL_CACHE", str(cache))
    r = run_ftspl(tmp_path / "home", "demo", "--out", str(out), "--json", timeout=1200)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["model_id"].startswith("efficientnet_lite0-ftspl-")
    assert res["gallery"] == res["models"]["target"] and res["queries_scored"] == res["photos"]["queries"]
    # trained on 18 classes: far above chance (1/18) on held-out photos
    assert res["metrics"]["NN"] > 0.3 and 0 < res["metrics"]["ANMRR"] < 0.8
    assert len(res["pseudo_label_acc"]) == res["config"]["rounds"] + 1
    sheet = Image.open(res["contact_sheet"])
    assert sheet.size[0] > 200 and sheet.size[1] > 200
    assert (out / "run" / "checkpoint.pt").is_file() and (out / "data" / "NOTICE.txt").is_file()
