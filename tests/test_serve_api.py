"""The HTTP API in-process with Starlette's test client: every endpoint, every error code, the caps.

One real index per module (the pretrained model, tiny meshes indexed by the real
``ftspl index add``); the app is built around one :class:`LiveIndex`, so each
test's configuration (token, caps, queue) is a cheap new app over it.
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")
pytest.importorskip("torch")  # the exported_models fixture exports with torch

with warnings.catch_warnings():  # starlette 1.x suggests httpx2 for its test client; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from conftest import run_ftspl

from ftspl.engine.errors import UsageError
from ftspl.engine.home import Home
from ftspl.serve.app import create_app
from ftspl.serve.config import ServeConfig
from ftspl.serve.live import LiveIndex

TOKEN = "test-token-0123456789"


def make_gallery(root: Path) -> list[Path]:
    """Two labels of tiny meshes, ModelNet-style folders."""
    shapes = {"boxy": [(1, 2, 1), (2, 1, 1)], "round": [2, 3]}
    out = []
    for label, specs in shapes.items():
        for j, spec in enumerate(specs):
            mesh = trimesh.creation.box(spec) if label == "boxy" else trimesh.creation.icosphere(spec)
            p = root / label / f"{label}_{j}.obj"
            p.parent.mkdir(parents=True, exist_ok=True)
            mesh.export(p)
            out.append(p)
    return out


def jpeg(w: int = 200, h: int = 160, noise: bool = False) -> bytes:
    img = np.full((h, w, 3), 255, np.uint8)
    img[h // 4 : 3 * h // 4, w // 3 : 2 * w // 3] = (120, 80, 40)
    if noise:  # incompressible: a file of a known large size
        img = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served_home(tmp_path_factory, exported_models, gl_available) -> Path:
    home = tmp_path_factory.mktemp("serve-home")
    shutil.copytree(exported_models, home / "models")
    make_gallery(home.parent / f"{home.name}-gallery")
    r = run_ftspl(home, "index", "add", str(home.parent / f"{home.name}-gallery"), "--json")
    assert r.returncode == 0, r.stderr
    return home


@pytest.fixture(scope="module")
def live(served_home):
    lv = LiveIndex(Home(served_home), poll_s=0.05)
    yield lv
    lv.close()


def client(live: LiveIndex, **cfg) -> TestClient:
    return TestClient(create_app(ServeConfig(home=live.home.root, **cfg), live))


@pytest.fixture(scope="module")
def api(live):
    with client(live) as c:
        yield c


def test_page_and_static_files_are_local(api):
    r = api.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert f"static/{name}" in r.text
        s = api.get(f"/static/{name}")
        assert s.status_code == 200 and len(s.content) > 500
        # works offline: nothing is fetched from another host
        assert "http://" not in s.text and "https://" not in s.text
    assert "http://" not in r.text and "https://" not in r.text


def test_health_and_info(api, live):
    h = api.get("/api/health").json()
    assert h["status"] == "ok" and h["shapes"] == 4 and h["generation"] >= 1
    info = api.get("/api/info").json()
    assert info["model"]["id"] == live.lib.manifest.model_id and info["model"]["embed_dim"] == 1280
    assert info["shapes"] == 4 and info["generation"] == h["generation"]
    assert {d["label"]: d["count"] for d in info["labels"]} == {"boxy": 2, "round": 2}
    assert info["render_spec"]["views"] == 12 and len(info["render_spec_hash"]) == 16
    assert info["stale"] is False and info["warnings"] == []


def test_query_multipart_and_cacheable_previews(api):
    r = api.post("/api/query", files={"photo": ("photo.jpg", jpeg(), "image/jpeg")}, data={"top": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"model", "generation", "took_ms", "hits", "results", "warnings"}
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(set(h) >= {"rank", "id", "path", "label", "distance", "preview"} for h in hits)
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert body["results"][0]["photo"] == "photo.jpg" and body["results"][0]["hits"] == hits
    p = api.get(hits[0]["preview"])
    assert p.status_code == 200 and p.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(p.content)).size == (128, 128)
    etag = p.headers["etag"]
    assert "max-age" in p.headers["cache-control"]
    again = api.get(hits[0]["preview"], headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    other = api.get(hits[1]["preview"], headers={"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["etag"] != etag


def test_several_photos_and_json_base64_agree(api):
    photo = jpeg()
    two = [("photo", ("a.jpg", photo, "image/jpeg")), ("photo", ("b.jpg", jpeg(120, 200), "image/jpeg"))]
    multi = api.post("/api/query", files=two, data={"top": "4", "regions": "none"})  # whole photos, as fused
    assert multi.status_code == 200, multi.text
    res = multi.json()["results"]
    assert [r["photo"] for r in res] == ["a.jpg", "b.jpg"] and all(len(r["hits"]) == 4 for r in res)
    fused = multi.json()["hits"]  # one list for the object, by `ftspl query --fuse`'s default rule
    assert multi.json()["fusion"] == "mean" and len({h["id"] for h in fused}) == len(fused) == 4
    assert [h["rank"] for h in fused] == [1, 2, 3, 4] and [h["distance"] for h in fused] == sorted(h["distance"] for h in fused)
    best = {}
    for r in res:
        for h in r["hits"]:
            best[h["id"]] = min(best.get(h["id"], 9.0), h["distance"])
    by_max = api.post("/api/query", files=two, data={"top": "4", "fusion": "max", "regions": "none"}).json()
    assert by_max["fusion"] == "max"  # "max": each shape at its best distance to either photo
    assert [h["distance"] for h in by_max["hits"]] == pytest.approx(sorted(best.values())[:4])
    b64 = base64.b64encode(photo).decode()
    for payload in ({"image": b64, "top": 4, "regions": "none"},
                    {"images": ["data:image/jpeg;base64," + b64], "top": 4, "regions": "none"}):
        js = api.post("/api/query", json=payload)
        assert js.status_code == 200, js.text
        assert [(h["id"], h["distance"]) for h in js.json()["hits"]] == [(h["id"], h["distance"]) for h in res[0]["hits"]]


def test_shape_metadata_and_not_found(api):
    hit = api.post("/api/query", files={"photo": ("p.jpg", jpeg(), "image/jpeg")}).json()["hits"][0]
    meta = api.get(f"/api/shapes/{hit['id']}").json()
    assert meta["path"] == hit["path"] and meta["label"] == hit["label"] and meta["kind"] == "mesh"
    assert meta["preview"].split("?")[0] == hit["preview"].split("?")[0]
    for url in ("/api/shapes/999999", "/api/shapes/999999/preview.png", "/api/shapes/abc", "/api/nothing",
                "/api/shapes/..%2F..%2Fetc%2Fpasswd/preview.png", "/static/../pyproject.toml", "/static/%2e%2e/README.md"):
        r = api.get(url)
        assert r.status_code == 404, url
        assert r.json()["error"], url
    r = api.get("/api/query")
    assert r.status_code == 405 and r.json()["error"]


@pytest.mark.parametrize(
    "files, data, status, words",
    [
        ({"photo": ("notes.txt", b"just some text\n", "text/plain")}, {}, 400, ["notes.txt", "not a readable image"]),
        ({"photo": ("empty.jpg", b"", "image/jpeg")}, {}, 400, ["empty.jpg", "empty"]),
        ({"photo": ("cut.jpg", jpeg()[:300], "image/jpeg")}, {}, 400, ["cut.jpg"]),
        ({"photo": ("../../etc/passwd", b"x", "image/jpeg")}, {}, 400, ["passwd"]),
        ({"photo": ("p.jpg", jpeg(), "image/jpeg")}, {"top": "abc"}, 422, ["top"]),
        ({"photo": ("p.jpg", jpeg(), "image/jpeg")}, {"top": "0"}, 422, ["top"]),
        ({"photo": ("p.jpg", jpeg(), "image/jpeg")}, {"top": "101"}, 422, ["top", "100"]),
        ({"photo": ("p.jpg", jpeg(), "image/jpeg")}, {"top": "2.5"}, 422, ["top"]),
        ({"other": ("p.jpg", jpeg(), "image/jpeg")}, {}, 400, ["no photo"]),
        ({"photo": ("p.jpg", jpeg(), "image/jpeg")}, {"fusion": "median"}, 422, ["fusion", "mean"]),
    ],
)
def test_bad_multipart_input(api, files, data, status, words):
    r = api.post("/api/query", files=files, data=data)
    assert r.status_code == status, r.text
    msg = r.json()["error"]
    assert all(w in msg for w in words), msg
    assert "\n" not in msg and "Traceback" not in msg


def test_bad_json_and_content_types(api):
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
        (dict(json=[1, 2]), 400, "must be an object"),
        (dict(json={"image": "%%%not base64%%%"}), 400, "base64"),
        (dict(json={"image": base64.b64encode(jpeg()).decode(), "top": "x"}), 422, "top"),
        (dict(json={"image": base64.b64encode(jpeg()).decode(), "top": True}), 422, "top"),
        (dict(json={"images": []}), 400, "no photo"),
        (dict(json={"image": base64.b64encode(jpeg()).decode(), "fusion": ["mean"]}), 422, "fusion"),
        (dict(json={"images": ["a"] * 9}), 400, "limit is 8"),
        (dict(content=b"photo=1", headers={"content-type": "application/x-www-form-urlencoded"}), 415, "Content-Type"),
    ]
    for kwargs, status, words in cases:
        r = api.post("/api/query", **kwargs)
        assert r.status_code == status, (kwargs, r.text)
        assert words in r.json()["error"], r.text


def test_byte_pixel_and_body_caps_answer_413(live):
    big = jpeg(600, 500, noise=True)
    assert len(big) > 100_000
    with client(live, max_file_bytes=len(big) - 1) as c:
        r = c.post("/api/query", files={"photo": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and "big.jpg" in r.json()["error"] and "bytes, over the limit" in r.json()["error"]
        assert c.post("/api/query", files={"photo": ("ok.jpg", jpeg(), "image/jpeg")}).status_code == 200
    with client(live, max_pixels=150 * 150) as c:
        r = c.post("/api/query", files={"photo": ("wide.jpg", jpeg(200, 160), "image/jpeg")})
        assert r.status_code == 413 and "200x160 pixels" in r.json()["error"]
        # a bad file beside a too-large one: 400, both named
        r = c.post("/api/query", files=[("photo", ("wide.jpg", jpeg(200, 160), "image/jpeg")),
                                        ("photo", ("t.txt", b"text", "text/plain"))])
        assert r.status_code == 400 and "wide.jpg" in r.json()["error"] and "t.txt" in r.json()["error"]
    with client(live, max_body_bytes=20_000) as c:
        r = c.post("/api/query", files={"photo": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and "request body" in r.json()["error"]

        def chunks():  # no Content-Length: the cap is counted while the body streams in
            for i in range(0, 60_000, 4096):
                yield b"x" * 4096

        r = c.post("/api/query", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "request body" in r.json()["error"]
    with client(live, max_photos=2) as c:
        r = c.post("/api/query", files=[("photo", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(3)])
        assert r.status_code == 400 and "files" in r.json()["error"].lower()


def test_full_queue_answers_503_with_retry_after(live, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = live.query

    def slow_query(*args, **kwargs):
        entered.set()
        assert release.wait(30), "the test never released the first query"
        return real(*args, **kwargs)

    monkeypatch.setattr(live, "query", slow_query)
    with client(live, workers=1, queue=0) as c:
        first: dict = {}
        t = threading.Thread(target=lambda: first.update(r=c.post("/api/query", files={"photo": ("a.jpg", jpeg(), "image/jpeg")})))
        t.start()
        try:
            assert entered.wait(30)
            r = c.post("/api/query", files={"photo": ("b.jpg", jpeg(), "image/jpeg")})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert "busy" in r.json()["error"]
            assert c.get("/api/health").status_code == 200  # only queries are gated
        finally:
            release.set()
            t.join(30)
        assert first["r"].status_code == 200
        assert c.post("/api/query", files={"photo": ("c.jpg", jpeg(), "image/jpeg")}).status_code == 200


def test_token_guards_every_api_call_but_not_the_page(live):
    with client(live, token=TOKEN) as c:
        for path in ("/api/health", "/api/info", "/api/shapes/1", "/api/shapes/1/preview.png"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["error"], path
            assert c.get(path, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
        assert c.post("/api/query", files={"photo": ("a.jpg", jpeg(), "image/jpeg")}).status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/info", headers=auth).status_code == 200
        assert c.post("/api/query", files={"photo": ("a.jpg", jpeg(), "image/jpeg")}, headers=auth).status_code == 200
        assert c.get("/").status_code == 200


def test_no_cors_unless_asked(live):
    origin = {"Origin": "http://elsewhere.test"}
    with client(live) as c:
        assert "access-control-allow-origin" not in c.get("/api/info", headers=origin).headers
    with client(live, cors_origins=("http://elsewhere.test",)) as c:
        assert c.get("/api/info", headers=origin).headers["access-control-allow-origin"] == "http://elsewhere.test"
        pre = c.options("/api/query", headers={**origin, "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200


def test_bind_policy(served_home):
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        ServeConfig(host=host).check()
    for host in ("0.0.0.0", "192.0.2.10", "::", "example.test"):
        with pytest.raises(UsageError, match="--token"):
            ServeConfig(host=host).check()
        ServeConfig(host=host, token=TOKEN).check()
        ServeConfig(host=host, insecure=True).check()
    with pytest.raises(UsageError, match="16 characters"):
        ServeConfig(token="short").check()
    r = run_ftspl(served_home, "serve", "--host", "0.0.0.0", timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--token" in r.stderr and "Traceback" not in r.stderr
    import socket

    with socket.socket() as taken:  # a port in use fails at once, in one line, before the index loads
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        r = run_ftspl(served_home, "serve", "--port", str(taken.getsockname()[1]), timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "pick another --port" in r.stderr, r.stderr


def test_model_and_spec_changes_are_reported_not_mixed(served_home, tmp_path):
    from ftspl.engine.index.library import STORE_NAME
    from ftspl.engine.index.store import ShapeStore

    home = tmp_path / "home"
    shutil.copytree(served_home, home)
    lv = LiveIndex(Home(home), poll_s=60)  # refreshed by hand below: no timing involved
    try:
        with client(lv) as c:
            before = c.post("/api/query", files={"photo": ("p.jpg", jpeg(), "image/jpeg")}).json()
            with ShapeStore(Home(home).index_dir / STORE_NAME) as store:
                store.set_info(render_spec_hash="f" * 16)
            assert lv.reader.refresh() is None
            info = c.get("/api/info").json()
            assert info["stale"] is True and "render" in info["warnings"][0] and "f" * 16 in info["warnings"][0]
            with ShapeStore(Home(home).index_dir / STORE_NAME) as store:
                store.set_info(model_hash="0" * 64, model_id="another-model")
            assert lv.reader.refresh() is None
            info = c.get("/api/info").json()
            assert info["stale"] is True and "another-model" in info["warnings"][0]
            assert info["generation"] == before["generation"]
            after = c.post("/api/query", files={"photo": ("p.jpg", jpeg(), "image/jpeg")}).json()
            assert after["generation"] == before["generation"] and after["hits"] == before["hits"]
            assert "another-model" in after["warnings"][0]
            (home / "models" / "ACTIVE").write_text("some-newer-model\n")
            lv.reader.refresh()
            assert any("some-newer-model" in w for w in c.get("/api/info").json()["warnings"])
    finally:
        lv.close()


def test_delta_and_swap_paths_give_the_same_answers(served_home, tmp_path, monkeypatch):
    """A removal applied in place and the same removal built aside and swapped in agree."""
    import ftspl.engine.index.reader as reader_mod
    from ftspl.engine.index.library import Library

    answers = []
    for swap in (False, True):
        home = tmp_path / f"home-{swap}"
        shutil.copytree(served_home, home)
        lv = LiveIndex(Home(home), poll_s=60)
        try:
            gone = sorted((served_home.parent / f"{served_home.name}-gallery").rglob("*.obj"))
            removed = Library(Home(home)).remove([str(gone[0])])
            assert removed
            monkeypatch.setattr(reader_mod, "SWAP_OVER", -1 if swap else 4096)
            done = lv.reader.refresh()
            assert done is not None and done.rebuilt is swap and done.removed == (0 if swap else 1)
            with client(lv) as c:
                body = c.post("/api/query", files={"photo": ("p.jpg", jpeg(), "image/jpeg")}, data={"top": "10"}).json()
            assert len(body["hits"]) == 3 and removed[0] not in {h["path"] for h in body["hits"]}
            answers.append([(h["path"], h["distance"]) for h in body["hits"]])
        finally:
            lv.close()
    assert answers[0] == answers[1]


def test_serving_path_imports_neither_torch_nor_pydantic():
    import subprocess
    import sys

    code = ("import sys, uvicorn, ftspl.serve.app, ftspl.serve.routes, ftspl.cli.serve_cmd; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    mods = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert "starlette" in mods and not mods & {"torch", "pydantic", "fastapi"}


def test_rwlock_writer_waits_for_readers_and_holds_back_new_ones():
    """hnswlib's safety rests on this lock: a delta never overlaps a query, and queries cannot starve it."""
    from ftspl.engine.index.reader import RWLock

    lock, order = RWLock(), []
    first_in, release_first, writer_in, release_writer = (threading.Event() for _ in range(4))

    def first_reader():
        with lock.read():
            first_in.set()
            assert release_first.wait(30)
            order.append("reader 1 out")

    def writer():
        with lock.write():
            order.append("writer in")
            writer_in.set()
            assert release_writer.wait(30)
            order.append("writer out")

    def late_reader():
        with lock.read():
            order.append("reader 2 in")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    assert first_in.wait(30)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    import time

    deadline = time.monotonic() + 30
    while not lock._writers_waiting:  # until the writer is queued behind reader 1
        assert time.monotonic() < deadline
        threading.Event().wait(0.001)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    assert not writer_in.wait(0.2)  # reader 1 still holds it
    release_first.set()
    assert writer_in.wait(30)
    assert "reader 2 in" not in order  # held back while the writer works
    release_writer.set()
    for t in threads:
        t.join(30)
    assert order == ["reader 1 out", "writer in", "writer out", "reader 2 in"]
