"""``ftspl index reembed``: every stored shape re-encoded with the active model, resumable, swapped in one commit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import WRAPPER, make_gallery, run_ftspl
from PIL import Image

from ftspl.engine.home import Home
from ftspl.engine.index.folder import PARTS_DIR
from ftspl.engine.index.pipeline.plan import view_cache_key
from ftspl.engine.index.reembed_parts import Parts, _pack, _unpack
from ftspl.engine.index.store.schema import ShapeRecord


def other_model(home: Path) -> str:
    """A second model in ``home``: the active one with one backbone weight perturbed (both encoders alike).

    Real different embeddings in seconds (no training, no export); the manifest is
    rewritten with the new files' sha256, so it is a distinct model identity.
    """
    import onnx
    from onnx import numpy_helper

    from ftspl.engine.files import sha256_file
    from ftspl.engine.model.manifest import ModelManifest

    h = Home.resolve(home)
    src = h.active_model_dir()
    man = ModelManifest.load(src)
    new_id = man.model_id + "-b"
    dst = h.models / new_id
    shutil.copytree(src, dst)
    for enc in man.encoders.values():
        model = onnx.load(str(dst / enc.path))
        inits = {i.name: i for i in model.graph.initializer}
        # the largest 4-d weight (the backbone's conv head): the same layer in both graphs, under its own name
        name = max((n for n, i in inits.items() if len(i.dims) == 4), key=lambda n: int(np.prod(inits[n].dims)))
        w = numpy_helper.to_array(inits[name])
        noise = np.random.default_rng(0).normal(0, 0.5 * float(w.std()), w.shape).astype(w.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(w + noise, name))
        onnx.save(model, str(dst / enc.path))
        enc.sha256 = sha256_file(dst / enc.path)
    man.model_id = new_id
    (dst / "manifest.json").write_text(man.to_json())
    return new_id


def rows(home: Path) -> dict[str, tuple[int, bytes]]:
    """path -> (id, embedding bytes) of the home's index."""
    import sqlite3

    con = sqlite3.connect(Home.resolve(home).index_dir / "shapes.sqlite")
    try:
        return {p: (i, bytes(e)) for i, p, e in con.execute("SELECT id, path, embedding FROM shapes")}
    finally:
        con.close()


def view_codes(home: Path) -> dict[str, bytes]:
    """path -> per-view codes (what the add pipeline stores beside the embedding; none for older models)."""
    import sqlite3

    con = sqlite3.connect(Home.resolve(home).index_dir / "shapes.sqlite")
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'view_codes'").fetchone():
            return {}
        return {p: bytes(c) for p, c in con.execute("SELECT s.path, v.codes FROM view_codes v JOIN shapes s USING (id)")}
    finally:
        con.close()


def info(home: Path) -> dict:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(Home.resolve(home).index_dir / "shapes.sqlite", readonly=True) as s:
        return s.get_info()


def test_parts_round_trip_every_record_field(tmp_path):
    rec = ShapeRecord(path=str(tmp_path / "a.ply"), content_hash="ab" * 32, label="chair", faces=12, kind="mesh",
                      embedding=np.arange(4, dtype=np.float32), preview=b"\x89PNG..")
    back = _unpack_bytes(tmp_path, _pack([rec, rec]))
    assert len(back) == 2
    for f in ("path", "content_hash", "label", "faces", "kind", "preview"):
        assert getattr(back[0], f) == getattr(rec, f)
    assert np.array_equal(back[0].embedding, rec.embedding)
    parts = Parts(tmp_path / PARTS_DIR, {"model_hash": "x"})
    parts.open()
    parts.write([rec])
    assert parts.paths() == {rec.path}
    Parts(tmp_path / PARTS_DIR, {"model_hash": "y"}).open()  # another model's parts are discarded
    assert parts.paths() == set()


def _unpack_bytes(tmp_path: Path, data: bytes):
    p = tmp_path / "p.npz"
    p.write_bytes(data)
    return _unpack(p)


def test_view_cache_key_is_the_training_render_caches(tmp_path, mesh_files):
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.index.pipeline.plan import content_hash
    from ftspl.engine.loading.scan import ShapeSource

    viewcache = pytest.importorskip("ftspl.train.viewcache")  # needs the [train] extra
    spec = RenderSpec(image_size=64)
    mesh = mesh_files[".ply"]
    viewcache.cache_views([mesh], ["mesh"], spec, tmp_path / "views")
    key = view_cache_key(content_hash(ShapeSource(mesh, "mesh", None)), spec)
    assert (tmp_path / "views" / f"{key}.npz").is_file()


@pytest.fixture
def indexed(model_home: Path, tmp_path: Path) -> tuple[Path, Path]:
    """10 meshes and one 12-view folder (re-read, not rendered, by a re-embed), indexed with the active model."""
    gallery = make_gallery(tmp_path / "gallery", 10)
    rng = np.random.default_rng(5)
    views = gallery / "c0" / "views_shape"
    views.mkdir()
    for v in range(12):
        img = np.full((64, 64, 3), 255, np.uint8)
        img[16 + v : 40 + v, 20:44] = rng.integers(0, 200, 3)
        Image.fromarray(img).save(views / f"{v}.png")
    r = run_ftspl(model_home, "index", "add", str(gallery), "--json")
    assert r.returncode == 0, r.stderr
    return model_home, gallery


def _reembed_process(home: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WRAPPER, "index", "reembed", "--threads", "1", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_reembed_resumes_to_what_a_fresh_index_holds(indexed, tmp_path):
    home, gallery = indexed
    before = rows(home)
    new_id = other_model(home)
    Home.resolve(home).set_active(new_id)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(photo)
    r = run_ftspl(home, "query", str(photo), "--json")  # the index and the active model disagree
    assert r.returncode != 0 and "ftspl index reembed" in r.stderr

    proc = _reembed_process(home, "--commit-every", "2")
    for line in proc.stderr:  # kill -9 once the second part file is on disk
        if ": phase part " in line and len(list((Path(home) / "index" / PARTS_DIR).glob("part-*.npz"))) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert rows(home) == before and info(home)["model_id"] != new_id  # nothing swapped yet

    r = run_ftspl(home, "index", "reembed", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["swapped"] and out["resumed"] >= 4 and out["encoded"] + out["resumed"] == 11 and out["failed"] == 0
    assert not (Path(home) / "index" / PARTS_DIR).exists()
    after = rows(home)
    assert {p: i for p, (i, _) in after.items()} == {p: i for p, (i, _) in before.items()}  # ids kept
    assert all(after[p][1] != before[p][1] for p in after)  # every embedding is the new model's
    assert any(p.endswith("/views_shape") for p in after)  # the view folder too

    fresh = tmp_path / "fresh"
    shutil.copytree(Path(home) / "models", fresh / "models")
    assert run_ftspl(fresh, "index", "add", str(gallery)).returncode == 0
    assert {p: e for p, (_, e) in rows(fresh).items()} == {p: e for p, (_, e) in after.items()}
    assert info(home)["model_hash"] == info(fresh)["model_hash"]
    assert view_codes(home) == view_codes(fresh)  # and whatever else the pipeline stores per shape
    assert run_ftspl(home, "index", "verify").returncode == 0
    r = run_ftspl(home, "query", str(photo), "--top", "3", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["results"][0]["hits"]) == 3
    again = run_ftspl(home, "index", "reembed", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["up_to_date"]


@pytest.mark.slow
def test_missing_files_block_the_swap_until_dropped(indexed):
    home, gallery = indexed
    before = rows(home)
    Home.resolve(home).set_active(other_model(home))
    gone = sorted(gallery.rglob("*.ply"))[3]
    gone.unlink()
    r = run_ftspl(home, "index", "reembed")
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    hint = "restore it, or pass --drop-missing to remove such shapes from the index"
    assert lines == [f"{gone}: missing: the file is gone ({hint})"]
    assert "not swapped" in r.stdout and rows(home) == before  # the index stays whole, on the old model
    r = run_ftspl(home, "index", "reembed", "--drop-missing", "--json")
    assert r.returncode == 1  # a file failed; the swap went ahead without it
    out = json.loads(r.stdout)
    assert out["swapped"] and out["dropped"] == [str(gone)] and out["resumed"] == 10 and out["encoded"] == 0
    assert set(rows(home)) == set(before) - {str(gone)}
    assert run_ftspl(home, "index", "verify").returncode == 0


@pytest.mark.slow
def test_a_live_reader_serves_one_model_before_and_after(indexed):
    from ftspl.engine.index.library import IndexConfig, Library
    from ftspl.engine.model.encoders import RuntimeConfig

    home, _gallery = indexed
    h = Home.resolve(home)
    old_lib = Library(h, RuntimeConfig(intra_op_threads=1))
    reader = old_lib.open_reader()
    try:
        q = np.stack([reader.store.all_embeddings()[1][0]])
        hits_before = [(x.id, round(x.distance, 5)) for x in reader.search(q, 5)[0]]
        gen_before = reader.generation
        h.set_active(other_model(home))
        new_lib = Library(h, RuntimeConfig(intra_op_threads=1))
        rep = new_lib.reembed(IndexConfig())
        assert rep.swapped and rep.encoded == 11
        reader.refresh()
        # the old model's reader keeps its generation and answers; it says why and never mixes in the new rows
        assert reader.generation == gen_before and any("now built by model" in w for w in reader.warnings)
        assert [(x.id, round(x.distance, 5)) for x in reader.search(q, 5)[0]] == hits_before
        with new_lib.open_reader() as fresh:  # a reader opened now gets the new model throughout
            assert fresh.generation > gen_before and len(fresh.ann) == 11
            assert fresh.info["model_hash"] == new_lib.manifest.model_hash
    finally:
        reader.close()
    with pytest.raises(Exception, match="ftspl index reembed"):
        Library(h, RuntimeConfig(intra_op_threads=1), model_dir=old_lib.model_dir).open_reader()
