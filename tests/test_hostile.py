"""Hostile input: caps with clear errors, no reads outside the mesh folder, no network, no pickle.

Complements tests/test_meshes.py (per-format loading and basic bad files) and
tests/test_photos.py: here every case is something an attacker or a broken
exporter could hand ftspl on purpose, and the check is that it ends as one
``path: reason`` error (or a clean load) without reading anything it should not.
"""

from __future__ import annotations

import ast
import base64
import http.server
import json
import pickle
import struct
import sys
import threading
import zlib
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from conftest import run_ftspl
from PIL import Image

import ftspl
from ftspl.engine.errors import ImageLoadError, MeshLoadError, ModelError
from ftspl.engine.loading.meshes import MeshLimits, load_mesh
from ftspl.engine.loading.photos import load_photo

SRC = Path(ftspl.__file__).resolve().parent


# --- an audit hook that records every file opened and every socket connection ---------------

_EVENTS: list[tuple[str, str]] | None = None


def _audit(event: str, args: tuple) -> None:
    if _EVENTS is None:
        return
    if event == "open" and args and isinstance(args[0], (str, bytes, Path)):
        _EVENTS.append(("open", str(Path(args[0] if not isinstance(args[0], bytes) else args[0].decode()))))
    elif event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
        _EVENTS.append((event, repr(args[:2])))


sys.addaudithook(_audit)  # cannot be removed; it records only while _EVENTS is a list


def load_watched(path: Path, limits: MeshLimits | None = None) -> tuple[object, list[tuple[str, str]]]:
    """load_mesh(path) -> (Mesh or MeshLoadError, the opens/connections it made)."""
    global _EVENTS
    _EVENTS = []
    try:
        result: object = load_mesh(path, limits or MeshLimits())
    except MeshLoadError as exc:
        result = exc
    finally:
        events, _EVENTS = _EVENTS, None
    return result, events


def assert_confined(events: list[tuple[str, str]], folder: Path) -> None:
    folder = folder.resolve()
    for kind, what in events:
        assert kind == "open", f"network access: {kind} {what}"
        p = Path(what)
        if not p.is_absolute():
            continue  # relative to cwd: never produced by the loaders (they resolve), but be lenient
        resolved = p.resolve()
        inside = resolved.is_relative_to(folder) or resolved.is_relative_to(Path(sys.prefix).resolve()) or \
            resolved.is_relative_to(Path(sys.base_prefix).resolve()) or resolved.is_relative_to(SRC)
        assert inside, f"opened {what} outside {folder}"


class _Counter(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Counter.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\0" * 64)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    """A real local HTTP server; a loader that follows a URL would be counted here."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Counter)
    _Counter.hits = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# --- glTF builders ----------------------------------------------------------------------------

TRI_POS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()
TRI_IDX = np.array([0, 1, 2], np.uint16).tobytes() + b"\0\0"


def gltf_doc(buffer_uri: str | None = None, **over) -> dict:
    """A one-triangle glTF 2.0 document; ``over`` replaces top-level keys."""
    data = TRI_POS + TRI_IDX
    uri = buffer_uri or "data:application/octet-stream;base64," + base64.b64encode(data).decode()
    doc = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": len(data), "uri": uri}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 36},
                        {"buffer": 0, "byteOffset": 36, "byteLength": 6}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]},
                      {"bufferView": 1, "componentType": 5123, "count": 3, "type": "SCALAR"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "nodes": [{"mesh": 0}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }
    doc.update(over)
    return doc


def write_gltf(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def write_glb(path: Path, doc: dict, json_len: int | None = None) -> Path:
    blob = json.dumps(doc).encode()
    blob += b" " * (-len(blob) % 4)
    body = struct.pack("<I4s", json_len if json_len is not None else len(blob), b"JSON") + blob
    path.write_bytes(struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body)
    return path


def test_the_gltf_builder_makes_a_valid_triangle(tmp_path: Path) -> None:
    assert load_mesh(write_gltf(tmp_path / "ok.gltf", gltf_doc())).n_faces == 1
    assert load_mesh(write_glb(tmp_path / "ok.glb", gltf_doc())).n_faces == 1


# --- caps: huge or self-referencing glTF, huge OFF headers --------------------------------------


@pytest.mark.parametrize("ext", [".gltf", ".glb"])
@pytest.mark.parametrize(
    "case,fragment",
    [
        ("accessor_without_data", "declares 2000000000 elements"),  # would be allocated as zeros
        ("accessor_over_buffer", "declares 3000000000 elements"),
        ("sparse_accessor", "declares 4000000000 elements"),
        ("node_self_child", "cycle"),
        ("node_two_cycle", "cycle"),
        ("child_out_of_range", "invalid children"),
        ("huge_buffer", "over the limit"),
        ("negative_count", "invalid count"),
        ("draco", "Draco-compressed"),
        ("gltf_1", "only glTF 2.0"),
        ("not_an_object", "not an object"),
    ],
)
def test_hostile_gltf_is_refused_with_a_reason(tmp_path: Path, ext: str, case: str, fragment: str) -> None:
    doc = gltf_doc()
    acc = doc["accessors"]
    if case == "accessor_without_data":
        del acc[0]["bufferView"]
        acc[0]["count"] = 2_000_000_000
    elif case == "accessor_over_buffer":
        acc[1]["count"] = 3_000_000_000
    elif case == "sparse_accessor":
        acc[0]["sparse"] = {"count": 4_000_000_000, "indices": {"bufferView": 1, "componentType": 5123},
                            "values": {"bufferView": 0}}
    elif case == "node_self_child":
        doc["nodes"] = [{"mesh": 0, "children": [0]}]
    elif case == "node_two_cycle":
        doc["nodes"] = [{"mesh": 0, "children": [1]}, {"mesh": 0, "children": [0]}]
    elif case == "child_out_of_range":
        doc["nodes"] = [{"mesh": 0, "children": [7]}]
    elif case == "huge_buffer":
        doc["buffers"][0]["byteLength"] = 1 << 40
    elif case == "negative_count":
        acc[0]["count"] = -3
    elif case == "draco":
        doc["extensionsUsed"] = doc["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    elif case == "gltf_1":
        doc["asset"]["version"] = "1.0"
    elif case == "not_an_object":
        doc = [doc]  # type: ignore[assignment]
    path = tmp_path / f"{case}{ext}"
    (write_gltf if ext == ".gltf" else write_glb)(path, doc)
    with pytest.raises(MeshLoadError) as info:
        load_mesh(path)
    assert str(info.value).startswith(f"{path}: ") and fragment in info.value.reason
    assert "\n" not in str(info.value)


def test_indented_obj_lines_are_not_dropped(tmp_path: Path) -> None:
    """Regression: the trimesh fallback silently dropped indented 'v'/'f' lines (a face went missing)."""
    path = tmp_path / "indented.obj"
    path.write_text("v 0 0 0\nv 1 0 0\n  v 0 1 0\n\tv 0 0 1\nf 1 2 3\n   f 1 3 4\n")
    assert load_mesh(path).n_faces == 2


def test_gltf_accessor_cap_follows_the_configured_limits(tmp_path: Path) -> None:
    path = write_gltf(tmp_path / "ok.gltf", gltf_doc())
    with pytest.raises(MeshLoadError, match="over the limit of 2"):
        load_mesh(path, MeshLimits(max_faces=0, max_vertices=2))


def test_glb_with_a_lying_chunk_length_and_deep_json(tmp_path: Path) -> None:
    with pytest.raises(MeshLoadError, match="complete JSON chunk"):
        load_mesh(write_glb(tmp_path / "lie.glb", gltf_doc(), json_len=1 << 31))
    deep = tmp_path / "deep.gltf"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(MeshLoadError, match="JSON"):
        load_mesh(deep)


def test_off_header_counts_are_capped_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "bomb.off"
    path.write_text("OFF\n353535235358 1 0\n0 0 0\n3 0 0 0\n")
    with pytest.raises(MeshLoadError, match="353535235358 vertices exceed the limit"):
        load_mesh(path)
    path.write_text("OFF\n3 900000000 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    with pytest.raises(MeshLoadError, match="900000000 faces exceed the limit"):
        load_mesh(path)
    path.write_text("OFF\n3 5 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    with pytest.raises(MeshLoadError, match="truncated OFF"):
        load_mesh(path)
    path.write_text("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n1000000000 0 1 2\n")
    with pytest.raises(MeshLoadError, match="fewer than its 1000000000 vertices"):
        load_mesh(path)
    path.write_text("4OFF\n1 0 0\n0 0 0 0\n")
    with pytest.raises(MeshLoadError, match="not 3-D"):
        load_mesh(path)


def test_off_polygons_are_fan_triangulated(tmp_path: Path) -> None:
    """Regression: trimesh 5 + numpy 2 raised a ufunc TypeError on any face with more than 4 corners."""
    path = tmp_path / "hexagon.off"
    angles = np.arange(6) * np.pi / 3
    verts = "\n".join(f"{np.cos(a):.6f} {np.sin(a):.6f} 0" for a in angles)
    path.write_text(f"COFF\n# a comment\n7 2 0\n{verts}\n0 0 1\n6 0 1 2 3 4 5 255 0 0\n3 0 1 6\n")
    mesh = load_mesh(path)
    assert mesh.n_faces == 5 and sorted(set(mesh.faces[:4].ravel())) == list(range(6))


@pytest.mark.parametrize("ext", [".off", ".ply", ".stl", ".obj", ".glb"])
@pytest.mark.parametrize("bad", ["nan", "inf", "zero_area"])
def test_non_finite_and_zero_area_in_every_format(tmp_path: Path, ext: str, bad: str, mesh_writer) -> None:
    import trimesh

    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], np.float64)
    if bad == "zero_area":
        v[:, 1] = 0.0  # all on one line
        v[:, 2] = 0.0
    else:
        v[2, 1] = float(bad)
    mesh = trimesh.Trimesh(v, [[0, 1, 2], [1, 3, 2]], process=False, validate=False)
    path = mesh_writer(mesh, tmp_path / f"bad{ext}")
    expected = "degenerate" if bad == "zero_area" else "NaN or infinite"
    with pytest.raises(MeshLoadError, match=expected):
        load_mesh(path)


# --- no reads outside the mesh folder, no network ------------------------------------------------


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file beside (not inside) the mesh folder that no loader may open."""
    s = tmp_path / "secret.bin"
    s.write_bytes(TRI_POS + TRI_IDX)  # a valid buffer, so a loader that followed it would succeed
    return s


@pytest.mark.parametrize("ext", [".gltf", ".glb"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "file_url", "http_url", "encoded_dotdot"])
def test_gltf_buffers_outside_the_folder_are_not_followed(
    tmp_path: Path, secret: Path, http_server: str, ext: str, kind: str
) -> None:
    uri = {
        "dotdot": "../secret.bin",
        "absolute": str(secret),
        "file_url": secret.as_uri(),
        "http_url": f"{http_server}/secret.bin",
        "encoded_dotdot": "..%2Fsecret.bin",
    }[kind]
    folder = tmp_path / "mesh"
    doc = gltf_doc(buffer_uri=uri)
    doc["images"] = [{"uri": uri.replace("secret.bin", "../../etc/passwd")}]  # textures are never read either
    path = folder / f"m{ext}"
    folder.mkdir()
    (write_gltf if ext == ".gltf" else write_glb)(path, doc)
    result, events = load_watched(path)
    assert isinstance(result, MeshLoadError), "a buffer outside the folder was loaded"
    assert "\n" not in str(result)
    assert_confined(events, folder)
    assert _Counter.hits == []
    assert not any(e[1] == str(secret) for e in events)


@pytest.mark.parametrize(
    "mtllib", ["../secret.mtl", "/etc/passwd", "../../../../../../etc/passwd", "file:///etc/passwd", "URL"]
)
def test_obj_material_references_are_not_followed(tmp_path: Path, http_server: str, mtllib: str) -> None:
    (tmp_path / "secret.mtl").write_text("newmtl x\nmap_Kd ../../etc/passwd\n")
    folder = tmp_path / "mesh"
    folder.mkdir()
    ref = f"{http_server}/evil.mtl" if mtllib == "URL" else mtllib
    (folder / "local.mtl").write_text("newmtl wood\nmap_Kd ../../../etc/passwd\nmap_Bump /etc/shadow\n")
    text = (f"mtllib {ref}\nmtllib local.mtl\nusemtl wood\n"
            "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nvt 0 0\nf 1/1 2/1 3/1\nf 1 3 4\n")
    for name, body in (("fast.obj", text), ("slow.obj", text.replace("f 1 3 4", "f 1 3 \\\n4"))):
        # slow.obj continues a line with a backslash, so the fast reader hands it to trimesh
        (folder / name).write_text(body)
        result, events = load_watched(folder / name)
        assert not isinstance(result, MeshLoadError), result
        assert result.n_faces == 2
        opened = {Path(w).resolve() for k, w in events if k == "open"}
        assert opened <= {(folder / name).resolve()}, opened  # not even the local MTL
        assert_confined(events, folder)
    assert _Counter.hits == []


# --- caps are configurable from the CLI ---------------------------------------------------------


def test_cli_caps_refuse_with_the_flag_to_raise(model_home: Path, tmp_path: Path) -> None:
    import trimesh

    gallery = tmp_path / "g"
    gallery.mkdir()
    trimesh.creation.icosphere(subdivisions=2).export(gallery / "big.stl")  # 320 faces
    trimesh.creation.box().export(gallery / "small.ply")  # 12 faces, 8 vertices
    lines = [f"v {i % 7} {i // 7 % 5} {i // 35}" for i in range(2000)] + ["f 1 2 8"]
    (gallery / "many_vertices.obj").write_text("\n".join(lines) + "\n")  # 1 face, 2000 vertices
    r = run_ftspl(model_home, "index", "add", str(gallery), "--max-faces", "100", "--max-vertices", "1000", "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{gallery / 'big.stl'}: 320 faces exceed the limit of 100" in r.stderr and "--max-faces" in r.stderr
    assert f"{gallery / 'many_vertices.obj'}: 2000 vertices exceed the limit of 1000" in r.stderr
    assert "--max-vertices" in r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["added"] == 1
    r = run_ftspl(model_home, "index", "add", str(gallery / "big.stl"), "--max-file-bytes", "1000", "--json")
    assert r.returncode == 1 and "over the limit of 1000" in r.stderr and "--max-file-bytes" in r.stderr
    # a decompression bomb header: 30000 x 30000 pixels in a few hundred bytes
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_bomb(30000, 30000))
    ok = tmp_path / "ok.png"
    Image.new("RGB", (64, 48), (90, 90, 90)).save(ok)
    r = run_ftspl(model_home, "query", str(bomb), str(ok), "--max-pixels", "10000", "--json")
    assert "Traceback" not in r.stderr and r.returncode == 1
    assert f"{bomb}: image is 900000000 pixels, over the 10000-pixel limit; raise --max-pixels" in r.stderr
    assert len(json.loads(r.stdout)["results"]) == 1  # the good photo is still answered


def png_header_bomb(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h RGB pixels; the compressed stream is a few KB of zeros."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = zlib.compress(b"\0" * (w * 3 + 1) * 16, 9)  # only the first rows: a truncated bomb
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_decompression_bomb_photo_is_refused_before_decoding(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_bomb(100_000, 100_000))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageLoadError, match="10000000000 pixels, over the 64000000-pixel limit"):
        load_photo(bomb)  # refused by PIL's own bomb check inside Image.open; same message
    with pytest.raises(ImageLoadError, match="10000000000 pixels, over the 100-pixel limit"):
        load_photo(bomb, max_pixels=100)


def test_max_pixels_can_be_raised_above_pils_global_limit(tmp_path: Path, monkeypatch) -> None:
    """Regression: PIL refused > 2 x its global limit inside Image.open, whatever --max-pixels said."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL's 89 M, scaled down
    photo = tmp_path / "p.png"
    Image.new("RGB", (100, 100), (10, 20, 30)).save(photo)  # 10 000 pixels > 2 x 1000
    with pytest.raises(ImageLoadError, match="10000 pixels, over the 5000-pixel limit"):
        load_photo(photo, max_pixels=5000)
    assert load_photo(photo, max_pixels=20_000).size == (100, 100)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


# --- model files: manifest-bound ONNX, weights_only torch, no pickle anywhere -------------------


def test_manifest_cannot_point_outside_the_model_folder(tmp_path: Path, model_home: Path) -> None:
    from ftspl.engine.model.encoders import Encoders

    model_dir = model_home / "models" / (model_home / "models" / "ACTIVE").read_text().strip()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["encoders"]["image_encoder"]["path"] = "../../outside.onnx"
    manifest.pop("model_hash", None)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="outside the model folder"):
        Encoders(model_dir).session("image_encoder")


class _Evil:
    """Unpickling this runs code (creates a marker file): a classic malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    torch = pytest.importorskip("torch")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"net": _Evil(marker)}, evil)
    return evil, marker


def test_torch_weights_are_loaded_weights_only(tmp_path: Path) -> None:
    evil, marker = _evil_checkpoint(tmp_path)
    from ftspl.engine.errors import InputFileError
    from ftspl.train.backbone_registry import build_backbone, load_weights

    backbone = build_backbone("alexnet", pretrained=False)
    with pytest.raises(InputFileError, match="not a readable torch state dict"):
        load_weights(backbone, evil)
    plain = tmp_path / "plain.pkl"  # a bare pickle passed as weights is refused the same way
    plain.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(InputFileError):
        load_weights(backbone, plain)
    assert not marker.exists()


def test_torch_checkpoint_is_refused_with_one_line(tmp_path: Path) -> None:
    evil, marker = _evil_checkpoint(tmp_path)
    from ftspl.engine.errors import FtsplError
    from ftspl.train.loop import CHECKPOINT, load_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(evil.read_bytes())
    try:
        with pytest.raises(FtsplError, match="unreadable checkpoint"):
            load_checkpoint(run)
    finally:
        assert not marker.exists()  # refused either way: no code ran


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            yield owner, name, node


def test_no_pickle_from_user_paths_anywhere_in_the_package() -> None:
    """Static check of every module: the only deserialisers are the safe ones."""
    problems = []
    for py in sorted(SRC.rglob("*.py")):
        rel = py.relative_to(SRC.parent)
        tree = ast.parse(py.read_text(), str(py))
        for owner, name, node in _calls(tree):
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{rel}:{node.lineno}"
            if owner in ("pickle", "cPickle", "dill", "joblib", "marshal", "shelve", "cloudpickle") and name in (
                "load", "loads", "open", "Unpickler"
            ):
                problems.append(f"{where}: {owner}.{name}")
            if owner == "torch" and name == "load":
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner == "np" and name == "load":
                ap = kw.get("allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    problems.append(f"{where}: np.load with allow_pickle")
            # export opens only the graphs it has just written (parity, and the reduced-precision check)
            if name == "InferenceSession" and str(rel) not in ("ftspl/engine/model/encoders.py",
                                                                 "ftspl/export/onnx_export.py", "ftspl/export/precision.py"):
                problems.append(f"{where}: ONNX session outside the manifest-checked loader")
            if owner == "torch" and name == "load" and str(rel).startswith("ftspl/engine/"):
                problems.append(f"{where}: torch in the engine")
    assert not problems, problems
    # the engine's ONNX loader checks the manifest hash before onnxruntime parses the file
    src = (SRC / "engine" / "model" / "encoders.py").read_text()
    assert src.index("verify_file(") < src.index("InferenceSession(")
