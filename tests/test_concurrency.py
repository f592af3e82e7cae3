"""Writers and readers at once, with real processes.

Complements tests/test_lock.py (the lock itself) and tests/test_index_safety.py
(a refused second writer, in-process readers during an add): here three
``ftspl index add`` processes race -- the second is refused naming the first's
PID, the third waits with ``--wait`` and then runs -- while readers query in a
loop and must always see one consistent, fully committed state.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import WRAPPER, AddRun, make_gallery, run_ftspl

from ftspl.engine.index.store.lock import WriterLock, read_lock_pid

COMMIT = 2


def test_stale_pid_in_the_lock_file_does_not_block(tmp_path: Path) -> None:
    """A killed writer leaves its PID in writer.lock; the kernel dropped its flock, so it is no lock."""
    path = tmp_path / "writer.lock"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    path.write_text(dead.stdout)
    assert read_lock_pid(path) == int(dead.stdout)
    with WriterLock(path) as lock:
        assert lock.locked and read_lock_pid(path) == os.getpid()


def _start_add(home: Path, gallery: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-c", WRAPPER, "index", "add", str(gallery), "--commit-every", str(COMMIT), "--threads", "1",
         "--json", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.mark.slow
def test_racing_writers_and_looping_readers(model_home: Path, tmp_path: Path) -> None:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.index.store import ShapeStore

    big = make_gallery(tmp_path / "big", 20)
    small = make_gallery(tmp_path / "small", 3)
    seed = make_gallery(tmp_path / "seed", 1)
    assert run_ftspl(model_home, "index", "add", str(seed)).returncode == 0
    lib = Library(Home(model_home))
    q = np.random.default_rng(1).normal(size=(1, lib.manifest.embed_dim)).astype(np.float32)

    first = AddRun(model_home, big)
    assert first.wait_for("render", 1)  # it holds the writer lock now
    # a second writer is refused at once, naming the holder; nothing is written
    r = run_ftspl(model_home, "index", "add", str(small))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"index is locked by PID {first.proc.pid}" in r.stderr and "--wait" in r.stderr
    # a third waits for the lock
    waiter = _start_add(model_home, small, "--wait")

    counts, seen_states = [], 0
    observed: list[tuple[int, int, bool]] = []  # (shapes of big, shapes of small, first writer still running)
    cli_query = None
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (100, 120, 140)).save(photo)
    while first.proc.poll() is None or waiter.poll() is None:
        with lib.open_reader() as reader:
            # one consistent state: the reader's HNSW holds only committed shapes. (The store is
            # read again here, after the reader opened, and may have grown since: a subset.)
            store_ids = set(int(i) for i in reader.store.all_embeddings()[0])
            ann_ids = set(int(i) for i in reader.ann.ids())
            assert ann_ids and ann_ids <= store_ids
            hits = reader.search(q, 1000)[0]
        first_running = first.proc.poll() is None  # read after the state: if still running, it was then
        n = len(hits)
        assert 1 <= n <= 1 + 20 + 3 and all(Path(h.path).exists() for h in hits)
        in_big = sum(Path(h.path).is_relative_to(big) for h in hits)
        in_small = sum(Path(h.path).is_relative_to(small) for h in hits)
        observed.append((in_big, in_small, first_running))
        counts.append(n)
        seen_states += 1
        if cli_query is None and n > 1:
            env = dict(os.environ, FTSPL_HOME=str(model_home), PYTHONWARNINGS="ignore")
            cli_query = subprocess.Popen([sys.executable, "-m", "ftspl", "query", str(photo), "--top", "3", "--json"],
                                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.05)  # pacing between reads only; nothing waits on the clock
    first.drain()
    out, err = waiter.communicate(timeout=60)
    assert first.proc.returncode == 0, first.seen[-5:]
    assert waiter.returncode == 0, err[-2000:]
    assert json.loads(out.strip().splitlines()[-1])["added"] == 3
    assert cli_query is not None
    q_out, q_err = cli_query.communicate(timeout=120)
    assert cli_query.returncode == 0 and "Traceback" not in q_err, q_err
    assert len(json.loads(q_out)["results"][0]["hits"]) == 3
    assert counts == sorted(counts) and seen_states >= 5
    # whole batches only: every state a reader saw of the big gallery is a running total of the
    # first writer's commits (its "phase committed N" lines), never a batch half-way in
    totals = {0, *np.cumsum(first.batches("committed")).tolist()}
    assert totals >= {20} and all(b in totals for b, _, _ in observed), (sorted(totals), observed)
    # the --wait writer added nothing while the first writer held the lock
    assert all(s == 0 for _, s, running in observed if running), observed
    assert any(running for _, _, running in observed)
    with ShapeStore(model_home / "index" / "shapes.sqlite", readonly=True) as store:
        assert store.count() == 24
    v = run_ftspl(model_home, "index", "verify", "--json")
    assert v.returncode == 0 and json.loads(v.stdout)["shapes"] == 24, v.stdout


@pytest.mark.slow
def test_api_queries_from_threads_while_another_process_adds(model_home: Path, tmp_path: Path) -> None:
    """One ``ftspl.open()`` library, four query threads, and an ``index add`` process committing meanwhile.

    Every answer is whole (ranks 1..n, distinct shapes, distances in order, only
    committed shapes); each thread sees the index only grow; and the shapes the
    other process commits are found without reopening the library.
    """
    import threading

    from PIL import Image

    import ftspl

    seed = make_gallery(tmp_path / "seed", 2)
    big = make_gallery(tmp_path / "big", 12)
    assert run_ftspl(model_home, "index", "add", str(seed)).returncode == 0
    lib = ftspl.open(model_home, threads=1)
    photo = Image.new("RGB", (64, 64), (100, 120, 140))
    assert len(lib.query(photo, top=50).hits) == 2
    add = AddRun(model_home, big)
    stop = threading.Event()
    errors: list[str] = []
    seen: dict[int, list[tuple[int, int]]] = {i: [] for i in range(4)}

    def ask(i: int) -> None:
        while not stop.is_set():
            try:
                answer = lib.query(photo, top=50)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(f"thread {i}: {type(exc).__name__}: {exc}")
                return
            hits = answer.hits
            ok = ([h.rank for h in hits] == list(range(1, len(hits) + 1)) and len({h.id for h in hits}) == len(hits)
                  and all(a.distance <= b.distance + 1e-6 for a, b in zip(hits, hits[1:]))
                  and all(Path(h.path).exists() for h in hits))
            if not ok:
                errors.append(f"thread {i}: an inconsistent answer {answer.to_dict()['hits']}")
            seen[i].append((answer.generation, len(hits)))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        assert add.wait_for("committed", 2)  # two batches in: the threads are querying a growing index
        add.drain()
        assert add.proc.wait(timeout=300) == 0, add.seen[-5:]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[:5]
    for i, answers in seen.items():
        assert answers, f"thread {i} never answered"
        assert answers == sorted(answers), f"thread {i} saw the index shrink or go back: {answers}"
    assert len({n for answers in seen.values() for _, n in answers}) > 1  # the add was seen while it ran
    final = lib.query(photo, top=50)
    assert len(final.hits) == 14 == lib.stats().count
    lib.close()
