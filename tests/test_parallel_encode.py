"""``index add`` encodes batches side by side on the CPU: same index as one batch at a time.

The batches finish out of order; the library must still pair each embedding
with its own shape and commit them in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from ftspl.engine.home import Home
from ftspl.engine.index.library import STORE_NAME, IndexConfig, Library
from ftspl.engine.index.store import ShapeStore
from ftspl.engine.model.encoders import (
    IMAGE_ENCODER,
    MULTIVIEW_ENCODER,
    Encoders,
    RuntimeConfig,
)


def _gallery(root: Path, n: int = 11) -> Path:
    rng = np.random.default_rng(3)
    for i in range(n):
        mesh = trimesh.creation.box(1 + 3 * rng.random(3)) if i % 2 else trimesh.creation.icosphere(1, 1 + rng.random())
        path = root / ("box" if i % 2 else "ball") / f"s{i:02d}.ply"
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(path)
    return root


def _embeddings(home: Path) -> dict[str, np.ndarray]:
    with ShapeStore(home / "index" / STORE_NAME, readonly=True) as store:
        ids, emb = store.all_embeddings()
        rows = {r.id: r.path for r in store.get([int(i) for i in ids])}
    return {rows[int(i)]: e for i, e in zip(ids, emb)}


@pytest.mark.slow
def test_parallel_batches_give_the_same_index(model_home: Path, tmp_path: Path, monkeypatch, gl_available) -> None:
    import shutil

    gallery = _gallery(tmp_path / "gallery")
    other = tmp_path / "home2"
    shutil.copytree(model_home, other)
    cfg = IndexConfig(batch_shapes=2, commit_every=3)

    serial = Library(Home(model_home), RuntimeConfig(device="cpu", intra_op_threads=1))
    assert serial.encoders.parallel_runs(MULTIVIEW_ENCODER) == 1
    assert serial.add(gallery, cfg).added == 11

    monkeypatch.setattr(Encoders, "parallel_runs", lambda self, name, providers=None: 3)
    parallel = Library(Home(other), RuntimeConfig(device="cpu"))
    assert parallel.add(gallery, cfg).added == 11

    a, b = _embeddings(model_home), _embeddings(other)
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_allclose(a[path], b[path], atol=1e-5, err_msg=path)


def test_parallel_runs_only_for_the_multiview_encoder_with_default_threads(model_home: Path) -> None:
    model_dir = Home(model_home).active_model_dir()
    default = Encoders(model_dir, RuntimeConfig(device="cpu"))
    assert default.parallel_runs(MULTIVIEW_ENCODER) >= 1
    assert default.parallel_runs(IMAGE_ENCODER) == 1  # a photo query wants one fast run
    assert Encoders(model_dir, RuntimeConfig(device="cpu", intra_op_threads=2)).parallel_runs(MULTIVIEW_ENCODER) == 1
    assert default.parallel_runs(MULTIVIEW_ENCODER, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == 1
