"""The CLI end to end on tiny meshes: export, index add/remove/stats/verify, query, eval, doctor.

One pretrained model is exported per session (torchscript exporter: seconds, not
minutes; tests that need it skip without torch); every command runs as a real
subprocess so exit codes and stderr are exactly what a user sees. Every
``ftspl ...`` hint in the source and the README is checked against the Typer app
in ``tests/test_cli_hints.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image



def run(home: Path, *args: str, cwd: Path | None = None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "ftspl", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def make_gallery(root: Path) -> dict[str, list[Path]]:
    """Two classes of tiny meshes in several formats, ModelNet-style folders."""
    shapes = {
        "boxy": [trimesh.creation.box((1, 2, 1)), trimesh.creation.box((2, 1, 1)), trimesh.creation.box((1, 1, 3))],
        "round": [trimesh.creation.icosphere(2), trimesh.creation.cylinder(0.5, 2.0), trimesh.creation.capsule(1.0, 0.5)],
    }
    exts = [".obj", ".stl", ".ply", ".off", ".glb", ".obj"]
    out: dict[str, list[Path]] = {}
    i = 0
    for label, meshes in shapes.items():
        for j, m in enumerate(meshes):
            p = root / label / f"{label}_{j}{exts[i % len(exts)]}"
            p.parent.mkdir(parents=True, exist_ok=True)
            m.export(p)
            out.setdefault(label, []).append(p)
            i += 1
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory, exported_models) -> Path:
    import shutil

    h = tmp_path_factory.mktemp("home")
    shutil.copytree(exported_models, h / "models")
    return h


@pytest.fixture()
def photo(tmp_path) -> Path:
    img = np.full((160, 200, 3), 255, np.uint8)
    img[40:120, 70:130] = (120, 80, 40)
    p = tmp_path / "photo.jpg"
    Image.fromarray(img).save(p)
    return p


def test_export_manifest(home):
    model_id = (home / "models" / "ACTIVE").read_text().strip()
    man = json.loads((home / "models" / model_id / "manifest.json").read_text())
    assert man["embed_dim"] == 1280 and man["views"] == 12 and man["image_size"] == 224
    assert man["encoders"]["image_encoder"]["input_shape"][0] == "batch"
    assert man["model_id"] == model_id and len(man["model_hash"]) == 64


def test_add_query_stats_verify_remove(home, tmp_path, photo):
    g = make_gallery(tmp_path / "gallery")
    (tmp_path / "gallery" / "boxy" / "broken.stl").write_bytes(b"solid x\nfacet garbage\n")
    r = run(home, "index", "add", str(tmp_path / "gallery"), "--json")
    assert r.returncode == 1, r.stderr  # one bad file
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["added"] == 6 and summary["failed"] == 1
    assert "broken.stl: " in r.stderr and "Traceback" not in r.stderr

    # incremental: nothing changed -> all skipped
    r = run(home, "index", "add", str(tmp_path / "gallery" / "round"), "--json", "--label-from", "parent")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["unchanged"] == 3

    # a changed file is re-embedded
    trimesh.creation.box((3, 1, 1)).export(g["boxy"][0])
    r = run(home, "index", "add", str(tmp_path / "gallery" / "boxy" / g["boxy"][0].name), "--json", "--label-from", "parent")
    assert json.loads(r.stdout.strip().splitlines()[-1])["updated"] == 1, r.stderr

    r = run(home, "index", "stats", "--json")
    stats = json.loads(r.stdout)
    assert stats["count"] == 6 and stats["labels"] == {"boxy": 3, "round": 3}

    sheet = tmp_path / "sheet.png"
    r = run(home, "query", str(photo), str(photo), "--top", "50", "--json", "--sheet", str(sheet))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"]
    assert len(res) == 2 and len(res[0]["hits"]) == 6  # clamped to the index size
    d = [h["distance"] for h in res[0]["hits"]]
    assert d == sorted(d) and res[0]["hits"] == res[1]["hits"]
    sheet_img = np.asarray(Image.open(sheet).convert("L"))
    assert sheet_img.shape[1] > 6 * 128
    first_hit = sheet_img[10:120, 6 + 134 + 10 : 6 + 134 + 120]  # the shape preview of hit #1
    assert (first_hit < 200).mean() > 0.02, "hit previews are missing from the contact sheet"

    r = run(home, "index", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"], r.stdout + r.stderr

    r = run(home, "index", "remove", str(g["round"][0]), "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)["removed"]) == 1
    r = run(home, "query", str(photo), "--top", "10", "--json")
    paths = [h["path"] for h in json.loads(r.stdout)["results"][0]["hits"]]
    assert len(paths) == 5 and str(g["round"][0].resolve()) not in paths
    assert run(home, "index", "verify").returncode == 0


def test_eval_metrics(home, tmp_path):
    gal = tmp_path / "g"
    make_gallery(gal)
    h2 = tmp_path / "h2"
    (h2 / "models").mkdir(parents=True)
    # share the exported model: copy the model folder
    import shutil

    shutil.copytree(home / "models", h2 / "models", dirs_exist_ok=True)
    assert run(h2, "index", "add", str(gal)).returncode == 0
    q = tmp_path / "q"
    for label, color in (("boxy", (200, 50, 50)), ("round", (50, 50, 200))):
        (q / label).mkdir(parents=True)
        Image.new("RGB", (64, 64), color).save(q / label / "a.png")
    r = run(h2, "eval", str(q), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["metrics"]
    assert set(m) >= {"NN", "FT", "ST", "F", "DCG", "ANMRR", "AUC"}
    assert all(0 <= v <= 1 for v in m.values())


def test_usage_errors_are_one_line(home, tmp_path, photo):
    r = run(home, "query", str(tmp_path / "missing.jpg"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    empty_home = tmp_path / "empty"
    r = run(empty_home, "query", str(photo))
    assert r.returncode == 1 and "ftspl export" in r.stderr and "Traceback" not in r.stderr
    r = run(home, "index", "add", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run(home, "index", "add", str(tmp_path), "--label-from", "bogus")
    assert r.returncode == 2 and "valid: none, parent, top" in r.stderr
    r = run(home, "query", str(photo), "--top", "0")
    assert r.returncode == 2
    (tmp_path / "emptydir").mkdir()
    r = run(home, "index", "add", str(tmp_path / "emptydir"))
    assert r.returncode == 1 and "no meshes" in r.stderr
    r = run(home, "index", "remove", str(tmp_path / "not-indexed.obj"))
    assert r.returncode == 1 and "not in the index" in r.stderr
    make_gallery(tmp_path / "g2")
    assert run(home, "index", "add", str(tmp_path / "g2")).returncode == 0
    r = run(home, "query", str(photo), str(bad), "--json")  # one bad photo: the good one still answers
    assert r.returncode == 1 and f"{bad}: " in r.stderr
    assert len(json.loads(r.stdout)["results"]) == 1


def test_query_never_imports_torch(home, tmp_path, photo):
    make_gallery(tmp_path / "g")
    h2 = tmp_path / "h"
    import shutil

    shutil.copytree(home / "models", h2 / "models")
    assert run(h2, "index", "add", str(tmp_path / "g")).returncode == 0
    env = dict(os.environ, FTSPL_HOME=str(h2))
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ftspl", "query", str(photo), "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    imported = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "onnxruntime" in imported  # the check itself works
    assert not any(m == "torch" or m.startswith("torch.") for m in imported)


@pytest.mark.slow
def test_index_refuses_other_model(home, tmp_path, photo):
    import shutil

    h2 = tmp_path / "h"
    shutil.copytree(home / "models", h2 / "models")
    make_gallery(tmp_path / "g")
    assert run(h2, "index", "add", str(tmp_path / "g")).returncode == 0
    # a different up axis is another render spec: refused, nothing lost
    r = run(h2, "index", "add", str(tmp_path / "g"), "--up", "z")
    assert r.returncode == 1 and "--up y" in r.stderr
    # another model (alexnet, random init) becomes active: the index refuses it
    r = run(h2, "export", "--pretrained", "--backbone", "alexnet", "--exporter", "torchscript")
    assert r.returncode == 0, r.stderr
    r = run(h2, "query", str(photo))
    assert r.returncode == 1 and "rebuild" in r.stderr
    r = run(h2, "index", "add", str(tmp_path / "g"))
    assert r.returncode == 1 and "rebuild" in r.stderr
    r = run(h2, "index", "add", str(tmp_path / "g"), "--rebuild", "--json")
    assert r.returncode == 0 and json.loads(r.stdout.strip().splitlines()[-1])["added"] == 6


def test_view_folders_are_indexed_without_rendering(home, tmp_path, photo):
    """A folder of 12 view images (MVCNN layout) is one shape."""
    import shutil

    h2 = tmp_path / "h"
    shutil.copytree(home / "models", h2 / "models")
    root = tmp_path / "mi3dor"
    for label, color in (("red", (200, 40, 40)), ("blue", (40, 40, 200))):
        for s in range(2):
            d = root / label / f"{label}_{s:04d}"
            d.mkdir(parents=True)
            for v in range(12):
                img = np.full((224, 224, 3), 255, np.uint8)
                img[60 + 5 * s : 160, 40 + 8 * v : 150] = color
                Image.fromarray(img).save(d / f"{label}_{s:04d}_{v + 1:03d}.png")
    r = run(h2, "index", "add", str(root), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["added"] == 4
    stats = json.loads(run(h2, "index", "stats", "--json").stdout)
    assert stats["labels"] == {"red": 2, "blue": 2}
    q = tmp_path / "red.png"
    img = np.full((224, 224, 3), 255, np.uint8)
    img[60:160, 60:150] = (200, 40, 40)
    Image.fromarray(img).save(q)
    hits = json.loads(run(h2, "query", str(q), "--json", "--top", "2").stdout)["results"][0]["hits"]
    assert [h["label"] for h in hits] == ["red", "red"]


def test_device_cuda_fails_loudly_without_cuda(home, photo, tmp_path):
    from ftspl.engine.model.cuda import cuda_usable

    if cuda_usable():
        pytest.skip("a usable GPU: the loud-failure path cannot be shown here")
    import shutil

    h2 = tmp_path / "h"
    shutil.copytree(home / "models", h2 / "models")
    make_gallery(tmp_path / "g")
    r = run(h2, "index", "add", str(tmp_path / "g"), "--device", "cuda")  # a listed provider is not enough
    assert r.returncode == 1 and "--device cuda" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert run(h2, "index", "add", str(tmp_path / "g")).returncode == 0  # --device auto: the CPU
    r = run(h2, "query", str(photo), "--device", "cuda")
    assert r.returncode == 1 and "--device cuda" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run(home, "query", str(photo), "--device", "tpu")
    assert r.returncode == 2 and "valid: auto, cpu, cuda" in r.stderr


def test_doctor(home):
    r = run(home, "doctor")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[1].rstrip(":") for ln in lines] == ["render", "onnxruntime", "model", "index"]
    r = run(home.parent / "nothing-here", "doctor")
    assert r.returncode == 1 and "FAIL model" in r.stdout


def test_bad_files_are_skipped_and_nothing_is_lost(home, tmp_path):
    """Corrupt, empty, wrong-format, zero-face, non-finite and huge files: one line each, exit 1."""
    import shutil

    h2 = tmp_path / "h"
    shutil.copytree(home / "models", h2 / "models")
    good = tmp_path / "good"
    make_gallery(good)
    assert run(h2, "index", "add", str(good)).returncode == 0
    bad = tmp_path / "bad" / "junk"
    bad.mkdir(parents=True)
    (bad / "empty.obj").write_bytes(b"")
    (bad / "image.stl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (bad / "nofaces.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                     "property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n")
    (bad / "nan.off").write_text("OFF\n3 1 0\n0 0 0\nnan 1 0\n0 1 0\n3 0 1 2\n")
    (bad / "garbage.glb").write_bytes(b"glTF" + bytes(40))
    r = run(h2, "index", "add", str(tmp_path / "bad"), "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] == 5 and out["added"] == 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    for name in ("empty.obj", "image.stl", "nofaces.ply", "nan.off", "garbage.glb"):
        assert sum(f"{name}: " in ln for ln in lines) == 1, (name, r.stderr)
    stats = json.loads(run(h2, "index", "stats", "--json").stdout)
    assert stats["count"] == 6
    assert run(h2, "index", "verify").returncode == 0


def _home_copy(home: Path, tmp_path: Path) -> Path:
    import shutil

    h2 = tmp_path / "h"
    shutil.copytree(home / "models", h2 / "models")
    return h2


def test_symlinked_gallery_is_indexed_and_verbose_after_the_command(home, tmp_path):
    """A gallery of links to class folders indexes like the folders; labels are the link names.

    Also: ``-v`` after the subcommand turns on info lines, and they are not warnings.
    """
    h2 = _home_copy(home, tmp_path)
    real = tmp_path / "store"
    make_gallery(real)
    (tmp_path / "elsewhere").mkdir()
    trimesh.creation.box((1, 1, 2)).export(tmp_path / "elsewhere" / "lamp.obj")
    gal = tmp_path / "gallery"
    (gal / "lamps").mkdir(parents=True)
    (gal / "chairs").symlink_to(real / "boxy", target_is_directory=True)
    (gal / "tables").symlink_to(real / "round", target_is_directory=True)
    (gal / "tables_too").symlink_to(real / "round", target_is_directory=True)  # a second route: same shapes
    (real / "boxy" / "loop").symlink_to(real, target_is_directory=True)  # a loop back up
    (gal / "lamps" / "lamp.obj").symlink_to(tmp_path / "elsewhere" / "lamp.obj")  # a link to a file
    (gal / "lamps" / "gone.obj").symlink_to(tmp_path / "missing.obj")  # a dangling link
    r = run(h2, "index", "add", str(gal), "--json", "-v")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["added"] == 7
    assert "INFO ftspl.engine.loading.scan" in r.stderr and "1 dangling link" in r.stderr
    assert "WARNING" not in r.stderr, r.stderr
    stats = json.loads(run(h2, "index", "stats", "--json").stdout)
    assert stats["count"] == 7 and stats["labels"] == {"chairs": 3, "tables": 3, "lamps": 1}
    r = run(h2, "index", "verify", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["shapes"] == 7, r.stdout + r.stderr
    # again: the linked shapes are known (stored under their resolved paths), nothing is re-embedded
    again = json.loads(run(h2, "index", "add", str(gal), "--json").stdout.strip().splitlines()[-1])
    assert again["added"] == 0 and again["updated"] == 0 and again["unchanged"] == 7, again
    # removing a folder of links removes what it reaches, and only that
    r = run(h2, "index", "remove", str(gal / "lamps"), "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(run(h2, "index", "stats", "--json").stdout)
    assert stats["count"] == 6 and stats["labels"] == {"chairs": 3, "tables": 3}, stats

    # without -v: no info lines; nothing found says what was skipped
    only_links = tmp_path / "only-links"
    only_links.mkdir()
    (only_links / "a.obj").symlink_to(tmp_path / "nope.obj")
    (only_links / "notes.txt").write_text("x")
    r = run(h2, "index", "add", str(only_links))
    assert r.returncode == 1 and "INFO" not in r.stderr
    assert "no meshes" in r.stderr and "skipped 2 entries: 1 dangling link, 1 other file (.txt)" in r.stderr, r.stderr


def test_hnsw_flags_one_scheme(home, tmp_path, photo):
    """index add and query name the HNSW knobs --hnsw-m, --hnsw-ef-construction, --hnsw-ef; the old names are gone."""
    h2 = _home_copy(home, tmp_path)
    make_gallery(tmp_path / "g")
    r = run(h2, "index", "add", str(tmp_path / "g"), "--hnsw-m", "8", "--hnsw-ef-construction", "50", "--hnsw-ef", "40")
    assert r.returncode == 0, r.stderr
    params = json.loads((h2 / "index" / "shapes.hnsw").read_text())["params"]
    assert (params["M"], params["ef_construction"], params["ef_search"]) == (8, 50, 40)
    a = json.loads(run(h2, "query", str(photo), "--json").stdout)["results"][0]["hits"]
    r = run(h2, "query", str(photo), "--json", "--hnsw-ef", "300")
    assert r.returncode == 0, r.stderr
    assert [h["path"] for h in json.loads(r.stdout)["results"][0]["hits"]] == [h["path"] for h in a]
    for old in ("--ef", "--ef-construction"):
        r = run(h2, "index", "add", str(tmp_path / "g"), old, "64")
        assert r.returncode == 2 and "No such option" in r.stderr
    assert run(h2, "query", str(photo), "--hnsw-ef", "0").returncode == 2


def test_query_json_times_startup_apart_and_photo_limits_name_real_flags(home, tmp_path, photo):
    h2 = _home_copy(home, tmp_path)
    make_gallery(tmp_path / "g")
    assert run(h2, "index", "add", str(tmp_path / "g")).returncode == 0
    r = run(h2, "query", str(photo), "--json", "-v")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["startup_s"] > 0 and out["query_s"] > 0 and out["results"][0]["decode_ms"] > 0
    assert out["query_s"] < out["startup_s"] + 5  # two separate spans, neither is the sum of both
    # query has both limit flags, and its refusals name them
    r = run(h2, "query", str(photo), "--max-file-bytes", "10")
    assert r.returncode == 1 and "raise --max-file-bytes" in r.stderr, r.stderr
    r = run(h2, "query", str(photo), "--max-pixels", "100")
    assert r.returncode == 1 and "raise --max-pixels" in r.stderr, r.stderr
    # eval has neither: its refusal names no flag
    q = tmp_path / "q" / "boxy"
    q.mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 50, 50)).save(q / "a.png")
    _png_header_only(q / "huge.png", 8500, 8500)  # over the 64 M default, under PIL's own 89 M guard
    r = run(h2, "eval", str(tmp_path / "q"))
    assert r.returncode == 1, r.stderr
    assert "huge.png: image is 8500x8500 pixels, over the 64000000-pixel limit; downscale it" in r.stderr, r.stderr


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data is needed to be refused)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_doctor_json(home, tmp_path):
    r = run(home, "doctor", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"] is True
    assert [c["name"] for c in out["checks"]] == ["render", "onnxruntime", "model", "index"]
    assert all(c["ok"] and c["detail"] for c in out["checks"])
    r = run(tmp_path / "nothing-here", "doctor", "--json", "-v")
    assert r.returncode == 1
    out = json.loads(r.stdout)
    assert out["ok"] is False and {c["name"]: c["ok"] for c in out["checks"]}["model"] is False


@pytest.mark.parametrize("backend", ["exact", "faiss-hnsw"])
def test_library_builds_its_index_through_the_backend_registry(home, tmp_path, photo, backend):
    """--ann-backend picks the registry entry a new index is built with; later opens keep it."""
    from ftspl.engine.index.ann import read_manifest

    h2 = _home_copy(home, tmp_path)
    make_gallery(tmp_path / "gallery")
    r = run(h2, "index", "add", str(tmp_path / "gallery"), "--ann-backend", backend, "--json")
    assert r.returncode == 0, r.stderr
    assert read_manifest(h2 / "index" / "shapes.hnsw")["backend"] == backend
    q = run(h2, "query", str(photo), "--top", "3", "--json")
    assert q.returncode == 0 and len(json.loads(q.stdout)["results"][0]["hits"]) == 3, q.stderr
    assert run(h2, "index", "verify").returncode == 0
    (tmp_path / "more" / "boxy").mkdir(parents=True)
    trimesh.creation.box((3, 1, 2)).export(tmp_path / "more" / "boxy" / "b.stl")
    assert run(h2, "index", "add", str(tmp_path / "more")).returncode == 0  # the default flag does not switch it
    assert read_manifest(h2 / "index" / "shapes.hnsw")["backend"] == backend


def test_unknown_ann_backend_lists_the_valid_ones(home, tmp_path):
    h2 = _home_copy(home, tmp_path)
    make_gallery(tmp_path / "gallery")
    r = run(h2, "index", "add", str(tmp_path / "gallery"), "--ann-backend", "annoy")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "annoy" in r.stderr and "hnsw" in r.stderr and "exact" in r.stderr, r.stderr
