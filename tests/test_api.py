"""The Python API (``ftspl.open``, ``Library``, the result records) and the faces built on it.

* ``import ftspl`` is cheap, never imports torch, and ``ftspl.train``/``ftspl.export``
  stay callable whatever is imported after it;
* ``box`` and photo inputs follow one rule, with one-line errors;
* the API, ``ftspl query --json`` and ``POST /api/query`` give the same hits with the same
  field names, because they serialise the same records;
* a fresh interpreter that renders, indexes and queries never loads torch.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ftspl.engine.errors import FtsplError, ImageLoadError, UsageError
from ftspl.photo_input import box_region, parse_box, to_image
from ftspl.results import Hit, QueryAnswer

#: the hit fields ``ftspl query --json`` and ``POST /api/query`` emitted before the API existed
CLI_HIT_FIELDS = {"rank", "path", "distance", "label", "match", "view", "view_similarity"}
HTTP_HIT_FIELDS = {"rank", "id", "path", "label", "distance", "kind", "preview", "view", "view_similarity",
                   "view_image"}


def _fresh(code: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


# ---------------------------------------------------------------- no model needed
def test_import_ftspl_is_cheap_and_train_export_stay_callable() -> None:
    r = _fresh(
        "import sys, ftspl\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'numpy', 'torch', 'onnxruntime', 'PIL', 'hnswlib'})\n"
        "import ftspl.train.config, ftspl.export\n"
        "print(heavy, callable(ftspl.train), callable(ftspl.export), 'torch' in sys.modules, ftspl.__version__)\n"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[]", "True", "True", "False", "0.1.0"]


def test_train_and_export_without_torch_name_the_extra() -> None:
    code = ("import sys; sys.modules['torch'] = None  # as if the [train] extra were not installed\n"
            "import ftspl\n"
            "from ftspl.engine.errors import FtsplError\n"
            "for call in (lambda: ftspl.export(pretrained=True), lambda: ftspl.train('p', 'm')):\n"
            "    try:\n"
            "        call()\n"
            "    except FtsplError as exc:\n"
            "        print(exc)\n")
    r = _fresh(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["export needs PyTorch: pip install 'ftspl[train]'",
                                     "training needs PyTorch: pip install 'ftspl[train]'"]


@pytest.mark.parametrize("box, want", [
    ((0.25, 0.0, 0.75, 1.0), (50, 0, 150, 100)),  # fractions: all floats in 0..1
    ((10, 20, 110, 90), (10, 20, 110, 90)),  # pixels
    ((0, 0, 1, 1), (0, 0, 1, 1)),  # integers are pixels, even from 0 to 1
    ((0.0, 0.0, 200.0, 100.0), (0, 0, 200, 100)),  # floats beyond 1: pixels
])
def test_box_in_pixels_or_fractions(box, want) -> None:
    r = box_region(box, 200, 100)
    assert (r.x0, r.y0, r.x1, r.y1) == want


@pytest.mark.parametrize("box", [(50, 10, 10, 90), (10, 10, 10, 90), (0, 0, 201, 100), (-1, 0, 10, 10),
                                 (0.5, 0.5, 0.2, 0.9), (1, 2, 3), (0, 0, float("nan"), 5), ("a", 0, 1, 1)])
def test_bad_box_is_one_usage_error_line(box) -> None:
    with pytest.raises(UsageError) as exc:
        box_region(box, 200, 100)
    assert "\n" not in str(exc.value) and "X0 < X1" in str(exc.value)


def test_box_text_as_the_cli_and_http_give_it() -> None:
    assert parse_box("1, 2,30,40") == (1, 2, 30, 40)
    assert parse_box("0.1,0.2,0.9,1.0") == (0.1, 0.2, 0.9, 1.0)
    for bad in ("1,2,3", "a,b,c,d", ""):
        with pytest.raises(UsageError, match="box is X0,Y0,X1,Y1"):
            parse_box(bad)


def test_photo_inputs_and_their_refusals(tmp_path: Path) -> None:
    arr = np.zeros((20, 30, 3), np.uint8)
    img, name = to_image(arr, 0, 10_000, 10_000)
    assert img.size == (30, 20) and img.mode == "RGB" and name == "image-1"
    rgba, _ = to_image(np.zeros((4, 5, 4), np.uint8), 1, 10_000, 10_000)
    assert rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)  # transparent: white, as photos
    with pytest.raises(UsageError, match="uint8"):
        to_image(arr.astype(np.float32), 0, 10_000, 10_000)
    with pytest.raises(UsageError, match="a path, a PIL image or a uint8 array"):
        to_image(42, 0, 10_000, 10_000)
    with pytest.raises(ImageLoadError, match="over the 100-pixel limit"):
        to_image(arr, 0, 100, 10_000)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ImageLoadError, match=str(bad)):
        to_image(bad, 0, 10_000, 10_000)


def test_one_hit_record_carries_every_field_both_faces_emitted() -> None:
    hit = Hit(rank=1, id=7, path="/m/a.obj", label="chair", distance=0.12345678, kind="mesh", view=3,
              view_similarity=0.5, match=False)
    d = hit.to_dict()
    assert CLI_HIT_FIELDS <= set(d) and (HTTP_HIT_FIELDS - {"preview", "view_image"}) <= set(d)
    assert d["distance"] == 0.123457 and d["match"] is False and d["region"] is None
    json.dumps(QueryAnswer("m", [], "none").to_dict())  # serialisable as it is


# ---------------------------------------------------------------- with a model and an index
def _gallery(root: Path) -> Path:
    shapes = {"boxy": [trimesh.creation.box((1, 2, 1)), trimesh.creation.box((2, 1, 1))],
              "round": [trimesh.creation.icosphere(2), trimesh.creation.cylinder(0.5, 2.0)]}
    for label, meshes in shapes.items():
        for j, m in enumerate(meshes):
            p = root / label / f"{label}_{j}.ply"
            p.parent.mkdir(parents=True, exist_ok=True)
            m.export(p)
    return root


def _photo(path: Path) -> Path:
    img = np.full((160, 200, 3), 255, np.uint8)
    img[40:120, 70:130] = (120, 80, 40)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, exported_models: Path) -> tuple[Path, Path, Path]:
    """(home, gallery, photo): a home with the exported model and an index of four shapes, built by the API."""
    import ftspl

    root = tmp_path_factory.mktemp("api")
    home = root / "home"
    shutil.copytree(exported_models, home / "models")
    gallery = _gallery(root / "gallery")
    lib = ftspl.open(home)
    report = lib.add(gallery)
    assert (report.added, report.failures) == (4, [])
    assert report.to_dict()["added"] == 4 and lib.add(gallery).unchanged == 4
    lib.close()
    return home, gallery, _photo(root / "photo.jpg")


def test_query_forms_box_fusion_and_bad_photos(indexed, tmp_path: Path) -> None:
    import ftspl

    home, gallery, photo = indexed
    with ftspl.open(home) as lib:
        by_path = lib.query(photo, top=4, regions="none")  # the whole photo (tests/test_regions.py: its windows)
        assert [h.rank for h in by_path.hits] == [1, 2, 3, 4] and by_path.results[0].photo == str(photo)
        assert all(h.region is None and h.match for h in by_path.hits)
        pixels = np.asarray(Image.open(photo).convert("RGB"))
        for same in (lib.query(pixels, top=4, regions="none"), lib.query(Image.open(photo), top=4, regions="none")):
            assert [h.path for h in same.hits] == [h.path for h in by_path.hits]
            assert [h.distance for h in same.hits] == pytest.approx([h.distance for h in by_path.hits], abs=1e-5)
        boxed = lib.query(photo, top=4, box=(0.3, 0.2, 0.7, 0.8), regions="none")
        assert boxed.hits[0].region.to_dict() == {"x0": 60, "y0": 32, "x1": 140, "y1": 128}
        assert [h.distance for h in boxed.hits] != pytest.approx([h.distance for h in by_path.hits])  # it cropped
        with pytest.raises(UsageError, match="for a 200x160 photo"):
            lib.query(photo, box=(150, 10, 250, 50))
        fused = lib.query([photo, pixels], top=3, fuse=True, fusion="max")
        assert len(fused.results) == 1 and fused.results[0].photo == f"{photo} + image-2"
        assert fused.to_dict()["fusion"] == "max" and fused.hits == fused.results[0].hits
        beside = lib.query([photo, pixels], top=3, fusion="mean")  # per-photo lists and the fused one
        assert len(beside.results) == 2 and beside.fused is not None and beside.hits == beside.fused.hits
        with pytest.raises(UsageError, match="fused order"):
            lib.query([photo, photo], fuse=True, rerank="view")
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG broken")
        with pytest.raises(ImageLoadError):
            lib.query([photo, bad])
        kept = lib.query([photo, bad], top=2, skip_bad=True)
        assert [r.photo for r in kept.results] == [str(photo)] and [f.path for f in kept.failed] == [str(bad)]
        far = lib.query(photo, top=4, max_distance=0.0)
        assert not far.match and not any(h.match for h in far.hits) and far.max_distance_from == "--max-distance"
        with pytest.raises(UsageError, match="at least 1"):
            lib.query(photo, top=0)


def test_stats_verify_remove(indexed, tmp_path: Path) -> None:
    import ftspl

    home, gallery, _ = indexed
    h2 = tmp_path / "h2"
    shutil.copytree(home, h2)
    lib = ftspl.open(h2)
    stats = lib.stats()
    assert stats.count == 4 and stats.labels == {"boxy": 2, "round": 2} and stats.model_id == lib.model_id
    assert lib.verify().ok and lib.verify().to_dict()["ok"] is True
    removed = lib.remove(gallery / "boxy")
    assert len(removed) == 2 and lib.stats().count == 2
    assert {h.label for h in lib.query(_photo(tmp_path / "p.jpg"), top=4).hits} == {"round"}  # followed at once
    with pytest.raises(FtsplError, match="no model yet; run 'ftspl export"):
        ftspl.open(tmp_path / "empty").stats()
    shutil.copytree(home / "models", tmp_path / "fresh" / "models")
    with pytest.raises(FtsplError, match="no index yet; run 'ftspl index add FOLDER'"):
        ftspl.open(tmp_path / "fresh").stats()


def test_api_cli_and_http_answer_the_same_records(indexed) -> None:
    """One record, three faces: the same hits, and each face's historic field names still there."""
    import ftspl
    from conftest import run_ftspl

    home, _, photo = indexed
    with ftspl.open(home) as lib:
        api = lib.query(photo, top=3).to_dict()
    cli = json.loads(run_ftspl(home, "query", str(photo), "--top", "3", "--json").stdout)
    assert CLI_HIT_FIELDS <= set(cli["results"][0]["hits"][0])
    assert set(api) <= set(cli)  # the CLI adds its timings around the record
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from ftspl.engine.home import Home
    from ftspl.serve.app import create_app
    from ftspl.serve.config import ServeConfig
    from ftspl.serve.live import LiveIndex

    live = LiveIndex(Home(home), poll_s=60)
    try:
        with TestClient(create_app(ServeConfig(home=home, workers=1), live)) as client:
            http = client.post("/api/query", files={"photo": ("p.jpg", photo.read_bytes(), "image/jpeg")},
                               data={"top": "3"}).json()
    finally:
        live.close()
    assert HTTP_HIT_FIELDS <= set(http["hits"][0]) and set(api) <= set(http)
    for face in (cli["results"][0]["hits"], http["hits"]):
        assert [h["path"] for h in face] == [h["path"] for h in api["hits"]]
        assert [h["distance"] for h in face] == pytest.approx([h["distance"] for h in api["hits"]], abs=1e-5)
        for mine, theirs in zip(api["hits"], face):
            assert {k: theirs[k] for k in mine if k != "distance"} == {k: v for k, v in mine.items() if k != "distance"}


def test_a_fresh_interpreter_renders_indexes_and_queries_without_torch(indexed, tmp_path: Path) -> None:
    """Rendering in this very process (the renderer's LLVM-order guard included), an add and a query: no torch."""
    home, gallery, photo = indexed
    h2 = tmp_path / "h2"
    shutil.copytree(home / "models", h2 / "models")
    code = (
        "import sys\n"
        "import ftspl\n"
        "from ftspl.engine.constants import RenderSpec\n"
        "from ftspl.engine.loading.meshes import load_mesh\n"
        "from ftspl.engine.rendering.renderer import Renderer\n"
        f"mesh = load_mesh({str(gallery / 'boxy' / 'boxy_0.ply')!r})\n"
        "with Renderer(RenderSpec(image_size=32, views=2)) as r:\n"
        "    views = r.render(mesh)\n"
        "    guard = r.loaded_torch_llvm_first\n"
        f"lib = ftspl.open({str(h2)!r})\n"
        f"added = lib.add({str(gallery)!r}).added\n"
        f"hits = lib.query({str(photo)!r}, top=2).hits\n"
        "print(views.shape[0], guard, added, len(hits), 'torch' in sys.modules)\n"
    )
    r = _fresh(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2", "False", "4", "2", "False"]


def test_the_llvm_order_guard_still_runs_where_torch_is_loaded(gl_available) -> None:
    """Where torch is already imported (training, export), the renderer loads torch._dynamo before EGL."""
    pytest.importorskip("torch")
    code = ("import sys, torch\n"
            "from ftspl.engine.constants import RenderSpec\n"
            "from ftspl.engine.rendering.renderer import LLVM_FIRST_MODULE, Renderer\n"
            "with Renderer(RenderSpec(image_size=8, views=1)) as r:\n"
            "    print(r.loaded_torch_llvm_first, LLVM_FIRST_MODULE in sys.modules)\n")
    r = _fresh(code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "True"]


def test_box_through_the_cli_and_the_http_api(indexed) -> None:
    from conftest import run_ftspl

    home, _, photo = indexed
    good = run_ftspl(home, "query", str(photo), "--top", "2", "--box", "0.3,0.2,0.7,0.8", "--regions", "none", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["hits"][0]["region"] == {"x0": 60, "y0": 32, "x1": 140, "y1": 128}
    for box in ("40,10,20,50", "0,0,500,10", "1,2,3"):
        bad = run_ftspl(home, "query", str(photo), "--box", box)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "box is X0,Y0,X1,Y1" in bad.stderr, bad.stderr
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from ftspl.engine.home import Home
    from ftspl.serve.app import create_app
    from ftspl.serve.config import ServeConfig
    from ftspl.serve.live import LiveIndex

    live = LiveIndex(Home(home), poll_s=60)
    try:
        with TestClient(create_app(ServeConfig(home=home, workers=1), live)) as client:
            def ask(box: object):
                return client.post("/api/query", json={"image": base64.b64encode(photo.read_bytes()).decode(),
                                                       "top": 2, "box": box, "regions": "none"})

            assert ask([60, 32, 140, 128]).json()["hits"][0]["region"] == {"x0": 60, "y0": 32, "x1": 140, "y1": 128}
            assert ask("0.3,0.2,0.7,0.8").json()["results"][0]["hits"][0]["region"]["x1"] == 140
            for box in ([10, 10, 5, 5], "0,0,999,10", [1, 2], "a,b,c,d", [True, 0, 1, 1]):
                r = ask(box)
                assert r.status_code == 422 and "box is X0,Y0,X1,Y1" in r.json()["error"], (box, r.text)
    finally:
        live.close()
