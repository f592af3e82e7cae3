"""``index add --ray``: a local Ray (2 CPUs, no dashboard, a small object store) gives the same index as one machine.

One Ray instance serves the module (it takes seconds to start). The CLI tests
join it by address, as ``--ray HOST:PORT`` would join a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.scale.cluster import plan_actors, render_share

GALLERY_MESHES = 7  #: meshes in the test gallery; it also holds one view folder and one broken file
LEAKED: list[str] = []  #: why the module's Ray found another one already attached (see the last test)


# ---------------------------------------------------------------- planning (no Ray needed)


def test_plan_splits_cpus_by_stage_cost_and_gives_each_gpu_an_encoder() -> None:
    p = plan_actors(16, 0, "auto")  # a grey fp32 model: about a third of the CPU time renders
    assert (p.render_actors, p.encode_actors, p.cpus_per_actor, p.encode_gpus, p.encode_device) == (6, 10, 1.0, 0.0, "cpu")
    # material views with the int8 encoder (the defaults): rendering is about two thirds of the work
    assert render_share("materials", "int8") > 0.6 > render_share("grey", "int8") > 0.5 > render_share("grey", "fp32")
    p = plan_actors(16, 0, "auto", share=render_share("materials", "int8"))
    assert (p.render_actors, p.encode_actors) == (11, 5)
    p = plan_actors(16, 2, "auto")  # each GPU actor preprocesses on 4 CPUs; the other 8 render
    assert (p.render_actors, p.encode_actors, p.encode_gpus, p.encode_device, p.encode_cpus) == (8, 2, 1.0, "auto", 4.0)
    p = plan_actors(4, 2, "cuda")  # too few CPUs for that: one each
    assert (p.render_actors, p.encode_actors, p.encode_cpus, p.cpus_per_actor) == (2, 2, 1.0, 1.0)
    assert plan_actors(16, 2, "cpu").encode_gpus == 0.0  # --device cpu never asks Ray for a GPU
    p = plan_actors(1, 0, "auto")  # one CPU, two actors: half a CPU each
    assert (p.render_actors, p.encode_actors, p.cpus_per_actor, p.llvmpipe_threads) == (1, 1, 0.5, 1)
    assert plan_actors(8, 0, "auto", render_actors=2, encode_actors=3).cpus_per_actor == 1.0
    with pytest.raises(FtsplError, match="no GPUs"):
        plan_actors(8, 0, "cuda")


def test_bad_ray_targets_fail_in_seconds_with_one_line(model_home: Path, tmp_path: Path) -> None:
    from conftest import run_ftspl

    from ftspl.scale.cluster import check_target

    with pytest.raises(UsageError, match="give auto, local or a cluster address"):
        check_target("--rebuild")
    with pytest.raises(UsageError, match="not HOST:PORT"):
        check_target("somehost")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "a.stl").write_text("solid a\nendsolid a\n")
    t0 = time.monotonic()
    r = run_ftspl(model_home, "index", "add", str(tmp_path / "g"), "--ray", "127.0.0.1:1", timeout=60)
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and "nothing answers at 127.0.0.1:1" in r.stderr


def test_encode_stage_matches_the_local_encoder_with_several_preprocessing_threads(exported_models: Path) -> None:
    """The actor class alone (no Ray): failed rows pass through, embeddings equal the engine's."""
    from ftspl.engine.home import Home
    from ftspl.engine.model.encoders import Encoders, RuntimeConfig
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.scale.stages import EncodeStage, model_files

    model_dir = Home(exported_models.parent).active_model_dir()
    rng = np.random.default_rng(2)
    views = rng.integers(0, 256, (3, 12, 224, 224, 3), dtype=np.uint8)
    batch = {"path": np.array(["/a", "/b", "/c"], dtype=object), "faces": np.array([5, -1, 7]),
             "preview": np.array([b"p", b"", b"q"], dtype=object), "error": np.array(["", "bad file", ""], dtype=object),
             "views": views}
    local = Encoders(model_dir, RuntimeConfig(device="cpu", intra_op_threads=1))
    want = local.embed_views(np.stack([views_to_tensor(views[i], local.preprocess) for i in (0, 2)]))
    for prep_threads in (1, 3):
        out = EncodeStage(model_files(model_dir), "cpu", threads=1, prep_threads=prep_threads)(batch)
        assert list(out["error"]) == ["", "bad file", ""] and list(out["faces"]) == [5, -1, 7]
        assert np.abs(out["embedding"][[0, 2]] - want).max() <= 1e-6
        assert not out["embedding"][1].any()  # a failed row carries no embedding


# ---------------------------------------------------------------- with a local Ray


@pytest.fixture(scope="module")
def ray_address():
    """A private local Ray for this module: 2 CPUs, no dashboard, a 256 MB object store."""
    ray = pytest.importorskip("ray")
    from ftspl.scale.cluster import quiet_ray_data

    if ray.is_initialized():  # another test's leak: detach it, run, and fail in the test at the end
        LEAKED.append("another test left Ray attached to this process (ray.init without ray.shutdown)")
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=256 << 20,
             log_to_driver=False)
    quiet_ray_data()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _gallery(root: Path, n: int = GALLERY_MESHES, broken: bool = True) -> Path:
    import trimesh

    rng = np.random.default_rng(11)
    exts = ("ply", "stl", "obj", "glb", "off")
    for i in range(n):
        mesh = trimesh.creation.box(1 + 3 * rng.random(3)) if i % 2 else trimesh.creation.icosphere(1, 1 + rng.random())
        path = root / ("box" if i % 2 else "ball") / f"s{i:02d}.{exts[i % len(exts)]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(path)
    if broken:
        (root / "box" / "broken.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 99\nend_header\n1 2\n")
        views = root / "views" / "v0"  # a pre-rendered shape: 12 images, no mesh (faces stays empty)
        views.mkdir(parents=True)
        for v in range(12):
            pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(views / f"{v}.png")
    return root


def _index(home: Path) -> dict[str, tuple]:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(home / "index" / "shapes.sqlite", readonly=True) as store:
        ids, emb = store.all_embeddings()
        rows = {r.id: r for r in store.get([int(i) for i in ids], previews=True)}
        views = store.view_embeddings(ids)  # the matched view's codes, when the model has per-view output
        strips = {int(i): store.view_strip(int(i)) for i in ids}
    return {rows[int(i)].path: (e, rows[int(i)].content_hash, rows[int(i)].label, rows[int(i)].faces,
                                rows[int(i)].kind, rows[int(i)].preview, strips[int(i)],
                                None if int(i) not in views else views[int(i)].round(6).tobytes())
            for i, e in zip(ids, emb)}


def _assert_same_index(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for path in a:
        assert np.abs(a[path][0] - b[path][0]).max() <= 1e-6, path
        assert a[path][1:] == b[path][1:], path


@pytest.fixture(scope="module")
def plain_index(tmp_path_factory, exported_models: Path):
    """The gallery indexed on this machine without Ray: (gallery, home, report)."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import IndexConfig, Library
    from ftspl.engine.model.encoders import RuntimeConfig

    base = tmp_path_factory.mktemp("ray-plain")
    gallery = _gallery(base / "gallery")
    home = base / "home"
    shutil.copytree(exported_models, home / "models")
    report = Library(Home(home), RuntimeConfig(device="cpu")).add(gallery, IndexConfig(batch_shapes=2, commit_every=3))
    return gallery, home, report


def _fresh_home(exported_models: Path, tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    shutil.copytree(exported_models, home / "models")
    return home


@pytest.mark.slow
def test_ray_add_gives_the_same_index_as_one_machine(ray_address, plain_index, exported_models, tmp_path,
                                                     gl_available) -> None:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import IndexConfig, Library
    from ftspl.engine.index.verify import verify_index
    from ftspl.engine.model.encoders import RuntimeConfig
    from ftspl.scale.driver import RayProducer

    gallery, plain_home, plain = plain_index
    assert plain.added == GALLERY_MESHES + 1 and len(plain.failed) == 1  # + the view folder
    home = _fresh_home(exported_models, tmp_path, "ray")
    lib = Library(Home(home), RuntimeConfig(device="cpu"))
    cfg = IndexConfig(batch_shapes=2, commit_every=3)
    producer = RayProducer("auto", lib.model_dir, lib.encoders.runtime, cfg)
    report = lib.add(gallery, cfg, producer=producer)
    assert producer.plan is not None and producer.plan.render_actors == producer.plan.encode_actors == 1
    assert not producer.started_ray  # it joined the fixture's Ray and leaves it running
    assert (report.added, report.updated) == (GALLERY_MESHES + 1, 0)
    assert report.failed == plain.failed  # the same one-line reason for the broken file
    ray_index = _index(home)
    _assert_same_index(_index(plain_home), ray_index)
    assert all(v[7] is not None and v[6] is not None for v in ray_index.values())  # every shape has its views
    assert ray_index[str(gallery / "views" / "v0")][3:5] == (None, "views")
    problems, facts = verify_index(Home(home))
    assert not problems and facts["shapes"] == GALLERY_MESHES + 1

    again = RayProducer("auto", lib.model_dir, lib.encoders.runtime, cfg)
    report = lib.add(gallery, cfg, producer=again)
    assert (report.added, report.unchanged) == (0, GALLERY_MESHES + 1)  # only the broken file goes to Ray again
    assert report.failed == plain.failed


@pytest.mark.slow
def test_ray_shards_merge_into_the_same_index(ray_address, plain_index, exported_models, tmp_path,
                                              gl_available) -> None:
    from conftest import run_ftspl

    gallery, plain_home, _ = plain_index
    home = _fresh_home(exported_models, tmp_path, "shards")
    r = run_ftspl(home, "index", "add", str(gallery), "--ray", ray_address, "--shards", str(tmp_path / "shards"), "--json")
    assert r.returncode == 1, r.stderr  # the broken file
    out = json.loads(r.stdout)
    assert out["added"] == GALLERY_MESHES + 1 and out["failed"] == 1 and len(out["shards"]) == 1
    assert out["ray"]["render_actors"] == 1 and out["ray"]["encode_device"] == "cpu"
    ours = [ln for ln in r.stderr.splitlines() if ln and not ln.startswith("[")]  # "[date ...]": Ray's C++ log
    assert len(ours) == 1 and ours[0].startswith(str(gallery / "box" / "broken.ply") + ": "), r.stderr
    r = run_ftspl(home, "index", "merge", str(tmp_path / "shards"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == GALLERY_MESHES + 1, r.stderr
    _assert_same_index(_index(plain_home), _index(home))
    assert run_ftspl(home, "index", "verify").returncode == 0


@pytest.mark.slow
def test_killed_ray_add_resumes_to_the_same_index(ray_address, exported_models, tmp_path, gl_available) -> None:
    """SIGKILL the driver after its first commit; the next run (with or without Ray) completes the index."""
    from conftest import run_ftspl

    from ftspl.engine.index.store import ShapeStore

    gallery = _gallery(tmp_path / "gallery", n=24, broken=False)
    home, plain_home = _fresh_home(exported_models, tmp_path, "killed"), _fresh_home(exported_models, tmp_path, "plain")
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "ftspl", "index", "add", str(gallery), "--ray", ray_address,
                             "--commit-every", "2", "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store_path = home / "index" / "shapes.sqlite"
    deadline = time.monotonic() + 240
    committed = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if store_path.exists():
            try:
                with ShapeStore(store_path, readonly=True) as store:
                    committed = store.count()
            except FtsplError:
                committed = 0
            if committed:
                break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before the kill: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    with ShapeStore(store_path, readonly=True) as store:
        after_kill = store.count()
    assert 0 < after_kill < 24

    r = run_ftspl(home, "index", "add", str(gallery), "--ray", ray_address, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["unchanged"] == after_kill and out["added"] == 24 - after_kill
    assert run_ftspl(home, "index", "verify").returncode == 0
    assert run_ftspl(plain_home, "index", "add", str(gallery)).returncode == 0
    _assert_same_index(_index(plain_home), _index(home))


def test_no_test_left_ray_attached_before_this_module() -> None:
    """The module detaches a Ray that an earlier test leaked (so its own tests still run), and fails here for it."""
    assert not LEAKED, LEAKED
