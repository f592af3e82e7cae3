"""The render worker: in-order results, per-file errors, time limit, crash recovery."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import trimesh

from ftspl.engine.constants import RenderSpec
from ftspl.engine.errors import RenderError
from ftspl.engine.loading.meshes import MeshLimits
from ftspl.engine.rendering.worker import RenderJob, RenderWorker

SPEC = RenderSpec(image_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory, gl_available):
    d = tmp_path_factory.mktemp("worker")
    trimesh.creation.box().export(d / "box.stl")
    trimesh.creation.icosphere(subdivisions=2).export(d / "ball.ply")
    (d / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n")
    # big enough that load + render takes well over the tiny limits used below
    trimesh.creation.icosphere(subdivisions=7).export(d / "heavy.ply")  # 327,680 faces
    return d


def test_results_in_order_with_per_file_errors(files) -> None:
    jobs = [RenderJob(files / n) for n in ("box.stl", "broken.off", "ball.ply")]
    with RenderWorker(SPEC, timeout_s=60) as w:
        out = list(w.map(jobs))
    assert [r.job for r in out] == jobs
    assert out[0].views.shape == (12, 32, 32, 3) and out[0].error is None and out[0].faces == 12
    assert out[1].views is None and out[1].error
    assert out[2].views is not None and out[2].faces == 320


def test_same_views_as_rendering_in_process(files) -> None:
    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    with RenderWorker(SPEC) as w:
        child = next(iter(w.map([RenderJob(files / "ball.ply")]))).views
    with Renderer(SPEC) as r:
        here = r.render(normalize(load_mesh(files / "ball.ply"), SPEC.up, SPEC.normalize_radius))
    np.testing.assert_array_equal(child, here)


def test_limits_travel_to_the_child(files) -> None:
    with RenderWorker(SPEC, MeshLimits(max_faces=100)) as w:
        (r,) = list(w.map([RenderJob(files / "ball.ply")]))
    assert r.views is None and "--max-faces" in r.error


def test_slow_file_is_skipped_and_the_worker_restarted(files) -> None:
    jobs = [RenderJob(files / "heavy.ply"), RenderJob(files / "box.stl")]
    with RenderWorker(SPEC, timeout_s=0.05) as w:
        out = list(w.map(jobs))
        assert w.restarts >= 1
    assert out[0].views is None and "longer than 0.05 s" in out[0].error and "--file-timeout" in out[0].error
    # the next file gets a fresh child (its own limit may also trip on a slow machine,
    # so only check that it was answered, in order)
    assert out[1].job == jobs[1]


def test_crashed_child_is_reported_and_replaced(files) -> None:
    jobs = [RenderJob(files / "heavy.ply"), RenderJob(files / "box.stl")]
    with RenderWorker(SPEC, timeout_s=120) as w:
        it = w.map(jobs)

        def kill_soon() -> None:
            deadline = time.monotonic() + 60  # spawning the child can take seconds on a busy machine
            while time.monotonic() < deadline:
                if w._proc is not None:  # the child just said it is ready: it dies on the first file
                    os.kill(w._proc.pid, signal.SIGSEGV)
                    return
                time.sleep(0.002)

        killer = threading.Thread(target=kill_soon)
        killer.start()
        out = list(it)
        killer.join()
    assert out[0].views is None and "SIGSEGV" in out[0].error
    assert out[1].views is not None and out[1].error is None


def test_missing_gl_stack_is_one_clear_error(files, tmp_path, monkeypatch) -> None:
    """No usable EGL makes every mesh fail: that is one fatal RenderError, not a line per file.

    The child is spawned with the parent's ``sys.path``, so a ``moderngl`` stand-in
    placed first on it fails the way glcontext does on a machine without libEGL.
    """
    fake = tmp_path / "fake_gl"
    fake.mkdir()
    (fake / "moderngl.py").write_text(
        "def create_standalone_context(**kw):\n    raise Exception('libEGL.so not loaded')\n"
    )
    monkeypatch.syspath_prepend(str(fake))
    with RenderWorker(SPEC) as w, pytest.raises(RenderError) as err:
        list(w.map([RenderJob(files / "box.stl"), RenderJob(files / "ball.ply")]))
    message = str(err.value)
    assert "libEGL.so not loaded" in message and "apt-get install libegl1" in message
    assert message.count("\n") == 0


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RenderWorker(SPEC, timeout_s=0)
