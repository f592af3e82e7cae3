"""Bounded, deterministic fuzzing of every mesh loader and of the photo decoder (hypothesis).

Each target gets valid seed files (written here with trimesh/PIL) mutated by
byte flips, interesting numbers, insertions, deletions, duplications and
truncation, plus raw random bytes. The property: the loader returns a valid
result or raises its one narrow error (``MeshLoadError`` / ``ImageLoadError``,
message ``path: reason`` on one line) -- never another exception, never a hang
(a 20 s alarm per input). ``derandomize=True`` makes every run explore the same
inputs, so CI is reproducible; ``FTSPL_FUZZ_EXAMPLES`` raises the budget for a
longer campaign. Inputs that once crashed are kept in ``tests/regressions/``
and replayed by :func:`test_regression_inputs`.

With ``-s`` the number of executions per target is printed (README figures).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import asymmetric_mesh, write_mesh
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from ftspl.engine.constants import Preprocess
from ftspl.engine.errors import ImageLoadError, MeshLoadError
from ftspl.engine.loading.meshes import LOADERS, MeshLimits, load_mesh
from ftspl.engine.loading.photos import PHOTO_EXTENSIONS, load_photo
from ftspl.engine.model.preprocess import to_tensor

EXAMPLES = int(os.environ.get("FTSPL_FUZZ_EXAMPLES", "200"))
REGRESSIONS = Path(__file__).parent / "regressions"
LIMITS = MeshLimits(max_file_bytes=1 << 20, max_faces=200_000, max_vertices=200_000)
MAX_PIXELS = 4_000_000
HANG_S = 20
EXECUTIONS: dict[str, int] = {}

INTERESTING = [b"0", b"-1", b"1e308", b"-1e308", b"nan", b"inf", b"4294967297", b"99999999999", b"2147483648",
               b"-2147483649", b"3", b"65536", b"1.5", b""]
INTERESTING_U32 = [0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x10000, 255, 3]


class Hang(BaseException):
    """Raised by the alarm; a BaseException so no parser's ``except Exception`` can swallow it."""


def _alarm(signum, frame):
    raise Hang(f"no answer within {HANG_S} s")


# --- seeds ---------------------------------------------------------------------------------------


def _gltf_embedded(mesh: trimesh.Trimesh) -> bytes:
    """A self-contained .gltf (buffer as a data URI), so mutations never need a second file."""
    pos = np.asarray(mesh.vertices, np.float32)
    idx = np.asarray(mesh.faces, np.uint32).ravel()
    blob = pos.tobytes() + idx.tobytes()
    doc = {
        "asset": {"version": "2.0"},
        "buffers": [{"byteLength": len(blob),
                     "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": pos.nbytes},
                        {"buffer": 0, "byteOffset": pos.nbytes, "byteLength": idx.nbytes}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": len(pos), "type": "VEC3",
                       "min": pos.min(0).tolist(), "max": pos.max(0).tolist()},
                      {"bufferView": 1, "componentType": 5125, "count": len(idx), "type": "SCALAR"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1}]}],
        "nodes": [{"mesh": 0, "children": [1]}, {"mesh": 0, "translation": [2, 0, 0]}],
        "scenes": [{"nodes": [0]}],
        "scene": 0,
    }
    return json.dumps(doc).encode()


def mesh_seeds(tmp: Path) -> dict[str, list[bytes]]:
    mesh = asymmetric_mesh()
    seeds: dict[str, list[bytes]] = {}
    for ext in LOADERS:
        if ext == ".gltf":
            seeds[ext] = [_gltf_embedded(mesh)]
            continue
        seeds[ext] = [write_mesh(mesh, tmp / f"seed{ext}").read_bytes()]
    # the text variants too: ASCII PLY and STL, an OBJ with polygons and slashes, a COFF with a hexagon
    seeds[".ply"].append(mesh.export(file_type="ply", encoding="ascii"))
    seeds[".stl"].append(mesh.export(file_type="stl_ascii").encode())
    seeds[".obj"].append(b"# quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nvt 0 0\nvn 0 0 1\nf 1/1/1 2/1/1 3/1/1 4/1/1\n"
                         b"f -4 -3 -1\n")
    seeds[".off"].append(b"COFF\n7 2 0\n1 0 0 255 0 0\n0.5 0.87 0\n-0.5 0.87 0\n-1 0 0\n-0.5 -0.87 0\n"
                         b"0.5 -0.87 0\n0 0 1\n6 0 1 2 3 4 5 255 0 0\n3 0 1 6\n")
    return seeds


def photo_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    out = []
    for fmt, kw in [("JPEG", {"quality": 80}), ("PNG", {}), ("WEBP", {"quality": 60}), ("BMP", {})]:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out.append(buf.getvalue())
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out.append(buf.getvalue())
    buf = io.BytesIO()
    img.convert("RGBA").quantize(16).save(buf, format="PNG", transparency=0)
    out.append(buf.getvalue())
    return out


# --- mutations -----------------------------------------------------------------------------------


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "byte", "number", "u32", "insert", "delete", "dup", "truncate"]))
        n = len(data)
        pos = draw(st.integers(0, max(0, n - 1)))
        if op == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[pos] = draw(st.integers(0, 255))
        elif op == "number":
            # replace the number-like token at pos (text formats are driven by numbers)
            start = pos
            while start > 0 and chr(data[start - 1]) in "0123456789.-+eE":
                start -= 1
            end = pos
            while end < n and chr(data[end]) in "0123456789.-+eE":
                end += 1
            data[start:end] = draw(st.sampled_from(INTERESTING))
        elif op == "u32" and n >= 4:
            pos = min(pos, n - 4)
            data[pos : pos + 4] = draw(st.sampled_from(INTERESTING_U32)).to_bytes(4, "little")
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and n:
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "dup" and n:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 256))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def inputs(seeds: list[bytes]):
    return st.one_of(mutated(seeds), st.binary(max_size=512))


# --- properties ----------------------------------------------------------------------------------


def check_mesh(path: Path) -> None:
    try:
        mesh = load_mesh(path, LIMITS)
    except MeshLoadError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and exc.reason, msg
        return
    assert mesh.vertices.dtype == np.float32 and mesh.faces.dtype == np.int32
    assert np.isfinite(mesh.vertices).all() and mesh.n_faces >= 1
    assert mesh.faces.min() >= 0 and mesh.faces.max() < len(mesh.vertices)


def check_photo(path: Path) -> None:
    try:
        img = load_photo(path, max_pixels=MAX_PIXELS)
    except ImageLoadError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg and exc.reason, msg
        return
    assert img.mode == "RGB" and img.width * img.height <= MAX_PIXELS
    x = to_tensor(img, Preprocess(image_size=32, crop_pct=0.875, mean=(0.5,) * 3, std=(0.5,) * 3))
    assert x.shape == (3, 32, 32) and np.isfinite(x).all()


def run_guarded(check: Callable[[Path], None], path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and check it under an alarm; keep the input if anything goes wrong."""
    path.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    try:
        check(path)
    except BaseException:
        keep = path.with_name(f"crash-{abs(hash(data)):x}{path.suffix}")
        keep.write_bytes(data)
        print(f"\nfuzz: failing input kept at {keep}")
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("ext", sorted(LOADERS))
def test_fuzz_mesh_loader(ext: str, tmp_path: Path) -> None:
    seeds = mesh_seeds(tmp_path)[ext]
    for s in seeds:  # the seeds themselves load
        (tmp_path / f"s{ext}").write_bytes(s)
        assert load_mesh(tmp_path / f"s{ext}", LIMITS).n_faces >= 1
    path = tmp_path / "case" / f"fuzz{ext}"
    path.parent.mkdir()
    count = 0

    @FUZZ_SETTINGS
    @given(data=inputs(seeds))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        run_guarded(check_mesh, path, data)

    run()
    EXECUTIONS[ext] = count
    print(f"\nfuzz {ext}: {count} executions")
    assert count >= min(EXAMPLES, 50)


def test_fuzz_photo_decoder(tmp_path: Path) -> None:
    seeds = photo_seeds()
    path = tmp_path / "fuzz.img"
    count = 0

    @settings(FUZZ_SETTINGS, max_examples=2 * EXAMPLES)
    @given(data=inputs(seeds))
    def run(data: bytes) -> None:
        nonlocal count
        count += 1
        run_guarded(check_photo, path, data)

    run()
    EXECUTIONS["photo"] = count
    print(f"\nfuzz photo: {count} executions; all targets so far: {sum(EXECUTIONS.values())}")
    assert count >= min(2 * EXAMPLES, 50)


def _regression_files() -> list[Path]:
    exts = set(LOADERS) | set(PHOTO_EXTENSIONS)
    return sorted(p for p in REGRESSIONS.iterdir() if p.suffix.lower() in exts) if REGRESSIONS.is_dir() else []


def test_regression_folder_is_not_empty() -> None:
    assert len(_regression_files()) >= 5


@pytest.mark.parametrize("path", _regression_files(), ids=lambda p: p.name)
def test_regression_inputs(path: Path, tmp_path: Path) -> None:
    """Inputs that once crashed, hung or misbehaved: now a clean load or one narrow error."""
    # copied so that sibling-file lookups see only what the case itself provides
    target = tmp_path / path.name
    run_guarded(check_photo if path.suffix.lower() in PHOTO_EXTENSIONS else check_mesh, target, path.read_bytes())
