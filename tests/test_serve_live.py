"""A real ``ftspl serve`` on a free loopback port (``--port 0``), queried while ``ftspl index add`` and
``index remove`` run in other processes: every answer 200 and consistent, the
generation only moves forward, new shapes appear and removed ones go.

Waits are on the server's own state (``/api/info``'s generation against the
store's), each with a bounded deadline; no fixed sleeps.
"""

from __future__ import annotations

import io
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")
pytest.importorskip("torch")  # the exported_models fixture exports with torch

from conftest import run_ftspl

pytestmark = pytest.mark.slow


def photo_bytes() -> bytes:
    img = np.full((160, 200, 3), 255, np.uint8)
    img[40:120, 70:130] = (120, 80, 40)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG")
    return buf.getvalue()


def write_meshes(root: Path, label: str, n: int, first: int = 0) -> list[Path]:
    out = []
    for j in range(first, first + n):
        p = root / label / f"{label}_{j}.obj"
        p.parent.mkdir(parents=True, exist_ok=True)
        trimesh.creation.box((0.5 + 0.1 * j, 1 + 0.3 * j, 0.7)).export(p)
        out.append(p)
    return out


def store_generation(home: Path) -> int:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(home / "index" / "shapes.sqlite", readonly=True) as st:
        return st.generation()


@contextmanager
def running_server(home: Path, *extra: str, deadline_s: float = 120):
    """``python -m ftspl serve --port 0`` (the system picks a free port); yields (base URL, process); stops it with SIGINT."""
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    # Ctrl-C's default disposition: a runner that started us in the background (``cmd &`` in a script)
    # ignores SIGINT, and an ignored SIGINT stays ignored in children, so the server could not be stopped by it
    proc = subprocess.Popen([sys.executable, "-m", "ftspl", "serve", "--port", "0", "--poll", "0.2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # the server prints its ready line, with the port it got, once it takes connections
        ready, _, _ = select.select([proc.stdout], [], [], deadline_s)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("serving "), f"no ready line: {line!r} {proc.stderr.read() if proc.poll() is not None else ''}"
        base = re.search(r"at (http://127\.0\.0\.1:\d+)/", line).group(1)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_info(client, base: str, done, headers: dict | None = None, deadline_s: float = 30) -> dict:
    """/api/info once ``done(info)`` holds (a bounded wait on the server's own state)."""
    end = time.monotonic() + deadline_s
    while True:
        info = client.get(f"{base}/api/info", headers=headers).json()
        if done(info):
            return info
        assert time.monotonic() < end, f"the server never got there: {info}"
        time.sleep(0.05)


def wait_generation(client, base: str, generation: int, headers: dict | None = None) -> dict:
    """/api/info once the server serves ``generation``, never past it."""
    info = wait_info(client, base, lambda i: i["generation"] >= generation, headers)
    assert info["generation"] == generation, info
    return info


def check_answer(r, known_paths: set[str], last_gen: int) -> int:
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)
    assert {h["path"] for h in hits} <= known_paths
    assert len({h["id"] for h in hits}) == len(hits)
    assert body["generation"] >= last_gen, "the generation went back"
    return body["generation"]


@pytest.fixture
def home(tmp_path, exported_models, gl_available) -> Path:
    h = tmp_path / "home"
    shutil.copytree(exported_models, h / "models")
    write_meshes(tmp_path / "gallery", "first", 3)
    r = run_ftspl(h, "index", "add", str(tmp_path / "gallery"), "--json")
    assert r.returncode == 0, r.stderr
    return h


def test_queries_stay_correct_while_index_add_and_remove_run(home, tmp_path):
    first = {str(p.resolve()) for p in (tmp_path / "gallery").rglob("*.obj")}
    new = {str(p.resolve()) for p in write_meshes(tmp_path / "more", "second", 6)}
    photo = photo_bytes()
    files = {"photo": ("photo.jpg", photo, "image/jpeg")}
    with running_server(home) as (base, server), httpx.Client(timeout=30) as client:
        start = wait_generation(client, base, store_generation(home))
        assert start["shapes"] == 3
        env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
        add = subprocess.Popen([sys.executable, "-m", "ftspl", "index", "add", str(tmp_path / "more"), "--commit-every", "1",
                                "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        gens, answers = [start["generation"]], 0
        while add.poll() is None:  # query for as long as the writer runs
            gens.append(check_answer(client.post(f"{base}/api/query", files=files, data={"top": "50"}), first | new, gens[-1]))
            answers += 1
        _, err = add.communicate()
        assert add.returncode == 0, err
        final = store_generation(home)
        info = wait_generation(client, base, final)
        assert info["shapes"] == 9 and {d["label"]: d["count"] for d in info["labels"]} == {"first": 3, "second": 6}
        r = client.post(f"{base}/api/query", files=files, data={"top": "50"})
        gens.append(check_answer(r, first | new, gens[-1]))
        assert {h["path"] for h in r.json()["hits"]} == first | new, "the new shapes are served"
        assert answers > 0 and gens[-1] > gens[0], gens
        for h in r.json()["hits"]:  # every hit resolves, with its preview
            assert client.get(f"{base}/api/shapes/{h['id']}").status_code == 200
            assert client.get(h["preview"]).status_code == 200

        gone = sorted(new)[:2]
        rm = subprocess.Popen([sys.executable, "-m", "ftspl", "index", "remove", *gone, "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        while rm.poll() is None:
            gens.append(check_answer(client.post(f"{base}/api/query", files=files, data={"top": "50"}), first | new, gens[-1]))
        assert rm.wait() == 0, rm.stderr.read()
        wait_generation(client, base, store_generation(home))
        r = client.post(f"{base}/api/query", files=files, data={"top": "50"})
        check_answer(r, first | new, gens[-1])
        assert {h["path"] for h in r.json()["hits"]} == (first | new) - set(gone), "removed shapes are gone"
        server.send_signal(signal.SIGINT)
        assert server.wait(30) == 130  # 128 + SIGINT, after a graceful shutdown (uvicorn re-raises the signal)
        assert "Traceback" not in server.stderr.read()


def test_rebuild_is_followed_and_bearer_token_enforced(home, tmp_path):
    """``index add --rebuild`` replaces the store file: the server swaps to it; a token guards the API."""
    token = "live-test-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    with running_server(home, "--token", token) as (base, _), httpx.Client(timeout=30) as client:
        assert client.get(f"{base}/api/info").status_code == 401
        assert client.get(f"{base}/", headers={}).status_code == 200
        wait_generation(client, base, store_generation(home), auth)
        fresh = write_meshes(tmp_path / "other", "third", 2)
        r = run_ftspl(home, "index", "add", str(tmp_path / "other"), "--rebuild", "--json")
        assert r.returncode == 0, r.stderr
        # the new file's generation starts again from 0: wait for its labels, then check its generation
        info = wait_info(client, base, lambda i: [d["label"] for d in i["labels"]] == ["third"], auth)
        assert info["shapes"] == 2 and info["generation"] == store_generation(home)
        q = client.post(f"{base}/api/query", files={"photo": ("p.jpg", photo_bytes(), "image/jpeg")}, headers=auth)
        assert q.status_code == 200 and {h["path"] for h in q.json()["hits"]} == {str(p.resolve()) for p in fresh}
