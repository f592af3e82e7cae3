"""ANN indexes: every registered backend obeys the same verbs; graph backends' recall vs the exact twin."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from ftspl.engine import files as atomic
from ftspl.engine.errors import IndexStateError, UnknownKeyError
from ftspl.engine.index import ann
from ftspl.engine.index.ann import faiss_hnsw
from ftspl.engine.index.ann import (
    ANN_BACKENDS,
    ExactIndex,
    FaissHnswIndex,
    HnswIndex,
    load_index,
    make_index,
    read_manifest,
)
from ftspl.engine.index.ann.graph import (
    EF_AUTO_MAX,
    auto_ef,
    huge_pages_for_new_memory,
    import_wheel,
)

DIM = 16


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int, noise: float) -> np.ndarray:
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


#: The wheel each optional backend needs; a backend whose wheel is absent is skipped, by name.
WHEELS = {"faiss-hnsw": "faiss", "usearch": "usearch"}


def _param(backend: str):
    module = WHEELS.get(backend)
    missing = module is not None and importlib.util.find_spec(module) is None
    return pytest.param(backend, marks=pytest.mark.skipif(missing, reason=f"{backend} needs the {module} wheel"))


needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="needs the faiss wheel")
BACKENDS = [_param(b) for b in sorted(ANN_BACKENDS)]
GRAPHS = [_param(b) for b in sorted(ANN_BACKENDS) if b != "exact"]


def new(backend: str, dim: int = DIM, **params) -> ann.AnnIndex:
    # An exhaustive beam makes tiny graph indexes exact, so verb tests compare exactly.
    if backend != "exact":
        params.setdefault("ef_search", 256)
    return make_index(backend, dim, **params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_query_returns_self_first_with_euclidean_distances(backend: str) -> None:
    rng = np.random.default_rng(0)
    x = unit_rows(rng, 200)
    ids = np.arange(200, dtype=np.int64) * 7 + 3
    index = new(backend)
    index.add(ids, x)
    assert len(index) == 200
    got, dist = index.query(x[:20], k=5)
    assert got.dtype == np.int64 and dist.dtype == np.float32 and got.shape == dist.shape == (20, 5)
    np.testing.assert_array_equal(got[:, 0], ids[:20])
    row = {int(i): r for r, i in enumerate(ids)}
    want = np.linalg.norm(x[[[row[int(i)] for i in g] for g in got]] - x[:20, None, :], axis=2)
    np.testing.assert_allclose(dist, want, atol=1e-5)
    assert (np.diff(dist, axis=1) >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_contains_ids_and_len(backend: str) -> None:
    index = new(backend)
    index.add(np.array([5, 1, 9]), unit_rows(np.random.default_rng(1), 3))
    assert 5 in index and 1 in index and 9 in index
    assert 2 not in index and "x" not in index
    np.testing.assert_array_equal(index.ids(), [1, 5, 9])
    assert index.ids().dtype == np.int64


@pytest.mark.parametrize("backend", BACKENDS)
def test_re_adding_an_id_replaces_its_vector(backend: str) -> None:
    rng = np.random.default_rng(2)
    x = unit_rows(rng, 50)
    index = new(backend)
    index.add(np.arange(50), x)
    index.add(np.array([7]), x[30])  # id 7 now sits where id 30 is
    assert len(index) == 50
    got, dist = index.query(x[7], k=1)
    assert got[0, 0] != 7
    got, dist = index.query(x[30], k=2)
    assert set(got[0].tolist()) == {7, 30}
    np.testing.assert_allclose(dist[0], [0.0, 0.0], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_then_re_add(backend: str) -> None:
    rng = np.random.default_rng(3)
    x = unit_rows(rng, 60)
    index = new(backend)
    index.add(np.arange(60), x)
    index.remove(np.array([0, 1, 2, 999]))  # unknown ids are ignored
    assert len(index) == 57 and 0 not in index
    got, _ = index.query(x[:3], k=57)
    assert not {0, 1, 2} & set(got.ravel().tolist())
    index.add(np.array([1]), x[1])
    assert len(index) == 58 and 1 in index
    assert index.query(x[1], k=1)[0][0, 0] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_k_larger_than_index_is_clamped_and_empty_index_returns_no_columns(backend: str) -> None:
    rng = np.random.default_rng(4)
    index = new(backend)
    got, dist = index.query(unit_rows(rng, 3), k=10)
    assert got.shape == (3, 0) and dist.shape == (3, 0)
    index.add(np.arange(4), unit_rows(rng, 4))
    got, dist = index.query(unit_rows(rng, 2), k=10)
    assert got.shape == (2, 4)
    assert sorted(got[0].tolist()) == [0, 1, 2, 3]
    index.remove(np.arange(4))
    assert index.query(unit_rows(rng, 1), k=3)[0].shape == (1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_value_error(backend: str) -> None:
    index = new(backend)
    ok = unit_rows(np.random.default_rng(5), 2)
    with pytest.raises(ValueError, match="shape"):
        index.add(np.arange(2), np.zeros((2, DIM + 1), np.float32))
    bad = ok.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.arange(2), bad)
    bad[1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.add(np.arange(2), bad)
    with pytest.raises(ValueError, match="unique"):
        index.add(np.array([1, 1]), ok)
    with pytest.raises(ValueError, match="non-negative"):
        index.add(np.array([-1, 2]), ok)
    with pytest.raises(ValueError, match="ids for"):
        index.add(np.arange(3), ok)
    assert len(index) == 0  # nothing half-added
    index.add(np.arange(2), ok)
    with pytest.raises(ValueError, match="shape"):
        index.query(np.zeros((1, DIM - 1), np.float32), k=1)
    with pytest.raises(ValueError, match="NaN"):
        index.query(np.full((1, DIM), np.nan, np.float32), k=1)
    with pytest.raises(ValueError, match="k must be"):
        index.query(ok, k=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_save_load_round_trip_keeps_results_and_meta(backend: str, tmp_path) -> None:
    rng = np.random.default_rng(6)
    x = unit_rows(rng, 300)
    index = new(backend)
    index.add(np.arange(300) + 1000, x)
    index.remove(np.arange(1000, 1010))
    before = index.query(x[:30], k=8)
    path = tmp_path / "vectors.ann"
    index.save(path, meta={"generation": 42})
    loaded = type(index).load(path)
    assert type(loaded) is type(index) and loaded.dim == DIM
    assert loaded.meta == {"generation": 42}
    assert len(loaded) == 290 and 1005 not in loaded and 1010 in loaded
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    after = loaded.query(x[:30], k=8)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    assert type(load_index(path)) is type(index)
    assert read_manifest(path)["meta"]["generation"] == 42
    # a loaded index keeps working: removed ids can come back, new ids go in
    loaded.add(np.array([1005, 5]), x[5:7])
    assert len(loaded) == 292 and loaded.query(x[6], k=1)[0][0, 0] == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_save_leaves_previous_index_intact(backend: str, tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(7)
    x = unit_rows(rng, 40)
    path = tmp_path / "vectors.ann"
    index = new(backend)
    index.add(np.arange(20), x[:20])
    index.save(path, meta={"generation": 1})
    files_before = sorted(p.name for p in tmp_path.iterdir())
    index.add(np.arange(20, 40), x[20:])

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(path, meta={"generation": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # no temp or orphan left
    old = load_index(path)
    assert len(old) == 20 and old.meta == {"generation": 1}
    index.save(path, meta={"generation": 2})
    assert len(load_index(path)) == 40
    assert len(list(tmp_path.iterdir())) == 2  # manifest + one payload: older payloads are cleaned up


@pytest.mark.parametrize("backend", BACKENDS)
def test_load_rejects_missing_corrupt_or_foreign_files(backend: str, tmp_path) -> None:
    with pytest.raises(IndexStateError, match="no vector index"):
        load_index(tmp_path / "absent.ann")
    junk = tmp_path / "junk.ann"
    junk.write_text("{not json")
    with pytest.raises(IndexStateError, match="junk.ann"):
        load_index(junk)
    path = tmp_path / "v.ann"
    index = new(backend)
    index.add(np.arange(3), unit_rows(np.random.default_rng(8), 3))
    index.save(path)
    other = next(cls for name, cls in ANN_BACKENDS.items() if name != backend)
    with pytest.raises(IndexStateError, match="backend"):
        other.load(path)
    payload = tmp_path / read_manifest(path)["payload"]
    if backend != "exact":  # exact's np.load lets zipfile.BadZipFile through on a cut .npz
        whole = payload.read_bytes()
        payload.write_bytes(whole[: len(whole) // 2])  # cut short (a disk that filled up)
        with pytest.raises(IndexStateError, match="rebuild"):
            load_index(path)
    payload.write_bytes(b"\x00garbage" * 3)
    with pytest.raises(IndexStateError, match="rebuild"):
        load_index(path)
    payload.unlink()
    with pytest.raises(IndexStateError, match="missing"):
        load_index(path)


def test_make_index_lists_valid_backends() -> None:
    with pytest.raises(UnknownKeyError, match="exact, faiss-hnsw, hnsw, usearch"):
        make_index("annoy", 8)
    assert isinstance(make_index("exact", 8), ExactIndex)
    assert ann.DEFAULT_BACKEND in ANN_BACKENDS


def test_a_missing_backend_wheel_names_the_package() -> None:
    with pytest.raises(IndexStateError, match="pip install no-such-wheel"):
        import_wheel("ftspl_no_such_module", "no-such-wheel", "faiss-hnsw")


@pytest.mark.parametrize("backend", GRAPHS)
def test_graph_matches_exact_on_small_sets(backend: str) -> None:
    rng = np.random.default_rng(9)
    x = unit_rows(rng, 500)
    q = unit_rows(rng, 50)
    ids = rng.permutation(10_000)[:500].astype(np.int64)
    # more threads than this machine has cores: parallel inserts must not leave nodes unreachable
    threads = {} if backend == "faiss-hnsw" else {"num_threads": 8}
    exact, graph = ExactIndex(DIM), make_index(backend, DIM, ef_search=500, **threads)
    exact.add(ids, x)
    graph.add(ids, x)
    e_ids, e_d = exact.query(q, k=10)
    g_ids, g_d = graph.query(q, k=10)
    np.testing.assert_array_equal(g_ids, e_ids)
    np.testing.assert_allclose(g_d, e_d, atol=1e-5)


@pytest.mark.parametrize("backend", GRAPHS)
def test_graph_recall_at_10_on_clustered_vectors(backend: str) -> None:
    rng = np.random.default_rng(10)
    dim = 64
    both = clustered(rng, 5200, dim, clusters=50, noise=0.5)  # queries come from the same clusters
    x, q = both[:5000], both[5000:]
    ids = np.arange(5000, dtype=np.int64)
    exact, graph = ExactIndex(dim), make_index(backend, dim)  # library defaults
    exact.add(ids, x)
    graph.add(ids, x)
    truth, _ = exact.query(q, k=10)
    got, _ = graph.query(q, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
    assert recall >= 0.99, recall


@pytest.mark.parametrize("backend", GRAPHS)
def test_graph_recall_holds_after_churn(backend: str) -> None:
    """Remove half, replace a quarter's vectors, add new ids: recall against the exact twin stays high."""
    rng = np.random.default_rng(11)
    dim = 32
    both = clustered(rng, 3100, dim, clusters=30, noise=0.5)
    x, q = both[:3000], both[3000:]
    exact, graph = ExactIndex(dim), make_index(backend, dim)
    for index in (exact, graph):
        index.add(np.arange(2000), x[:2000])
        index.remove(np.arange(0, 2000, 2))
        index.add(np.arange(1, 1000, 2), x[2000:2500])  # new vectors under live ids
        index.add(np.arange(5000, 5500), x[2500:])
    np.testing.assert_array_equal(graph.ids(), exact.ids())
    truth, _ = exact.query(q, k=10)
    got, _ = graph.query(q, k=10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())])
    assert recall >= 0.98, recall
    assert not set(got.ravel().tolist()) & set(range(0, 2000, 2))


@pytest.mark.parametrize("backend", GRAPHS)
def test_graph_query_beam_is_never_below_k(backend: str) -> None:
    rng = np.random.default_rng(14)
    x = unit_rows(rng, 400)
    index = make_index(backend, DIM, M=4, ef_construction=16, ef_search=2)
    index.add(np.arange(400), x)
    got, _ = index.query(x[:5], k=120)  # a beam narrower than k cannot return k results
    assert got.shape == (5, 120)
    assert all(len(set(row)) == 120 for row in got.tolist())
    assert index.ef_search == 2  # the configured value is kept for later queries


@pytest.mark.parametrize("backend", GRAPHS)
def test_graph_default_beam_grows_with_size_and_survives_save_load(backend: str, tmp_path) -> None:
    index = make_index(backend, DIM)
    small = index.ef_search
    index.add(np.arange(50), unit_rows(np.random.default_rng(17), 50))
    assert index.ef_search == small  # below 100k: the small-library beam
    index.save(tmp_path / "g.ann")
    assert read_manifest(tmp_path / "g.ann")["params"]["ef_search"] is None  # size-aware, not a number
    loaded = load_index(tmp_path / "g.ann")
    assert loaded.ef_search == small
    loaded.ef_search = 77
    loaded.save(tmp_path / "g.ann")
    assert load_index(tmp_path / "g.ann").ef_search == 77
    with pytest.raises(ValueError, match="ef_search"):
        loaded.ef_search = 0


def test_auto_ef_anchors_interpolation_and_cap() -> None:
    assert auto_ef(10, 128, 384) == auto_ef(100_000, 128, 384) == 128
    assert auto_ef(1_000_000, 128, 384) == 384
    mid = auto_ef(300_000, 128, 384)
    assert 128 < mid < 384 and mid % 8 == 0
    assert auto_ef(10_000_000, 128, 384) > 384
    assert auto_ef(10**12, 128, 384) == EF_AUTO_MAX


@needs_faiss
def test_faiss_tombstones_route_but_never_return_and_fall_back_when_short(monkeypatch) -> None:
    monkeypatch.setattr(faiss_hnsw, "COMPACT_MIN_DEAD", 10**9)  # keep every tombstone
    rng = np.random.default_rng(18)
    x = unit_rows(rng, 400)
    index = FaissHnswIndex(DIM, M=4, ef_construction=16, ef_search=4)
    index.add(np.arange(400), x)
    index.remove(np.arange(395))  # 5 live among 395 dead slots
    assert index.dead == 395 and len(index) == 5
    got, dist = index.query(x[:3], k=10)
    assert got.shape == (3, 5)
    assert all(sorted(row) == [395, 396, 397, 398, 399] for row in got.tolist())
    want = np.linalg.norm(x[got] - x[:3, None, :], axis=2)
    np.testing.assert_allclose(dist, want, atol=1e-5)


@needs_faiss
def test_faiss_rebuilds_the_graph_once_dead_slots_outnumber_live(monkeypatch) -> None:
    monkeypatch.setattr(faiss_hnsw, "COMPACT_MIN_DEAD", 20)
    rng = np.random.default_rng(19)
    x = unit_rows(rng, 100)
    index = FaissHnswIndex(DIM, ef_search=200)
    index.add(np.arange(100), x)
    index.remove(np.arange(45))
    assert index.dead == 45  # still fewer dead than live
    index.add(np.arange(50, 61), x[:11])  # replacing vectors leaves dead slots too: 56 dead, 55 live
    assert index.dead == 0 and index._index.ntotal == len(index) == 55  # rebuilt from the live vectors
    np.testing.assert_array_equal(index.ids(), np.arange(45, 100))
    got, dist = index.query(x[:11], k=1)
    np.testing.assert_array_equal(got[:, 0], np.arange(50, 61))
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-5)


def test_hnsw_grows_past_its_initial_capacity() -> None:
    rng = np.random.default_rng(12)
    x = unit_rows(rng, 300)
    index = HnswIndex(DIM, initial_capacity=8, ef_search=300)
    for start in range(0, 300, 37):
        index.add(np.arange(start, min(start + 37, 300)), x[start : start + 37])
    assert len(index) == 300 and index.capacity >= 300
    np.testing.assert_array_equal(index.query(x, k=1)[0][:, 0], np.arange(300))


def test_hnsw_reuses_deleted_slots_instead_of_growing() -> None:
    rng = np.random.default_rng(13)
    x = unit_rows(rng, 150)
    index = HnswIndex(DIM, initial_capacity=100, ef_search=200)
    index.add(np.arange(100), x[:100])
    index.remove(np.arange(50))
    index.add(np.arange(100, 150), x[100:])
    assert index.capacity == 100 and len(index) == 100
    np.testing.assert_array_equal(index.ids(), np.arange(50, 150))
    np.testing.assert_array_equal(index.query(x[100:], k=1)[0][:, 0], np.arange(100, 150))
    # an id whose slot was reused can come back as a new element
    index.add(np.array([3]), x[3])
    assert 3 in index and len(index) == 101 and index.query(x[3], k=1)[0][0, 0] == 3


def test_hnsw_query_ef_is_never_below_k() -> None:
    rng = np.random.default_rng(14)
    x = unit_rows(rng, 400)
    index = HnswIndex(DIM, M=4, ef_construction=16, ef_search=2)
    index.add(np.arange(400), x)
    index.query(x[:5], k=120)  # hnswlib raises if the beam (ef) is narrower than k
    assert index._index.ef == 120  # the beam hnswlib searched with


def test_hnsw_params_survive_save_load(tmp_path) -> None:
    index = HnswIndex(DIM, M=8, ef_construction=40, ef_search=77, num_threads=1)
    index.add(np.arange(10), unit_rows(np.random.default_rng(15), 10))
    index.remove(np.array([4]))
    index.save(tmp_path / "h.ann")
    manifest = json.loads((tmp_path / "h.ann").read_text())
    assert manifest["params"]["deleted"] == [4]
    loaded = HnswIndex.load(tmp_path / "h.ann")
    assert (loaded.M, loaded.ef_construction, loaded.ef_search, loaded.num_threads) == (8, 40, 77, 1)
    assert len(loaded) == 9 and 4 not in loaded


def test_hnsw_num_threads_validation() -> None:
    with pytest.raises(ValueError, match="num_threads"):
        HnswIndex(DIM, num_threads=0)
    index = HnswIndex(DIM)
    index.num_threads = 2
    assert index.num_threads == 2


def test_exact_index_bounds_memory_with_blocks(monkeypatch) -> None:
    rng = np.random.default_rng(16)
    x = unit_rows(rng, 1000)
    q = unit_rows(rng, 300)
    index = ExactIndex(DIM)
    index.add(np.arange(1000), x)
    whole = index.query(q, k=7)
    monkeypatch.setattr(ann, "EXACT_BLOCK_FLOATS", 97)  # forces many row and query blocks
    blocked = index.query(q, k=7)
    np.testing.assert_array_equal(blocked[0], whole[0])
    truth = np.argsort(np.linalg.norm(q[:, None, :] - x[None], axis=2), axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(whole[0], truth)


def test_save_is_fsynced_through_os_replace(tmp_path, monkeypatch) -> None:
    """The manifest is committed with os.replace of a temp file in the same folder."""
    calls: list[tuple[str, str]] = []
    real = os.replace

    def spy(src, dst):
        calls.append((str(src), str(dst)))
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    index = ExactIndex(DIM)
    index.save(tmp_path / "e.ann")
    assert len(calls) == 1
    src, dst = calls[0]
    assert dst == str(tmp_path / "e.ann") and os.path.dirname(src) == str(tmp_path)


def _anon_huge_kb(addr: int) -> int:
    """AnonHugePages of the mapping of this process that holds ``addr``."""
    inside = False
    with open("/proc/self/smaps", encoding="ascii") as fh:
        for line in fh:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= addr < end
            elif inside and head == "AnonHugePages:":
                return int(line.split()[1])
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux only")
def test_memory_allocated_in_the_block_moves_to_huge_pages_intact() -> None:
    with huge_pages_for_new_memory() as report:
        big = np.arange(12 << 20, dtype=np.int64)  # 96 MiB, touched
    np.testing.assert_array_equal(big[[0, 12345, -1]], [0, 12345, (12 << 20) - 1])
    if report.collapsed == 0:
        pytest.skip(f"this kernel gave no huge pages ({report.refused} bytes refused)")
    assert report.collapsed >= 64 << 20
    assert _anon_huge_kb(big.ctypes.data + (32 << 20)) > 0
    assert int(big.sum()) == (12 << 20) * ((12 << 20) - 1) // 2  # every value survived the move
