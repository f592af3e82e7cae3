"""SIGKILL ``ftspl index add`` at random moments in every phase, 20 times, and check the index each time.

The add runs with the ``ftspl`` logger at DEBUG (the CLI's own entry point,
wrapped so only ftspl's records are verbose), whose lines mark the phases:
``phase render <path>`` (a file came back from the render worker),
``phase encode <n>`` (a batch goes to onnxruntime), ``phase commit <n>`` (the
SQLite transaction starts) and ``phase committed <n>`` (it returned). Each
kill waits for a randomly chosen phase line (or a random time), sleeps a random
0-60 ms more, then sends SIGKILL. After every kill:

* the index opens and ``verify_index`` finds no problem (SQLite integrity,
  HNSW cache caught up with exactly the store's ids, self-recall);
* it holds exactly the shapes whose commit completed: every ``committed``
  batch, plus the one in flight only if its COMMIT had already returned;
* a query answers with exactly that many shapes;
* the render worker child does not outlive its parent;
* the next add (a fresh process, same lock file) resumes.

At the end an add without kill finishes with the full count.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import AddRun, alive, children_of, make_gallery, run_ftspl

N_SHAPES = 48
COMMIT = 2
KILLS = 20
PHASES = ("render", "encode", "commit", "committed", "time")

def store_state(home: Path) -> tuple[int, set[str]]:
    from ftspl.engine.index.store import ShapeStore

    if not (home / "index" / "shapes.sqlite").exists():  # killed before the store was created
        return 0, set()
    with ShapeStore(home / "index" / "shapes.sqlite", readonly=True) as store:
        return store.count(), set(store.entries())


@pytest.mark.slow
def test_sigkill_in_every_phase_leaves_a_consistent_index(model_home: Path, tmp_path: Path) -> None:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.index.verify import verify_index

    rng = random.Random(20240611)
    gallery = make_gallery(tmp_path / "g", N_SHAPES)
    home = Home(model_home)
    kills_by_phase = dict.fromkeys(PHASES, 0)
    kills = 0
    query = np.random.default_rng(3).normal(size=(1, Library(home).manifest.embed_dim)).astype(np.float32)
    while kills < KILLS:
        before = store_state(model_home)[0]
        if before == N_SHAPES:  # finished between kills: take some shapes out so the next run has work
            gone = Library(home).remove([str(gallery / "c1"), str(gallery / "c2")])
            assert gone
            before = store_state(model_home)[0]
        run = AddRun(model_home, gallery)
        phase = PHASES[kills % len(PHASES)]
        if phase == "time":
            time.sleep(rng.uniform(0.3, 4.0))
            reached = run.proc.poll() is None
        else:
            reached = run.wait_for(phase, rng.randint(1, 3))
        if reached:
            time.sleep(rng.uniform(0.0, 0.06))
            workers = children_of(run.proc.pid)
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait(timeout=30)
        else:
            run.proc.wait(timeout=300)
            workers = []
        run.drain()
        if run.proc.returncode == -signal.SIGKILL:
            kills += 1
            kills_by_phase[phase] += 1
        else:
            assert run.proc.returncode == 0, run.seen[-10:]

        # the render worker does not outlive its parent
        deadline = time.monotonic() + 15
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(w) for w in workers), f"render worker(s) {workers} outlived the killed add"

        # exactly the completed commits are stored: every 'committed' batch, plus the in-flight
        # one only if its COMMIT returned before the kill (its log line may not have been written)
        count, paths = store_state(model_home)
        done = sum(run.batches("committed"))
        started = run.batches("commit")
        in_flight = started[-1] if len(started) > len(run.batches("committed")) else 0
        assert count in (before + done, before + done + in_flight), (count, before, done, in_flight, phase)
        assert paths <= {str(p.resolve()) for p in gallery.rglob("*.ply")}

        if not (model_home / "index" / "shapes.sqlite").exists():
            assert count == 0
            continue
        problems, facts = verify_index(home)
        assert problems == [], problems
        assert facts["shapes"] == count
        with Library(home).open_reader() as reader:
            hits = reader.search(query, 1000)[0]
        assert len(hits) == count and {h.path for h in hits} == paths

    assert kills >= KILLS and all(kills_by_phase[p] >= 3 for p in PHASES), kills_by_phase
    print(f"\nSIGKILLs survived: {kills} {kills_by_phase}")

    # the next add resumes and finishes with the full count
    r = run_ftspl(model_home, "index", "add", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    assert store_state(model_home)[0] == N_SHAPES
    assert run_ftspl(model_home, "index", "verify").returncode == 0
    photo = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 110, 100)).save(photo)
    r = run_ftspl(model_home, "query", str(photo), "--top", "100", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"][0]["hits"]) == N_SHAPES
