"""SQLite shape store: verbs, generations, compatibility, WAL readers, corrupt files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ftspl.engine.errors import IndexStateError
from ftspl.engine.index.store import ShapeRecord, ShapeStore

DIM = 8


def emb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def rec(path: Path, seed: int = 0, label: str | None = "chair", **kw) -> ShapeRecord:
    fields = dict(content_hash=f"h{seed}", label=label, faces=100 + seed, kind="mesh", embedding=emb(seed))
    fields.update(kw)
    return ShapeRecord(path=path, **fields)


@pytest.fixture()
def store(tmp_path):
    s = ShapeStore(tmp_path / "idx" / "shapes.db")
    s.ensure_compatible("m1", "hash1", "spec1", DIM)
    yield s
    s.close()


def test_new_store_has_info_wal_and_generation(tmp_path) -> None:
    with ShapeStore(tmp_path / "s.db") as s:
        info = s.get_info()
        assert info["generation"] == 0 and info["created"] > 0
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert s.count() == 0 and s.integrity_check() == []


def test_upsert_lookup_and_update_keep_the_id(store, tmp_path) -> None:
    a, b = tmp_path / "a.obj", tmp_path / "b.obj"
    g0 = store.generation()
    ids = store.upsert_batch([rec(a, 1), rec(b, 2)])
    assert len(ids) == 2 and ids[0] != ids[1]
    assert store.generation() == g0 + 1  # one batch, one generation
    assert store.lookup(a) == (ids[0], "h1")
    # paths are keyed absolute and resolved
    assert store.lookup(tmp_path / "sub" / ".." / "a.obj") == (ids[0], "h1")
    assert store.lookup(tmp_path / "c.obj") is None
    again = store.upsert_batch([rec(b, 5, label="table")])
    assert again == [ids[1]] and store.count() == 2
    assert store.lookup(b) == (ids[1], "h5")
    assert store.get([ids[1]])[0].label == "table"
    assert store.generation() == g0 + 2


def test_get_keeps_order_skips_missing_and_loads_previews_on_request(store, tmp_path) -> None:
    ids = store.upsert_batch(
        [rec(tmp_path / f"{i}.obj", i, preview=b"\x89PNG" + bytes([i])) for i in range(5)]
    )
    order = [ids[3], 99_999, ids[0], ids[4]]
    rows = store.get(order)
    assert [r.id for r in rows] == [ids[3], ids[0], ids[4]]
    assert rows[0].path == str((tmp_path / "3.obj").resolve())
    assert rows[0].faces == 103 and rows[0].kind == "mesh" and rows[0].preview is None
    assert store.get(np.array([ids[2]]), previews=True)[0].preview == b"\x89PNG\x02"


def test_remove_paths_and_remove_under(store, tmp_path) -> None:
    paths = [tmp_path / "x" / "1.obj", tmp_path / "x" / "sub" / "2.obj", tmp_path / "x2" / "3.obj", tmp_path / "4.obj"]
    ids = store.upsert_batch([rec(p, i) for i, p in enumerate(paths)])
    g = store.generation()
    assert store.remove_paths([tmp_path / "nothing.obj"]) == []
    assert store.generation() == g  # nothing changed, nothing committed
    assert store.remove_paths([paths[3], tmp_path / "nothing.obj"]) == [ids[3]]
    assert store.lookup(paths[3]) is None and store.generation() == g + 1
    # a folder prefix removes what is below it, not its siblings sharing a name prefix
    assert store.remove_under(tmp_path / "x") == sorted(ids[:2])
    assert set(store.entries()) == {str(paths[2].resolve())}
    assert store.entries(tmp_path / "x2") == {str(paths[2].resolve()): (ids[2], "h2")}


def test_ids_are_never_reused(store, tmp_path) -> None:
    first = store.upsert_batch([rec(tmp_path / "a.obj", 1), rec(tmp_path / "b.obj", 2)])
    store.remove_paths([tmp_path / "b.obj"])  # the highest id
    again = store.upsert_batch([rec(tmp_path / "c.obj", 3)])
    assert again[0] > max(first)


def test_labels_counts(store, tmp_path) -> None:
    store.upsert_batch(
        [rec(tmp_path / f"{i}.obj", i, label=lab) for i, lab in enumerate(["chair", "table", "chair", None])]
    )
    assert store.labels() == {"chair": 2, "table": 1}


def test_all_and_chunked_embeddings_and_changes_since(store, tmp_path) -> None:
    ids = store.upsert_batch([rec(tmp_path / f"{i}.obj", i) for i in range(5)])
    all_ids, mat = store.all_embeddings(chunk=2)
    np.testing.assert_array_equal(all_ids, sorted(ids))
    assert mat.dtype == np.float32 and mat.shape == (5, DIM)
    np.testing.assert_array_equal(mat[0], emb(0))
    chunks = list(store.iter_embeddings(chunk=2))
    assert [len(c[0]) for c in chunks] == [2, 2, 1]

    saved_at = store.generation()
    store.upsert_batch([rec(tmp_path / "1.obj", 11), rec(tmp_path / "new.obj", 12)])
    store.remove_paths([tmp_path / "3.obj"])
    up_ids, up_vec, removed = store.changes_since(saved_at)
    new_id = store.lookup(tmp_path / "new.obj")[0]
    np.testing.assert_array_equal(up_ids, [ids[1], new_id])
    np.testing.assert_array_equal(up_vec[0], emb(11))
    np.testing.assert_array_equal(removed, [ids[3]])
    nothing = store.changes_since(store.generation())
    assert len(nothing[0]) == 0 and nothing[1].shape == (0, DIM) and len(nothing[2]) == 0
    with pytest.raises(IndexStateError, match="newer"):
        store.changes_since(store.generation() + 1)


def test_bad_records_raise_and_roll_back_the_whole_batch(store, tmp_path) -> None:
    g = store.generation()
    good = rec(tmp_path / "ok.obj", 1)
    with pytest.raises(ValueError, match="index stores 8"):
        store.upsert_batch([good, rec(tmp_path / "b.obj", 2, embedding=np.zeros(DIM + 1, np.float32))])
    with pytest.raises(ValueError, match="NaN"):
        store.upsert_batch([good, rec(tmp_path / "b.obj", 2, embedding=np.full(DIM, np.nan, np.float32))])
    with pytest.raises(ValueError, match="kind"):
        store.upsert_batch([rec(tmp_path / "b.obj", 2, kind="cloud")])
    with pytest.raises(ValueError, match="twice"):
        store.upsert_batch([good, rec(tmp_path / "sub" / ".." / "ok.obj", 3)])
    assert store.count() == 0 and store.generation() == g
    with pytest.raises(RuntimeError, match="midway"):
        with store.batch():
            store.upsert_batch([good])
            raise RuntimeError("midway")
    assert store.count() == 0 and store.generation() == g


def test_batch_groups_verbs_into_one_generation(store, tmp_path) -> None:
    store.upsert_batch([rec(tmp_path / "old.obj", 1)])
    g = store.generation()
    with store.batch() as gen:
        assert gen == g + 1
        store.upsert_batch([rec(tmp_path / "a.obj", 2)])
        store.remove_paths([tmp_path / "old.obj"])
    assert store.generation() == g + 1
    assert set(store.entries()) == {str((tmp_path / "a.obj").resolve())}


def test_compatibility_refuses_another_model_or_spec(tmp_path) -> None:
    path = tmp_path / "s.db"
    with ShapeStore(path) as s:
        info = s.ensure_compatible("m1", "hash1", "spec1", DIM)
        assert info["model_hash"] == "hash1" and info["embed_dim"] == DIM
        s.upsert_batch([rec(tmp_path / "a.obj", 1)])
        assert s.ensure_compatible("m1", "hash1", "spec1", DIM)["model_id"] == "m1"
        with pytest.raises(IndexStateError, match="model_hash 'hash1'.*--rebuild") as err:
            s.ensure_compatible("m1", "hash2", "spec1", DIM)
        assert str(path) in str(err.value)
        with pytest.raises(IndexStateError, match="render_spec_hash"):
            s.ensure_compatible("m1", "hash1", "spec2", DIM)
        # once empty again, a store may be claimed by another model
        s.remove_paths([tmp_path / "a.obj"])
        assert s.ensure_compatible("m2", "hash2", "spec2", 16)["embed_dim"] == 16
    with ShapeStore(path, readonly=True) as ro:
        assert ro.ensure_compatible("m2", "hash2", "spec2", 16)["model_id"] == "m2"
        with pytest.raises(IndexStateError, match="another model"):
            ro.ensure_compatible("m1", "hash1", "spec1", DIM)


def test_readonly_sees_committed_data_while_a_writer_transaction_is_open(store, tmp_path) -> None:
    first = store.upsert_batch([rec(tmp_path / "a.obj", 1)])
    reader = ShapeStore(store.path, readonly=True)
    try:
        with store.batch():
            store.upsert_batch([rec(tmp_path / "b.obj", 2)])
            # the writer holds an open write transaction; the reader is neither blocked nor shown it
            assert reader.count() == 1
            assert reader.lookup(tmp_path / "a.obj") == (first[0], "h1")
            assert reader.lookup(tmp_path / "b.obj") is None
            ids, mat = reader.all_embeddings()
            np.testing.assert_array_equal(ids, first)
        assert reader.count() == 2 and reader.generation() == store.generation()
        with pytest.raises(IndexStateError, match="read-only"):
            reader.upsert_batch([rec(tmp_path / "c.obj", 3)])
        with pytest.raises(sqlite3.OperationalError):
            reader._conn.execute("DELETE FROM shapes")
    finally:
        reader.close()


def test_readonly_after_writer_closed_and_missing_file(tmp_path) -> None:
    path = tmp_path / "s.db"
    with ShapeStore(path) as s:
        s.ensure_compatible("m", "h", "s", DIM)
        s.upsert_batch([rec(tmp_path / "a.obj", 1)])
    with ShapeStore(path, readonly=True) as ro:  # WAL side files may be gone now
        assert ro.count() == 1
    with pytest.raises(IndexStateError, match="no shape index"):
        ShapeStore(tmp_path / "absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()


@pytest.mark.parametrize("readonly", [False, True])
def test_corrupt_file_is_rejected_naming_it(tmp_path, readonly: bool) -> None:
    path = tmp_path / "shapes.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(IndexStateError, match="shapes.db") as err:
        ShapeStore(path, readonly=readonly)
    assert "rebuild" in str(err.value)


def test_foreign_sqlite_file_is_rejected(tmp_path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(IndexStateError, match="not an ftspl shape index"):
        ShapeStore(path)


def test_newer_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "s.db"
    ShapeStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(IndexStateError, match="schema version 99"):
        ShapeStore(path)


def test_set_info_bumps_generation_and_guards_it(store) -> None:
    g = store.generation()
    store.set_info(note="hello")
    assert store.get_info()["note"] == "hello" and store.generation() == g + 1
    store.set_info("render_spec", '{"views": 12}')
    assert store.get_info()["render_spec"] == '{"views": 12}' and store.generation() == g + 2
    with pytest.raises(ValueError, match="generation"):
        store.set_info(generation=5)
