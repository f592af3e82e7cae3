"""Several render children: answers in job order, per-file errors and time limits per child, same views."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from ftspl.engine.constants import RenderSpec
from ftspl.engine.index.config import IndexConfig
from ftspl.engine.index.pipeline.local import render_worker
from ftspl.engine.rendering.pool import MAX_AUTO_PROCESSES, RenderPool, auto_processes
from ftspl.engine.rendering.worker import RenderJob, RenderWorker

SPEC = RenderSpec(image_size=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory, gl_available):
    d = tmp_path_factory.mktemp("pool")
    trimesh.creation.box().export(d / "box.stl")
    for k in range(4):
        trimesh.creation.icosphere(subdivisions=1 + k % 3).export(d / f"ball{k}.ply")
    (d / "broken.off").write_text("OFF\n3 1 0\n0 0 0\n")
    trimesh.creation.icosphere(subdivisions=7).export(d / "heavy.ply")  # 327,680 faces: slow to load
    return d


def test_answers_in_job_order_with_the_views_of_one_child(files) -> None:
    names = ["box.stl", "ball0.ply", "broken.off", "ball1.ply", "ball2.ply", "ball3.ply", "box.stl"]
    jobs = [RenderJob(files / n) for n in names]
    with RenderPool(SPEC, processes=3) as pool:
        assert pool.processes == 3
        out = list(pool.map(jobs))
    with RenderWorker(SPEC) as one:
        ref = list(one.map(jobs))
    assert [r.job for r in out] == jobs
    assert out[2].views is None and out[2].error == ref[2].error
    for a, b in zip(out, ref):
        assert a.faces == b.faces
        if b.views is not None:
            np.testing.assert_array_equal(a.views, b.views)


def test_a_slow_file_costs_only_its_own_job(files) -> None:
    jobs = [RenderJob(files / n) for n in ("heavy.ply", "box.stl", "ball0.ply", "ball1.ply")]
    with RenderPool(SPEC, timeout_s=0.05, processes=2) as pool:
        out = list(pool.map(jobs))
        assert pool.restarts >= 1
    assert [r.job for r in out] == jobs
    assert out[0].views is None and "longer than 0.05 s" in out[0].error


def test_stopping_early_closes_the_children(files) -> None:
    pool = RenderPool(SPEC, processes=2)
    it = pool.map([RenderJob(files / "box.stl")] * 6)
    assert next(it).views is not None
    it.close()
    pool.close()
    assert all(w._proc is None for w in pool.workers)


def test_process_counts() -> None:
    assert 1 <= auto_processes() <= MAX_AUTO_PROCESSES
    assert RenderPool(SPEC, processes=0).processes == auto_processes()
    with pytest.raises(ValueError):
        RenderPool(SPEC, processes=-1)
    # index add: the configured count (0: auto), never more children than shapes to render
    assert render_worker(SPEC, IndexConfig(render_processes=3), jobs=1).processes == 1
    assert render_worker(SPEC, IndexConfig(render_processes=3), jobs=10).processes == 3
    assert render_worker(SPEC, IndexConfig(), jobs=10).processes == auto_processes()
