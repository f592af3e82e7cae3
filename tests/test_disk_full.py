"""Disk full while writing: a clear one-line error, the previous index intact.

How "disk full" is simulated without root: the writing process runs with a
file-size limit (``RLIMIT_FSIZE``, set in ``preexec_fn``). Python ignores
``SIGXFSZ``, so a write that would grow any file past the limit fails with
``EFBIG`` exactly where ``ENOSPC`` would fail on a full disk: inside SQLite's
WAL append or checkpoint, inside the HNSW save, inside an atomic rename's temp
file. SQLite reports it as "disk I/O error" (``ENOSPC`` gives "database or disk
is full"); both become :class:`~ftspl.engine.errors.WriteError`. The limit is
set a little above the current index files, so the first writes succeed and a
later one fails mid-run.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_ftspl

import ftspl

REPO = Path(ftspl.__file__).resolve().parents[1]


def _limit(nbytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return apply


def run_limited(code: str, limit: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, check=False,
                          env=env, preexec_fn=_limit(limit), timeout=120)


def test_atomic_write_fails_cleanly_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    r = run_limited("""
        import sys
        from ftspl.engine.files import atomic_write_bytes
        from ftspl.engine.errors import WriteError
        try:
            atomic_write_bytes(sys.argv[1], b"x" * 100_000)
        except WriteError as exc:
            assert isinstance(exc, OSError) and exc.errno == 27  # EFBIG, as ENOSPC would be 28
            print(exc)
    """, 10_000, str(target))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{target}: cannot write (File too large); is the disk full?"), r.stdout
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # no temp file left behind


def test_store_write_fails_with_write_error_and_rolls_back(tmp_path: Path) -> None:
    from ftspl.engine.index.store import ShapeRecord, ShapeStore

    db = tmp_path / "s.sqlite"
    with ShapeStore(db) as store:
        store.upsert_batch([ShapeRecord(tmp_path / "a.obj", "h", "x", 1, "mesh", np.ones(8, np.float32))])
    size = max(p.stat().st_size for p in tmp_path.iterdir())
    r = run_limited("""
        import sys, numpy as np
        from pathlib import Path
        from ftspl.engine.errors import WriteError
        from ftspl.engine.index.store import ShapeRecord, ShapeStore
        store = ShapeStore(sys.argv[1])
        recs = [ShapeRecord(Path(sys.argv[1]).parent / f"{i}.obj", "h", "x", 1, "mesh", np.ones(8, np.float32),
                            preview=bytes(20_000)) for i in range(40)]
        try:
            store.upsert_batch(recs)
        except WriteError as exc:
            print(exc)
        store.close()
    """, size + 8192, str(db))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "cannot write (SQLite: " in r.stdout and "is the disk full?" in r.stdout, r.stdout
    with ShapeStore(db, readonly=True) as store:
        assert store.integrity_check() == []
        assert store.count() == 1 and store.generation() == 1  # the failed batch left nothing


def test_hnsw_save_on_a_full_disk_raises(tmp_path: Path) -> None:
    path = tmp_path / "v.hnsw"
    r = run_limited("""
        import sys, numpy as np
        from ftspl.engine.index.ann import HnswIndex
        from ftspl.engine.errors import WriteError
        ann = HnswIndex(64)
        ann.add(np.arange(500), np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32))
        try:
            ann.save(sys.argv[1])
            print("saved")
        except WriteError as exc:
            print("refused:", exc)
    """, 60_000, str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused:"), r.stdout


def _boxes(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        p = root / f"b{i:03d}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        trimesh.creation.box(1 + 2 * rng.random(3)).export(p)
    return root


def _stored(home: Path) -> dict[str, bytes]:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(home / "index" / "shapes.sqlite", readonly=True) as store:
        ids, vecs = store.all_embeddings()
        rows = {r.id: r.path for r in store.get(ids)}
        return {rows[int(i)]: v.tobytes() for i, v in zip(ids, vecs)}


@pytest.mark.slow
def test_index_add_on_a_full_disk_keeps_the_previous_index(model_home: Path, tmp_path: Path) -> None:
    first = _boxes(tmp_path / "first", 4, 0)
    more = _boxes(tmp_path / "more", 16, 1)
    assert run_ftspl(model_home, "index", "add", str(first)).returncode == 0
    env = dict(os.environ, FTSPL_HOME=str(model_home), PYTHONWARNINGS="ignore")
    failures = 0
    for margin in (0, 65_536):
        before = _stored(model_home)
        index_files = [p for p in (model_home / "index").iterdir() if p.is_file()]
        limit = max(p.stat().st_size for p in index_files) + margin
        r = subprocess.run(
            [sys.executable, "-m", "ftspl", "index", "add", str(more), "--commit-every", "4", "--json"],
            env=env, capture_output=True, text=True, preexec_fn=_limit(limit), timeout=300, check=False,
        )
        assert "Traceback" not in r.stderr, r.stderr[-3000:]
        if r.returncode != 0:
            failures += 1
            errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
            assert len(errors) == 1 and "cannot write" in errors[0] and "is the disk full?" in errors[0], r.stderr
        # the index opens and is consistent; everything stored before is still there, unchanged
        v = run_ftspl(model_home, "index", "verify", "--json")
        assert v.returncode == 0, v.stdout + v.stderr
        after = _stored(model_home)
        assert all(after.get(p) == emb for p, emb in before.items())
        assert json.loads(v.stdout)["shapes"] == len(after)
    assert failures >= 2  # the limits were tight enough to hit the disk-full path
    # with space again the add resumes and finishes
    r = run_ftspl(model_home, "index", "add", str(more), "--json")
    assert r.returncode == 0, r.stderr
    assert len(_stored(model_home)) == 20
    assert run_ftspl(model_home, "index", "verify").returncode == 0
