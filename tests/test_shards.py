"""Parquet shards: the format round-trips, foreign writers' shards read, bad shards and rows are refused.

The unit tests use small random vectors (the shard format does not care what
made them); the end-to-end tests index real meshes with the exported model and
compare ``--shards`` + ``index merge`` with a plain ``index add``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from ftspl.engine.errors import IndexStateError, InputFileError
from ftspl.engine.index.merge import merge_rows
from ftspl.engine.index.pipeline.commit import Committer
from ftspl.engine.index.pipeline.records import AddReport, EncodedShape
from ftspl.engine.index.store.schema import ShapeRecord
from ftspl.engine.index.shards import (
    ShardIdentity,
    ShardWriter,
    iter_rows,
    read_identity,
    shard_files,
)

DIM = 16
IDENT = ShardIdentity("lite0-test-0123456789ab", "f" * 64, "abcdef0123456789", {"views": 12, "up": "y"})


def _records(n: int, seed: int = 0, root: str = "/data/meshes") -> list[ShapeRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        out.append(ShapeRecord(
            path=f"{root}/{'chair' if i % 2 else 'table'}/m{i:03d}.obj", content_hash=f"{i:064x}",
            label=None if i == 3 else ("chair" if i % 2 else "table"), faces=None if i == 4 else 100 + i,
            kind="views" if i == 5 else "mesh", embedding=rng.standard_normal(DIM).astype(np.float32),
            preview=None if i == 6 else bytes([137, 80, 78, 71, i, 0, 0]),  # ends in zero bytes on purpose
            # per-view embeddings and strips (matched view) on some rows, as a model with that output makes
            view_embeddings=rng.standard_normal((3, DIM)).astype(np.float32) if i % 3 == 0 else None,
            view_strip=bytes([82, 73, i, 0]) if i % 3 == 0 else None,
        ))
    return out


def test_writer_round_trips_every_field_bit_for_bit(tmp_path: Path) -> None:
    recs = _records(10)
    report = AddReport()
    writer = ShardWriter(tmp_path / "out", IDENT, report, rows_per_shard=4)
    writer.commit([EncodedShape(r) for r in recs[:7]])
    writer.commit([EncodedShape(r) for r in recs[7:]])
    writer.close()
    assert report.added == 10 and len(writer.files) == 3  # 4 + 4 + 2 rows
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    files = shard_files([tmp_path / "out"])
    assert files == sorted(writer.files)
    got = read_identity(files)
    assert (got.model_id, got.model_hash, got.render_spec_hash, got.render_spec) == (
        IDENT.model_id, IDENT.model_hash, IDENT.render_spec_hash, IDENT.render_spec)
    rows = list(iter_rows(files, DIM))
    assert [e for _, _, e in rows] == [None] * 10
    by_path = {r.path: r for _, r, _ in rows}
    for rec in recs:
        back = by_path[rec.path]
        assert (back.content_hash, back.label, back.faces, back.kind, back.preview) == (
            rec.content_hash, rec.label, rec.faces, rec.kind, rec.preview)
        assert back.embedding.dtype == np.float32 and np.array_equal(back.embedding, rec.embedding)
        if rec.view_embeddings is None:
            assert back.view_embeddings is None and back.view_strip is None
        else:
            assert np.array_equal(back.view_embeddings, rec.view_embeddings) and back.view_strip == rec.view_strip


def _foreign_shard(path: Path, rows: list[dict]) -> Path:
    """A shard as a Spark job would write it: list<double> embeddings, no optional columns, no metadata."""
    table = pa.table({
        "path": pa.array([r["path"] for r in rows], pa.string()),
        "content_hash": pa.array([r["hash"] for r in rows], pa.string()),
        "label": pa.array([r.get("label") for r in rows], pa.string()),
        "render_spec_hash": pa.array([r.get("spec", IDENT.render_spec_hash) for r in rows], pa.string()),
        "model_id": pa.array([r.get("model", IDENT.model_id) for r in rows], pa.string()),
        "embedding": pa.array([r["emb"] for r in rows], pa.list_(pa.float64())),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def test_foreign_shards_read_and_bad_rows_get_one_reason_each(tmp_path: Path) -> None:
    good = [0.25] * DIM
    _foreign_shard(tmp_path / "spark" / "part-00000.parquet", [
        {"path": "/d/a.obj", "hash": "aa", "label": "x", "emb": good},
        {"path": "rel/b.obj", "hash": "bb", "emb": good},  # relative path
        {"path": "/d/c.obj", "hash": "cc", "emb": good[:-1]},  # one value short
        {"path": "/d/d.obj", "hash": "dd", "emb": [float("nan")] * DIM},
        {"path": "/d/e.obj", "hash": "", "emb": good},  # no content hash
        {"path": "/d/f.obj", "hash": "ff", "emb": None},
    ])
    (tmp_path / "spark" / "_SUCCESS").write_text("")  # Spark's marker files are not shards
    files = shard_files([tmp_path / "spark"])
    assert [f.name for f in files] == ["part-00000.parquet"]
    found = read_identity(files)
    assert found.model_hash is None and found.render_spec is None
    rows = {p: (r, e) for p, r, e in iter_rows(files, DIM)}
    assert rows["/d/a.obj"][1] is None and rows["/d/a.obj"][0].kind == "mesh"
    assert rows["/d/a.obj"][0].embedding.dtype == np.float32
    assert "absolute" in rows["rel/b.obj"][1]
    assert f"{DIM} values" in rows["/d/c.obj"][1]
    assert "NaN" in rows["/d/d.obj"][1]
    assert "content_hash" in rows["/d/e.obj"][1]
    assert f"{DIM} values" in rows["/d/f.obj"][1]


def test_mixed_models_missing_columns_and_empty_folders_are_refused(tmp_path: Path) -> None:
    emb = [0.0] * DIM
    _foreign_shard(tmp_path / "mix" / "a.parquet", [{"path": "/d/a.obj", "hash": "aa", "emb": emb}])
    _foreign_shard(tmp_path / "mix" / "b.parquet", [{"path": "/d/b.obj", "hash": "bb", "emb": emb, "model": "other"}])
    with pytest.raises(InputFileError, match="more than one model"):
        read_identity(shard_files([tmp_path / "mix"]))
    bad = tmp_path / "bad" / "x.parquet"
    bad.parent.mkdir()
    pq.write_table(pa.table({"path": ["/d/a.obj"], "embedding": [[0.0]]}), bad)
    with pytest.raises(InputFileError, match="missing column"):
        read_identity([bad])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "y.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(InputFileError, match="not a readable Parquet"):
        read_identity(shard_files([tmp_path / "junk"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no Parquet shards"):
        shard_files([tmp_path / "empty"])
    with pytest.raises(InputFileError, match="no such folder"):
        shard_files([tmp_path / "missing"])


class _ListSink:
    def __init__(self) -> None:
        self.batches: list[list[EncodedShape]] = []

    def commit(self, shapes) -> None:
        if shapes:
            self.batches.append(list(shapes))


def test_merge_rows_skips_unchanged_updates_changed_and_keeps_the_first_duplicate(tmp_path: Path) -> None:
    recs = _records(6)
    writer = ShardWriter(tmp_path / "s", IDENT, AddReport(), rows_per_shard=100)
    writer.commit([EncodedShape(r) for r in recs])
    writer.close()
    dup = ShapeRecord(**{**recs[0].__dict__, "content_hash": "9" * 64})  # same path, other content
    second = ShardWriter(tmp_path / "s", IDENT, AddReport())
    second.commit([EncodedShape(dup)])
    second.close()
    from ftspl.engine.index.store.schema import normalize_path

    stored = {normalize_path(recs[1].path): (7, recs[1].content_hash),  # unchanged
              normalize_path(recs[2].path): (8, "old")}  # changed: keeps id 8
    sink, report = _ListSink(), AddReport()
    files = sorted(writer.files) + second.files  # the first writer's shard comes first
    merge_rows(files, stored, Committer(sink, report, commit_every=2), dim=DIM)
    committed = [(s.record.path, s.old_id) for batch in sink.batches for s in batch]
    assert all(len(b) <= 2 for b in sink.batches)
    assert [p for p, _ in committed] == [recs[i].path for i in (0, 2, 3, 4, 5)]
    assert dict(committed)[recs[2].path] == 8 and dict(committed)[recs[0].path] is None
    assert report.unchanged == 1
    assert report.failed == [(recs[0].path, "listed twice in the shards with different content; the first row is kept")]


# ------------------------------------------------------------------ end to end (real meshes, the exported model)


def _gallery(root: Path) -> Path:
    import trimesh

    rng = np.random.default_rng(5)
    for i in range(7):
        mesh = trimesh.creation.box(1 + 3 * rng.random(3)) if i % 2 else trimesh.creation.icosphere(1, 1 + rng.random())
        path = root / ("box" if i % 2 else "ball") / f"s{i:02d}.{'ply' if i % 3 else 'stl'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(path)
    (root / "box" / "broken.obj").write_text("v 0 0\nf 1 2 9\n")
    return root


def _index(home: Path) -> dict[str, tuple]:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(home / "index" / "shapes.sqlite", readonly=True) as store:
        ids, emb = store.all_embeddings()
        rows = {r.id: r for r in store.get([int(i) for i in ids], previews=True)}
    return {rows[int(i)].path: (e, rows[int(i)].content_hash, rows[int(i)].label, rows[int(i)].faces,
                                rows[int(i)].kind, rows[int(i)].preview) for i, e in zip(ids, emb)}


@pytest.mark.slow
def test_shards_then_merge_equal_a_plain_add_and_refuse_other_models(model_home: Path, tmp_path: Path,
                                                                     gl_available) -> None:
    from conftest import run_ftspl

    from ftspl.engine.home import Home
    from ftspl.engine.index.library import IndexConfig, Library
    from ftspl.engine.index.verify import verify_index
    from ftspl.engine.model.encoders import RuntimeConfig

    gallery = _gallery(tmp_path / "gallery")
    plain_home, merged_home = tmp_path / "plain", tmp_path / "merged"
    shutil.copytree(model_home, plain_home)
    shutil.copytree(model_home, merged_home)
    cfg = IndexConfig(batch_shapes=2, commit_every=3)
    plain = Library(Home(plain_home), RuntimeConfig(device="cpu")).add(gallery, cfg)
    assert plain.added == 7 and [p for p, _ in plain.failed] == [str(gallery / "box" / "broken.obj")]

    # interrupted after the first shapes: whole shards only, and the rerun writes just the rest
    lib = Library(Home(merged_home), RuntimeConfig(device="cpu"))
    seen = []
    first, files1 = lib.write_shards(gallery, tmp_path / "shards", cfg, progress=lambda ph, d, t: seen.append(ph),
                                     should_stop=lambda: seen.count("index") >= 3)
    assert 0 < first.added < 7 and len(files1) == 1
    second, files2 = lib.write_shards(gallery, tmp_path / "shards", cfg)
    assert second.added + first.added == 7 and second.unchanged == first.added
    assert not (merged_home / "index" / "shapes.sqlite").exists()  # shards mode never touches the index

    r = run_ftspl(merged_home, "index", "merge", str(tmp_path / "shards"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["added"] == 7
    a, b = _index(plain_home), _index(merged_home)
    assert sorted(a) == sorted(b)
    for path in a:
        assert np.abs(a[path][0] - b[path][0]).max() <= 1e-6, path
        assert a[path][1:] == b[path][1:], path
    problems, facts = verify_index(Home(merged_home))
    assert not problems and facts["shapes"] == 7
    again = run_ftspl(merged_home, "index", "merge", str(tmp_path / "shards"), "--json")
    assert json.loads(again.stdout)["unchanged"] == 7

    # shards of another model, or another render spec, are refused with one line and nothing changes
    for column, value, needle in (("model_id", "alexnet-run-000000000000", "made by model"),
                                  ("render_spec_hash", "0000000000000000", "rendered with spec")):
        table = pq.read_table(files2[0])
        table = table.set_column(table.schema.get_field_index(column), column, pa.array([value] * table.num_rows))
        other = tmp_path / f"other-{column}"
        other.mkdir()
        pq.write_table(table, other / "part-0.parquet")
        r = run_ftspl(merged_home, "index", "merge", str(other))
        assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert len(_index(merged_home)) == 7


def test_merge_refuses_shards_of_another_model_before_taking_the_lock(model_home: Path, tmp_path: Path) -> None:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library

    _foreign_shard(tmp_path / "s" / "p.parquet", [{"path": "/d/a.obj", "hash": "aa", "emb": [0.0] * 1280}])
    with pytest.raises(IndexStateError, match="made by model lite0-test"):
        Library(Home(model_home)).merge([tmp_path / "s"])
    assert not (model_home / "index" / "shapes.sqlite").exists()
