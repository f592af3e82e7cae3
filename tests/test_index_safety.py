"""Crash safety and concurrency of ``ftspl index add`` with real processes.

A killed add leaves an index that opens with exactly what was committed, the
next add resumes; a second writer is refused with the holder's PID; queries
keep working while an add runs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_ftspl

N_SHAPES = 24
COMMIT = 4


def make_boxes(root: Path, n: int = N_SHAPES) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        label = "tall" if i % 2 else "wide"
        ext = (1 + 2 * rng.random(3)) * (np.array([1, 3, 1]) if label == "tall" else np.array([3, 1, 1]))
        p = root / label / f"b{i:03d}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        trimesh.creation.box(ext).export(p)
    return root


def committed(home: Path) -> int:
    db = home / "index" / "shapes.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM shapes").fetchone()[0])
        finally:
            con.close()
    except sqlite3.OperationalError:  # created but schema not written yet
        return 0


def start_add(home: Path, gallery: Path) -> subprocess.Popen:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "ftspl", "index", "add", str(gallery), "--commit-every", str(COMMIT), "--json",
         "--threads", "1"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_kill_mid_add_then_resume(model_home, tmp_path):
    gallery = make_boxes(tmp_path / "g")
    seen = []
    for attempt in range(3):
        before = committed(model_home)
        proc = start_add(model_home, gallery)
        deadline = time.monotonic() + 120
        while committed(model_home) < before + COMMIT * (attempt + 1) and proc.poll() is None:
            assert time.monotonic() < deadline, "add made no progress"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n = committed(model_home)
        seen.append(n)
        # opens, verifies, and holds exactly the committed shapes (whole batches)
        r = run_ftspl(model_home, "index", "verify", "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["shapes"] == n
        r = run_ftspl(model_home, "index", "stats", "--json")
        assert json.loads(r.stdout)["count"] == n
        if n == N_SHAPES:
            break
    assert seen == sorted(seen) and seen[0] > 0
    r = run_ftspl(model_home, "index", "add", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["unchanged"] == seen[-1] and out["added"] == N_SHAPES - seen[-1]
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (50, 50), (90, 90, 90)).save(photo)
    r = run_ftspl(model_home, "query", str(photo), "--top", "100", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["results"][0]["hits"]) == N_SHAPES
    assert run_ftspl(model_home, "index", "verify").returncode == 0


def test_second_writer_is_refused_with_pid(model_home, tmp_path):
    from ftspl.engine.index.store.lock import WriterLock

    gallery = make_boxes(tmp_path / "g", 2)
    (model_home / "index").mkdir(parents=True)
    with WriterLock(model_home / "index" / "writer.lock"):
        r = run_ftspl(model_home, "index", "add", str(gallery))
    assert r.returncode == 1
    assert f"locked by PID {os.getpid()}" in r.stderr and "--wait" in r.stderr and "Traceback" not in r.stderr
    # released: the add now works
    assert run_ftspl(model_home, "index", "add", str(gallery)).returncode == 0


@pytest.mark.slow
def test_queries_during_add_never_fail(model_home, tmp_path):
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library

    gallery = make_boxes(tmp_path / "g")
    first = make_boxes(tmp_path / "first", 2)
    assert run_ftspl(model_home, "index", "add", str(first)).returncode == 0
    lib = Library(Home(model_home))
    q = np.random.default_rng(1).normal(size=(1, lib.manifest.embed_dim)).astype(np.float32)
    q /= np.linalg.norm(q)
    proc = start_add(model_home, gallery)
    counts = []
    try:
        while proc.poll() is None:
            with lib.open_reader() as reader:
                hits = reader.search(q, 100)[0]
            assert 2 <= len(hits) <= N_SHAPES + 2
            assert all(Path(h.path).exists() for h in hits)
            counts.append(len(hits))
            time.sleep(0.05)
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()
    with lib.open_reader() as reader:
        assert len(reader.search(q, 100)[0]) == N_SHAPES + 2
    assert len(counts) >= 3 and counts == sorted(counts)
