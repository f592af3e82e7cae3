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
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import run_ftspl

N_SHAPES = 48
COMMIT = 2
KILLS = 20
PHASES = ("render", "encode", "commit", "committed", "time")

WRAPPER = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr)\n"
    "logging.getLogger('ftspl').setLevel(logging.DEBUG)\n"
    "sys.argv[0] = 'ftspl'\n"
    "from ftspl.cli.main import main\n"
    "main()\n"
)


def make_gallery(root: Path, n: int) -> Path:
    rng = np.random.default_rng(7)
    for i in range(n):
        shape = trimesh.creation.box(1 + 2 * rng.random(3)) if i % 2 else trimesh.creation.icosphere(1)
        shape.apply_scale(1 + 2 * rng.random(3))
        p = root / f"c{i % 3}" / f"s{i:03d}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        shape.export(p)
    return root


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class AddRun:
    """One ``ftspl index add`` with its stderr lines collected by a thread."""

    def __init__(self, home: Path, gallery: Path) -> None:
        env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "index", "add", str(gallery), "--commit-every", str(COMMIT),
             "--threads", "1", "--json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, phase: str, occurrence: int, timeout: float = 120.0) -> bool:
        """Block until the ``occurrence``-th ``phase <phase> `` line; False if the run ended first."""
        deadline = time.monotonic() + timeout
        found = 0
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.seen.append(line)
            if f": phase {phase} " in line:
                found += 1
                if found >= occurrence:
                    return True
        raise AssertionError(f"no 'phase {phase}' line within {timeout} s; seen: {self.seen[-5:]}")

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.seen.append(line)

    def batches(self, phase: str) -> list[int]:
        return [int(ln.rsplit(" ", 1)[1]) for ln in self.seen if f": phase {phase} " in ln]


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
