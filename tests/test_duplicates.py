"""``index duplicates``: exact groups by content hash, near groups through the ANN index, on planted duplicates.

The unit tests place embeddings by hand in a real store and ANN index (no
model): transitive groups, the medoid representative, a file copied so many
times that its copies fill every k-NN list, and one search per distinct
content. The end-to-end test plants duplicates of tiny meshes (a renamed copy,
a rescaled copy, re-exported PLY/STL/GLB files) beside different models,
indexes them with the real ``ftspl index add`` and checks ``ftspl index
duplicates --json`` and the API.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import trimesh

from ftspl.engine.errors import UsageError
from ftspl.engine.index.ann import make_index
from ftspl.engine.index.duplicates import find_duplicates
from ftspl.engine.index.store import ShapeStore
from ftspl.engine.index.store.schema import ShapeRecord

DIM = 8


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, d: float, axis: int) -> np.ndarray:
    """A unit vector at distance ``d`` from unit ``v`` (turned toward ``axis``)."""
    w = np.zeros(DIM, np.float32)
    w[axis] = 1.0
    w = w - (w @ v) * v
    w /= np.linalg.norm(w)
    theta = 2 * np.arcsin(d / 2)
    return unit(np.cos(theta) * v + np.sin(theta) * w)


@pytest.fixture
def placed(tmp_path):
    """A store and an exact ANN holding shapes placed by hand; ``(store, ann, id by name)``."""
    e = np.eye(DIM, dtype=np.float32)
    a, b, c, x1 = e[0], e[1], e[2], e[3]
    x2 = near(x1, 0.08, 4)
    x3 = near(x2, 0.08, 5)  # x1-x3 is further than 0.1: only the chain joins them
    rows = [("a", a, "ha"), ("a-renamed", a, "ha"),
            ("b", b, "hb"), ("b-near", near(b, 0.05, 6), "hb2"), ("b-far", near(b, 0.5, 7), "hb3"),
            ("x1", x1, "hx1"), ("x2", x2, "hx2"), ("x3", x3, "hx3")]
    rows += [(f"c-copy{i:02d}", c, "hc") for i in range(15)]  # one file copied 15 times...
    rows += [("c-near", near(c, 0.04, 6), "hc2")]  # ...and one near duplicate behind all of them
    store = ShapeStore(tmp_path / "shapes.sqlite")
    store.ensure_compatible("m", "h", "spec", DIM)
    ids = store.upsert_batch([ShapeRecord(f"/g/{n}.obj", h, n[0], 10, "mesh", v) for n, v, h in rows])
    ann = make_index("exact", DIM)
    ann.add(np.asarray(ids, np.int64), np.stack([v for _, v, _ in rows]))
    yield store, ann, {n: i for (n, _, _), i in zip(rows, ids)}
    store.close()


def names(group, by_id) -> list[str]:
    return [by_id[m.id] for m in group.members]


def test_exact_then_near_groups_with_representatives(placed) -> None:
    store, ann, ids = placed
    by_id = {i: n for n, i in ids.items()}
    scan = find_duplicates(store, ann, max_distance=0.1, neighbours=3)
    assert scan.shapes == len(ids)
    exact = [names(g, by_id) for g in scan.exact]
    assert exact == [["a", "a-renamed"], [f"c-copy{i:02d}" for i in range(15)]]  # by first id; first indexed first
    assert all(m.distance == 0 for g in scan.exact for m in g.members)
    near_groups = {frozenset(names(g, by_id)): g for g in scan.near}
    assert set(near_groups) == {frozenset({*(f"c-copy{i:02d}" for i in range(15)), "c-near"}),
                                frozenset({"b", "b-near"}), frozenset({"x1", "x2", "x3"})}
    chain = near_groups[frozenset({"x1", "x2", "x3"})]
    assert by_id[chain.representative.id] == "x2"  # the medoid
    assert [m.distance for m in chain.members] == sorted(m.distance for m in chain.members)
    assert scan.near[0].kind == "near" and len(scan.near[0].members) == 16  # largest first
    # the copies fill a 4-long list: their search was widened (counted again) until c-near showed up
    heads = len(ids) - 14 - 1
    assert scan.searches > heads


def test_distance_zero_keeps_only_identical_embeddings_and_bad_values_are_refused(placed) -> None:
    store, ann, ids = placed
    scan = find_duplicates(store, ann, max_distance=0.0)
    assert [len(g.members) for g in scan.exact] == [2, 15] and scan.near == []
    with pytest.raises(UsageError, match="max-distance"):
        find_duplicates(store, ann, max_distance=-0.1)
    with pytest.raises(UsageError, match="neighbours"):
        find_duplicates(store, ann, neighbours=0)


def test_one_search_per_distinct_content_not_n_squared(placed) -> None:
    store, ann, ids = placed
    calls = []
    query = ann.query

    def counting(vectors, k):
        calls.append((len(vectors), k))
        return query(vectors, k)

    ann.query = counting
    scan = find_duplicates(store, ann, max_distance=0.3, neighbours=20)  # lists long enough: nothing widened
    distinct = len(ids) - 14 - 1  # the 15 c copies are one content, and a-renamed is a
    assert sum(n for n, _ in calls) == scan.searches == distinct and all(k == 21 for _, k in calls)


# ------------------------------------------------------------------------- end to end
def planted_gallery(root: Path) -> dict[str, str]:
    """Different models and planted copies; ``file -> model`` for every file."""
    from conftest import asymmetric_mesh

    models = {"ell": asymmetric_mesh(), "ball": trimesh.creation.icosphere(2),
              "can": trimesh.creation.cylinder(0.5, 2.0), "cone": trimesh.creation.cone(1.0, 2.0),
              "ring": trimesh.creation.torus(1.0, 0.3)}
    truth = {}
    for name, mesh in models.items():
        p = root / "models" / f"{name}.obj"
        p.parent.mkdir(parents=True, exist_ok=True)
        mesh.export(p)
        truth[str(p.resolve())] = name
    copies = root / "copies"
    copies.mkdir()
    shutil.copyfile(root / "models/ell.obj", copies / "ell-renamed.obj")
    big = asymmetric_mesh()
    big.apply_scale(2.54)
    big.export(copies / "ell-in-inches.obj")
    for ext in ("ply", "stl", "glb"):
        models["can"].export(copies / f"can.{ext}")
    for p in copies.iterdir():
        truth[str(p.resolve())] = "ell" if p.name.startswith("ell") else "can"
    return truth


@pytest.mark.slow
def test_planted_duplicates_end_to_end(model_home: Path, tmp_path: Path, gl_available) -> None:
    from conftest import run_ftspl

    import ftspl

    truth = planted_gallery(tmp_path / "g")
    r = run_ftspl(model_home, "index", "add", str(tmp_path / "g"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == len(truth), r.stderr
    sheet = tmp_path / "dups.png"
    r = run_ftspl(model_home, "index", "duplicates", "--json", "--sheet", str(sheet))
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["shapes"] == len(truth) and body["exact_groups"] == 1 and body["near_groups"] == 2
    exact = body["exact"][0]
    assert {m["path"] for m in exact["members"]} == {p for p, m in truth.items() if m == "ell" and "in-inches" not in p}
    # indexed first: index add takes files in path order, and copies/ sorts before models/
    assert exact["representative"]["path"].endswith("copies/ell-renamed.obj")
    assert exact["representative"]["id"] == min(m["id"] for m in exact["members"])
    for group in body["near"]:
        model = {truth[m["path"]] for m in group["members"]}
        assert len(model) == 1, group  # never two different models
        name = model.pop()
        assert {m["path"] for m in group["members"]} == {p for p, m in truth.items() if m == name}
        assert group["members"][0] == group["representative"]
    assert sheet.stat().st_size > 2000
    # the API answers the same groups; the CLI's plain output names them
    lib = ftspl.open(model_home)
    rep = lib.duplicates()
    assert [[m.path for m in g.members] for g in rep.groups] == \
        [[m["path"] for m in g["members"]] for g in body["exact"] + body["near"]]
    plain = run_ftspl(model_home, "index", "duplicates")
    assert plain.returncode == 0 and "1 exact and 2 near duplicate groups among 10 shapes" in plain.stdout
