"""A shape as the query: the API, the CLI and ``POST /api/query``, hostile mesh uploads included.

One real index per module (the pretrained model, four tiny meshes indexed by the
real ``ftspl index add``). A query shape is rendered in the render worker's child
process and encoded as ``index add`` does, so a shape of the index finds itself
at distance 0 and is left out of its own hits, as are copies of its bytes.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("torch")  # the exported_models fixture exports with torch

with warnings.catch_warnings():  # starlette 1.x suggests httpx2 for its test client; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from conftest import asymmetric_mesh, run_ftspl

import ftspl
from ftspl.engine.errors import MeshLoadError, UsageError
from ftspl.engine.home import Home
from ftspl.serve.app import create_app
from ftspl.serve.config import ServeConfig
from ftspl.serve.live import LiveIndex

PHOTO = Path(__file__).parent / "assets" / "chelsea.jpg"


def shapes() -> dict[str, trimesh.Trimesh]:
    return {"a/ell.obj": asymmetric_mesh(), "a/ball.ply": trimesh.creation.icosphere(2),
            "b/can.stl": trimesh.creation.cylinder(0.5, 2.0), "b/cone.obj": trimesh.creation.cone(1.0, 2.0)}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, exported_models, gl_available) -> tuple[Path, Path, Path]:
    """(home, gallery, extra): the gallery is indexed; ``extra`` holds query files that are not."""
    root = tmp_path_factory.mktemp("shape-query")
    home, gallery, extra = root / "home", root / "gallery", root / "extra"
    shutil.copytree(exported_models, home / "models")
    for rel, mesh in shapes().items():
        (gallery / rel).parent.mkdir(parents=True, exist_ok=True)
        mesh.export(gallery / rel)
    extra.mkdir()
    shutil.copyfile(gallery / "a/ell.obj", extra / "ell-renamed.obj")  # the same bytes under another name
    big = asymmetric_mesh()
    big.apply_scale(100.0)  # another unit: another file, the same shape
    big.export(extra / "ell-in-cm.obj")
    r = run_ftspl(home, "index", "add", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    return home, gallery, extra


@pytest.fixture(scope="module")
def lib(indexed):
    library = ftspl.open(indexed[0])
    yield library
    library.close()


def test_a_shape_of_the_index_and_its_copies_leave_it_out(lib, indexed) -> None:
    _, gallery, extra = indexed
    ell = str((gallery / "a/ell.obj").resolve())
    for query in (gallery / "a/ell.obj", extra / "ell-renamed.obj"):
        ans = lib.query(str(query), top=3)
        assert [h.rank for h in ans.hits] == [1, 2, 3] and ell not in {h.path for h in ans.hits}
        assert ans.results[0].photo == str(query) and ans.rerank == "none" and ans.max_distance is None
    mine = lib.query(str(extra / "ell-renamed.obj"), top=2, exclude_self=False).hits[0]
    assert mine.path == ell and mine.distance < 1e-3  # the same pipeline as index add: the same embedding


def test_a_rescaled_copy_finds_its_original_first(lib, indexed) -> None:
    _, gallery, extra = indexed
    ans = lib.query(str(extra / "ell-in-cm.obj"), top=4)
    assert ans.hits[0].path == str((gallery / "a/ell.obj").resolve()) and ans.hits[0].distance < 0.05
    assert len(ans.hits) == 4  # not in the index: nothing is left out


def test_a_view_folder_is_a_shape_too(lib, indexed, tmp_path) -> None:
    """Twelve views rendered as index add renders them query like the mesh they show."""
    from PIL import Image

    from ftspl.engine.rendering.worker import RenderJob, RenderWorker

    _, gallery, _ = indexed
    spec = lib.engine.manifest.get_render_spec()
    with RenderWorker(spec) as worker:
        (done,) = list(worker.map([RenderJob((gallery / "b/cone.obj").resolve())]))
    folder = tmp_path / "cone-views"
    folder.mkdir()
    for i, view in enumerate(done.views):
        Image.fromarray(view).save(folder / f"cone_{i + 1:03d}.png")
    ans = lib.query(str(folder), top=1)
    assert ans.hits[0].path == str((gallery / "b/cone.obj").resolve()) and ans.hits[0].distance < 0.05


def test_photos_and_shapes_mix_only_when_fused(lib, indexed) -> None:
    _, gallery, _ = indexed
    with pytest.raises(UsageError, match="--fuse"):
        lib.query([str(PHOTO), str(gallery / "a/ball.ply")], top=2)
    ans = lib.query([str(PHOTO), str(gallery / "a/ball.ply")], top=2, fuse=True)
    assert len(ans.results) == 1 and ans.fusion == "mean" and len(ans.hits) == 2
    assert str((gallery / "a/ball.ply").resolve()) not in {h.path for h in ans.hits}
    with pytest.raises(UsageError, match="--rerank"):
        lib.query(str(gallery / "a/ball.ply"), rerank="view")


def test_a_bad_shape_raises_or_is_listed(lib, tmp_path) -> None:
    bad = tmp_path / "bad.obj"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(MeshLoadError, match="bad.obj"):
        lib.query(str(bad))
    ans = lib.query([str(bad)], skip_bad=True)
    assert [f.path for f in ans.failed] == [str(bad)] and ans.results == []


def test_cli_shape_query_json_and_the_mixed_refusal(indexed, tmp_path) -> None:
    home, gallery, _ = indexed
    r = run_ftspl(home, "query", str(gallery / "b/can.stl"), "--top", "2", "--json", "--sheet",
                  str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["results"][0]["photo"] == str(gallery / "b/can.stl") and len(body["hits"]) == 2
    assert str((gallery / "b/can.stl").resolve()) not in {h["path"] for h in body["hits"]}
    assert (tmp_path / "s.png").stat().st_size > 1000
    r = run_ftspl(home, "query", str(PHOTO), str(gallery / "b/can.stl"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--fuse" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def live(indexed):
    lv = LiveIndex(Home(indexed[0]), poll_s=0.05)
    yield lv
    lv.close()


def client(live: LiveIndex, **cfg) -> TestClient:
    return TestClient(create_app(ServeConfig(home=live.home.root, **cfg), live))


def mesh_bytes(mesh: trimesh.Trimesh, ext: str) -> bytes:
    return mesh.export(file_type=ext)


def assert_alive(api: TestClient) -> None:
    """The server still answers, a good mesh included (a fresh render child when the last one died)."""
    assert api.get("/api/health").status_code == 200
    good = api.post("/api/query", files={"shape": ("cone.stl", mesh_bytes(trimesh.creation.cone(1.0, 2.0), "stl"))})
    assert good.status_code == 200, good.text


def test_http_shape_query_multipart_and_json(live, indexed) -> None:
    _, gallery, _ = indexed
    data = (gallery / "a/ell.obj").read_bytes()
    with client(live) as api:
        r = api.post("/api/query", files={"shape": ("ell.obj", data, "model/obj")}, data={"top": "3"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["photo"] == "ell.obj" and len(body["hits"]) == 3
        assert str((gallery / "a/ell.obj").resolve()) not in {h["path"] for h in body["hits"]}  # itself, by hash
        assert all(h["preview"] for h in body["hits"])
        js = api.post("/api/query", json={"shape": {"name": "ell.obj", "data": base64.b64encode(data).decode()},
                                          "top": 3})
        assert js.status_code == 200 and [h["id"] for h in js.json()["hits"]] == [h["id"] for h in body["hits"]]
        photo = ("photo", ("cat.jpg", PHOTO.read_bytes(), "image/jpeg"))
        mixed = api.post("/api/query", files=[photo, ("shape", ("ell.obj", data, "model/obj"))])
        assert mixed.status_code == 422 and "fuse" in mixed.json()["error"]
        fused = api.post("/api/query", files=[photo, ("shape", ("ell.obj", data, "model/obj"))], data={"fuse": "true"})
        assert fused.status_code == 200 and len(fused.json()["results"]) == 1, fused.text


@pytest.mark.parametrize("name, data, cfg, status, words", [
    ("big.stl", lambda: mesh_bytes(trimesh.creation.icosphere(3), "stl"), {"max_file_bytes": 2000}, 413,
     ["big.stl", "over the limit of 2000"]),
    ("faces.ply", lambda: mesh_bytes(trimesh.creation.icosphere(3), "ply"), {"max_faces": 100}, 413,
     ["faces.ply", "faces exceed the limit of 100"]),
    ("garbage.glb", lambda: os.urandom(3000), {}, 400, ["garbage.glb"]),
    ("garbage.obj", lambda: b"v 1 2\nf 1 2 9\n\x00\xff" * 50, {}, 400, ["garbage.obj"]),
    ("empty.off", lambda: b"", {}, 400, ["empty.off", "empty"]),
    ("notes.txt", lambda: b"v 0 0 0\n", {}, 400, ["notes.txt", "not a mesh file", ".obj"]),
    ("slow.ply", lambda: mesh_bytes(trimesh.creation.icosphere(6), "ply"), {"file_timeout": 0.05}, 400,
     ["slow.ply", "longer than 0.05 s"]),
])
def test_hostile_mesh_uploads_are_refused_and_the_server_lives(live, name, data, cfg, status, words) -> None:
    with client(live, **cfg) as api:
        r = api.post("/api/query", files={"shape": (name, data(), "application/octet-stream")})
        assert r.status_code == status, r.text
        msg = r.json()["error"]
        assert all(w in msg for w in words), msg
        assert "\n" not in msg and "Traceback" not in msg
    with client(live) as api:
        assert_alive(api)


def test_a_render_child_that_crashes_on_the_upload_costs_that_request_only(live) -> None:
    """The child dies with SIGSEGV while it holds the upload (as a crashing loader does): 400, then a fresh child."""
    with client(live) as api:
        assert_alive(api)  # the library's render child is up
        pid = live.library._embedder.worker_pid
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGSEGV)
        r = api.post("/api/query", files={"shape": ("crash.stl", mesh_bytes(trimesh.creation.box(), "stl"))})
        assert r.status_code == 400 and "crashed" in r.json()["error"] and "SIGSEGV" in r.json()["error"], r.text
        assert_alive(api)
        assert live.library._embedder.worker_pid not in (None, pid)


def test_the_page_sends_a_dropped_mesh_as_a_shape(live) -> None:
    with client(live) as api:
        js = api.get("/static/app.js").text
        html = api.get("/").text
    assert '"shape"' in js and "MESH_FILE" in js and ".glb" in html
    assert np.all([ext in js for ext in ("obj", "ply", "stl", "glb", "off")])
