"""The FTSPL loop end to end on tiny data: determinism, label blindness, resume, modes, export;
the config's defaults and caches; target shapes rendered through the render worker."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

torch = pytest.importorskip("torch")

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.train.config import PRESETS, TrainConfig, apply_preset

SHAPES = {
    "tall": lambda s: trimesh.creation.box((0.5 + 0.1 * s, 2.0 + 0.3 * s, 0.6)),
    "round": lambda s: trimesh.creation.icosphere(2, radius=1.0 + 0.1 * s),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """source/<class>/*.png photo-like renders on coloured backgrounds; target/<class>/*.ply meshes."""
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.meshes import Mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    with Renderer(RenderSpec()) as r:
        for label, make in SHAPES.items():
            for s in range(3):
                m = make(s)
                views = r.render(normalize(Mesh(m.vertices.astype(np.float32), m.faces.astype(np.int32)), "y"))
                for v in (1, 5):
                    img = views[v].copy()
                    white = (img > 250).all(-1)
                    img[white] = rng.integers(60, 200, 3)  # a "photo" background
                    p = root / "source" / label / f"{label}{s}_{v}.png"
                    p.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img).save(p)
            for s in range(3, 6):
                p = root / "target" / label / f"{label}{s}.ply"
                p.parent.mkdir(parents=True, exist_ok=True)
                make(s).export(p)
    return root


def cfg_for(tiny: Path, out: Path, **kw) -> TrainConfig:
    base = TrainConfig(
        source=str(tiny / "source"), target=str(tiny / "target"), out=str(out), rounds=2, epochs=2,
        warmup_epochs=2, batch_size=4, augment_copies=1, lr=0.01, seed=3,
    )
    return replace(apply_preset(base, "FTSPL"), **kw)


class Killed(Exception):
    """Raised by :func:`die_after_round_1`: a run stopped as a kill would stop it."""


def die_after_round_1(rec: dict) -> None:
    """An ``on_round`` callback that stops the run once round 1 is on disk."""
    if rec["round"] == 1:
        raise Killed


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)["net"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """One view/feature cache for this module's runs (``$FTSPL_CACHE`` overrides the home's cache)."""
    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path_factory.getbasetemp() / "train-cache"))


@pytest.mark.slow
def test_head_mode_runs_and_reports(tiny, tmp_path):
    from ftspl.train.loop import train

    res = train(cfg_for(tiny, tmp_path / "run"))
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    # class-wise l/L: about half of the 6 shapes in round 1 (rounded per pseudo-class), all in round 2
    assert 2 <= res.rounds[1]["selected"] <= 4 and res.rounds[2]["selected"] == 6
    for r in res.rounds:
        assert 0 <= r["pseudo_acc"] <= 1 and set(r["metrics"]) >= {"NN", "FT", "ST", "DCG", "ANMRR"}
        assert set(r["unsup"]) == {"snd", "centroid_entropy", "centroid_margin"}  # label-free criteria, every round
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())["rounds"]
    assert saved == res.rounds
    assert json.loads((tmp_path / "run" / "run.json").read_text())["class_names"] == ["round", "tall"]


@pytest.mark.slow
def test_target_labels_never_change_a_weight(tiny, tmp_path):
    """Same seed, target labels shuffled (via list files): bit-identical weights. Also proves determinism."""
    from ftspl.train.loop import train

    shapes = sorted((tiny / "target").rglob("*.ply"))
    real = [(p, p.parent.name) for p in shapes]
    shuffled = list(zip(shapes, np.random.default_rng(1).permutation([lab for _, lab in real])))
    for name, pairs in (("a.txt", real), ("b.txt", shuffled)):
        (tmp_path / name).write_text("".join(f"{p} {lab}\n" for p, lab in pairs))
    ra = train(cfg_for(tiny, tmp_path / "A", target=str(tmp_path / "a.txt")))
    rb = train(cfg_for(tiny, tmp_path / "B", target=str(tmp_path / "b.txt")))
    assert same(weights(tmp_path / "A"), weights(tmp_path / "B"))
    assert ra.rounds[-1]["pseudo_acc"] != rb.rounds[-1]["pseudo_acc"] or ra.rounds[-1]["pseudo_acc"] == 0.5


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_result(tiny, tmp_path):
    from ftspl.train.loop import train

    train(cfg_for(tiny, tmp_path / "full"))

    with pytest.raises(Killed):
        train(cfg_for(tiny, tmp_path / "cut"), on_round=die_after_round_1)
    with pytest.raises(UsageError, match="--resume"):
        train(cfg_for(tiny, tmp_path / "cut"))
    res = train(cfg_for(tiny, tmp_path / "cut"), resume=True)
    assert [r["round"] for r in res.rounds] == [0, 1, 2]
    assert same(weights(tmp_path / "full"), weights(tmp_path / "cut"))


@pytest.mark.slow
def test_full_mode_on_cpu(tiny, tmp_path):
    from ftspl.train.loop import train

    cfg = cfg_for(tiny, tmp_path / "full", mode="full", rounds=1, epochs=1, warmup_epochs=1, batch_size=4)
    before = {k: v.clone() for k, v in __import__("ftspl.train.backbone_registry", fromlist=["x"]).build_backbone("efficientnet_lite0").state_dict().items()}
    res = train(cfg)
    assert res.device == "cpu" and len(res.rounds) == 2
    after = weights(tmp_path / "full")
    moved = [k for k in before if not torch.equal(before[k], after["backbone." + k])]
    assert moved, "full mode must fine-tune the backbone"


@pytest.mark.slow
def test_export_run_then_query(tiny, tmp_path):
    """ftspl train -> ftspl export RUN -> ftspl index add -> ftspl query, as a user runs them."""
    from conftest import run_ftspl

    from ftspl.train.loop import train

    train(cfg_for(tiny, tmp_path / "run"))
    home = tmp_path / "home"
    r = run_ftspl(home, "export", str(tmp_path / "run"), "--exporter", "torchscript", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["embed_dim"] == 128 + 256 and info["model_id"].startswith("efficientnet_lite0-ftspl-")
    sel = json.loads((tmp_path / "run" / "run.json").read_text())["selection"]
    assert info["round"] == sel["best_round"] and info["adapted_better"] == sel["adapted_better"]
    man = json.loads((Path(info["model_dir"]) / "manifest.json").read_text())
    assert man["class_names"] == ["round", "tall"] and man["training"]["preset"] == "FTSPL"
    assert run_ftspl(home, "index", "add", str(tiny / "target")).returncode == 0
    photo = next((tiny / "source" / "tall").glob("*.png"))
    r = run_ftspl(home, "query", str(photo), "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"][0]["hits"]) == 3


def test_bad_inputs_are_clear(tiny, tmp_path):
    from ftspl.train.loop import train

    one = tmp_path / "one"
    shutil.copytree(tiny / "source" / "tall", one / "tall")
    with pytest.raises(UsageError, match="at least 2 classes"):
        train(cfg_for(tiny, tmp_path / "r1", source=str(one)))
    empty_cls = tmp_path / "src"
    shutil.copytree(tiny / "source", empty_cls)
    (empty_cls / "ghost").mkdir()
    with pytest.raises(UsageError, match="'ghost' has no photos"):
        train(cfg_for(tiny, tmp_path / "r2", source=str(empty_cls)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FtsplError, match="no meshes"):  # a usage error or the scan's file error
        train(cfg_for(tiny, tmp_path / "r3", target=str(tmp_path / "nothing")))
    from ftspl.engine.errors import UnknownKeyError

    with pytest.raises(UnknownKeyError, match="valid: centroid, classifier, spl"):
        train(cfg_for(tiny, tmp_path / "r4", pseudo="oracle"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_set_their_switches(name):
    cfg = apply_preset(TrainConfig(), name)
    assert cfg.preset == name and all(getattr(cfg, k) == v for k, v in PRESETS[name].items())


def test_train_help_lists_presets():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ftspl", "train", "--help"], check=False, capture_output=True, text=True)
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for name in ("source_only", "IDCA", "ICAV", "FT_centroid_pl", "SPL", "FTSPL", "CORAL", "DANN", "MMD", "--val", "--val-frac", "--val-shapes", "--align-weight", "--align", "--align-phase"):
        assert name in flat
    for flag in ("--no-idca", "--no-icav", "--pseudo", "--selection", "--no-target-ce", "--resume", "--nproc"):
        assert flag in flat


def test_pl_space_is_validated():
    from ftspl.engine.errors import UnknownKeyError
    from ftspl.train.config import validate

    validate(replace(TrainConfig(), pl_space="unit"))
    with pytest.raises(UnknownKeyError, match="embedding, unit"):
        validate(replace(TrainConfig(), pl_space="sphere"))


def test_feature_cache_keys_roundtrip_and_corruption(tmp_path):
    from ftspl.engine.files import sha256_file
    from ftspl.train.backbone_registry import get_spec
    from ftspl.train.featcache import FeatureCache, backbone_id

    pre = get_spec("efficientnet_lite0").preprocess
    cache = FeatureCache(tmp_path / "f", "efficientnet_lite0", pre)
    photo = tmp_path / "p.bin"
    photo.write_bytes(b"pixels")
    d = sha256_file(photo)
    clean_key, aug_key = cache.key(photo=d), cache.key(photo=d, seed=0, copies=4)
    assert len({clean_key, aug_key, cache.key(photo=d, seed=1, copies=4)}) == 3  # the seed matters
    assert FeatureCache(None, "alexnet", pre).key(photo=d) != clean_key  # so does the backbone
    assert cache.get(clean_key) is None
    cache.put(clean_key, np.arange(6, dtype=np.float64).reshape(2, 3))
    got = cache.get(clean_key)
    assert got.dtype == np.float32 and got.tolist() == [[0, 1, 2], [3, 4, 5]]
    (tmp_path / "f" / f"{clean_key}.npy").write_bytes(b"not an array")
    assert cache.get(clean_key) is None  # recomputed, never trusted
    w = tmp_path / "w.pth"
    w.write_bytes(b"weights")
    assert backbone_id("alexnet", None) == "alexnet" and backbone_id("alexnet", str(w)).startswith("alexnet:")


@pytest.mark.slow
def test_head_features_are_cached_and_reused(tiny, tmp_path):
    """A second run on the same files computes no backbone features and trains to the same weights."""
    from ftspl.train.loop import train

    train(cfg_for(tiny, tmp_path / "a"))
    from ftspl.engine.home import Home

    feats = sorted((Home.resolve().cache / "features").glob("*.npy"))
    assert feats
    stamps = {p: p.stat().st_mtime_ns for p in feats}
    res = train(cfg_for(tiny, tmp_path / "b"), return_embeddings=True)
    # none rewritten and none added: a second run that computed features under new keys would add files
    assert {p: p.stat().st_mtime_ns for p in (Home.resolve().cache / "features").glob("*.npy")} == stamps
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    emb = res.embeddings
    assert emb.target.shape[0] == len(emb.target_labels) == len(emb.target_paths)
    assert emb.query is None and sorted(set(emb.source_labels)) == ["round", "tall"]


# -- the config's defaults, the cache root, the up axis -------------------------------------------
def test_config_imports_without_torch():
    """The CLI reads its option defaults from TrainConfig before it knows whether torch is needed."""
    import subprocess
    import sys

    code = ("import sys, ftspl.train.config as c; cfg = c.TrainConfig(); c.apply_preset(cfg, 'SPL'); "
            "print(cfg.epochs, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(TrainConfig().epochs), "False"]


def test_up_is_validated_and_reaches_the_render_spec():
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.errors import UnknownKeyError
    from ftspl.train.config import validate
    from ftspl.train.loop import render_spec_for

    spec = replace(RenderSpec(), look=TrainConfig.look)
    assert TrainConfig().up is None and render_spec_for(TrainConfig()) == spec
    assert render_spec_for(replace(TrainConfig(), up="z")) == spec.with_up("z")
    with pytest.raises(UnknownKeyError, match="valid: y, z"):
        validate(replace(TrainConfig(), up="x"))


def test_cache_root_is_the_homes(tmp_path, monkeypatch):
    from ftspl.engine.home import Home

    monkeypatch.delenv("FTSPL_CACHE")
    monkeypatch.delenv("FTSPL_HOME", raising=False)
    assert Home.resolve(cwd=tmp_path).cache == (tmp_path / ".ftspl" / "cache").resolve()
    assert Home(tmp_path / "h").debian_cache == tmp_path / "h" / "cache" / "debian"
    monkeypatch.setenv("FTSPL_HOME", str(tmp_path / "elsewhere"))
    assert Home.resolve(cwd=tmp_path).cache == (tmp_path / "elsewhere" / "cache").resolve()
    monkeypatch.setenv("FTSPL_CACHE", str(tmp_path / "shared"))
    assert Home(tmp_path / "h").cache == (tmp_path / "shared").resolve()


def test_view_cache_renders_through_the_worker(tmp_path, monkeypatch):
    """Bad files get one reason each (the worker's caps apply), good ones are cached per render spec."""
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.meshes import MeshLimits
    from ftspl.engine.rendering import worker
    from ftspl.train.viewcache import cache_views

    good, broken, big = tmp_path / "good.ply", tmp_path / "broken.obj", tmp_path / "big.ply"
    SHAPES["tall"](0).export(good)
    broken.write_bytes(b"v 0 0 0\nv nan 1 0\nf 1 2 9\n\x00\xff garbage")
    trimesh.creation.icosphere(3).export(big)  # 1280 faces
    paths, kinds = [broken, good, big], ["mesh"] * 3
    folder = tmp_path / "views"
    cv = cache_views(paths, kinds, RenderSpec(), folder, limits=MeshLimits(max_faces=1000))
    assert cv.index == [1] and [p for p, _ in cv.failed] == [str(broken), str(big)]
    assert all(reason and "\n" not in reason for _, reason in cv.failed)
    assert "faces" in cv.failed[1][1]
    y_views = cv.load(0)
    assert y_views.shape == (12, 224, 224, 3) and y_views.dtype == np.uint8

    class NoWorker:
        def __init__(self, *a, **kw):
            raise AssertionError("a cached shape must not start the render worker")

    monkeypatch.setattr(worker, "RenderWorker", NoWorker)
    again = cache_views([good], ["mesh"], RenderSpec(), folder)
    assert again.keys == cv.keys[:1] and np.array_equal(again.load(0), y_views)
    monkeypatch.undo()
    z = cache_views([good], ["mesh"], RenderSpec().with_up("z"), folder)
    assert z.keys != cv.keys[:1] and not np.array_equal(z.load(0), y_views)  # another spec, other views


@pytest.mark.slow
def test_broken_target_file_is_one_line_not_a_crash(tiny, tmp_path):
    """``ftspl train`` skips a broken mesh in the target folder and prints ``path: reason`` for it."""
    from conftest import run_ftspl

    target = tmp_path / "target"
    shutil.copytree(tiny / "target", target)
    broken = target / "tall" / "broken.obj"
    broken.write_bytes(b"\x00\x01 not a mesh")
    r = run_ftspl(tmp_path / "home", "train", "--source", str(tiny / "source"), "--target", str(target),
                  "--out", str(tmp_path / "run"), "--rounds", "1", "--epochs", "1", "--warmup-epochs", "1",
                  "--batch-size", "4", "--augment-copies", "1", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{broken}: ")]
    assert len(lines) == 1, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["skipped"] == 1
    assert json.loads((tmp_path / "run" / "run.json").read_text())["n_target"] == 6
