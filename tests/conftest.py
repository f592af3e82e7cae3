"""Shared fixtures and helpers: tiny meshes in every supported format, a renderer, exported models, and real `index add` processes.

All files are created under ``tmp_path`` with trimesh, so tests never depend on
the working folder or on downloaded data.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from ftspl.engine.constants import RenderSpec

#: A small spec for fast render tests (same look as the default, 64 px views).
SMALL_SPEC = RenderSpec(image_size=64)


def asymmetric_mesh() -> trimesh.Trimesh:
    """An L-shaped pair of boxes: big block on -X, small block on +X, tall along +Y.

    Asymmetric on purpose so that views from different azimuths differ and
    left/right in the image can be checked.
    """
    big = trimesh.creation.box(extents=(1.2, 2.0, 1.0))
    big.apply_translation((-0.4, 0.0, 0.0))
    small = trimesh.creation.box(extents=(0.4, 0.4, 0.4))
    small.apply_translation((0.8, -0.8, 0.0))
    return trimesh.util.concatenate([big, small])


def write_mesh(mesh: trimesh.Trimesh | trimesh.Scene, path: Path) -> Path:
    """Export with trimesh; multi-file formats (glTF + .bin buffers) land beside ``path``."""
    result = mesh.export(file_type=path.suffix.lstrip("."))
    if isinstance(result, dict):  # glTF: {'model.gltf': json, 'gltf_buffer_0.bin': bytes, ...}
        for name, data in result.items():
            target = path if name.endswith(".gltf") else path.parent / name
            target.write_bytes(data if isinstance(data, bytes) else data.encode())
    else:
        path.write_bytes(result if isinstance(result, bytes) else result.encode())
    return path


@pytest.fixture
def box_obj(tmp_path: Path) -> Path:
    """A unit-cube OBJ with an MTL that references a texture image (as exporters write them)."""
    folder = tmp_path / "box_obj"
    folder.mkdir()
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    lines = ["# a textured box", "mtllib box.mtl", "o box"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in box.vertices]
    lines += ["vt 0 0", "vt 1 0", "vt 0 1"]
    lines.append("usemtl wood")
    lines += [f"f {a + 1}/1 {b + 1}/2 {c + 1}/3" for a, b, c in box.faces]
    (folder / "box.obj").write_text("\n".join(lines) + "\n")
    (folder / "box.mtl").write_text("newmtl wood\nKd 0.8 0.6 0.4\nmap_Kd wood.png\n")
    Image.new("RGB", (4, 4), (150, 100, 50)).save(folder / "wood.png")
    return folder / "box.obj"


@pytest.fixture
def mesh_files(tmp_path: Path) -> dict[str, Path]:
    """One tiny asymmetric mesh per supported extension: {'.obj': path, ...}, each in its own folder."""
    from ftspl.engine.loading.meshes import LOADERS

    mesh = asymmetric_mesh()
    files = {}
    for ext in LOADERS:
        folder = tmp_path / f"mesh{ext.replace('.', '_')}"
        folder.mkdir()
        files[ext] = write_mesh(mesh, folder / f"shape{ext}")
    return files


#: Set to 1 (``make test`` and so CI do) to make a missing or broken GL stack fail the GL tests
#: instead of skipping them: a CI machine without EGL must not go green with rendering broken.
REQUIRE_GL = "FTSPL_REQUIRE_GL"


def no_gl(exc: Exception) -> None:
    """Skip for a missing GL stack, or fail when ``$FTSPL_REQUIRE_GL`` is 1 (always raises)."""
    reason = f"headless OpenGL (EGL) unavailable on this machine: {exc}"
    if os.environ.get(REQUIRE_GL) == "1":
        pytest.fail(f"{reason} ({REQUIRE_GL}=1: this machine must render)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def renderer():
    """A session-wide Renderer with :data:`SMALL_SPEC` (GL contexts are slow to create)."""
    from ftspl.engine.errors import RenderError
    from ftspl.engine.rendering.renderer import Renderer

    try:
        r = Renderer(SMALL_SPEC)
    except RenderError as exc:
        no_gl(exc)
    yield r
    r.close()


@pytest.fixture(scope="session")
def gl_available() -> None:
    """Skip (with the reason) when no EGL context can be created, or fail under ``$FTSPL_REQUIRE_GL=1``."""
    from ftspl.engine.errors import RenderError
    from ftspl.engine.rendering.renderer import Renderer

    try:
        Renderer(RenderSpec(image_size=8, views=1)).close()
    except RenderError as exc:
        no_gl(exc)


@pytest.fixture
def small_spec() -> RenderSpec:
    return SMALL_SPEC


@pytest.fixture
def asym_mesh() -> trimesh.Trimesh:
    return asymmetric_mesh()


@pytest.fixture
def mesh_writer():
    """The :func:`write_mesh` helper, for tests that export their own trimesh objects."""
    return write_mesh


# --- an exported model, shared by the CLI and index tests --------------------


def run_ftspl(home: Path, *args: str, timeout: float = 300):
    """Run ``python -m ftspl ARGS`` with FTSPL_HOME=home, as a user would."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "ftspl", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory) -> Path:
    """A models/ folder holding the pretrained lite0 encoders (torchscript exporter: seconds)."""
    pytest.importorskip("torch")
    home = tmp_path_factory.mktemp("export-home")
    r = run_ftspl(home, "export", "--pretrained", "--exporter", "torchscript", "--json")
    assert r.returncode == 0, r.stderr
    return home / "models"


@pytest.fixture
def model_home(tmp_path: Path, exported_models: Path) -> Path:
    """A fresh home with the exported model active and no index."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(exported_models, home / "models")
    return home


# -- real `ftspl index add` processes, watched through their DEBUG phase lines --------------------
#: Runs the CLI with only ftspl's own loggers at DEBUG, so the ``phase <name> <n>`` lines that
#: ``index add`` logs reach stderr: tests wait on those events, never on the clock.
WRAPPER = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s', stream=sys.stderr)\n"
    "logging.getLogger('ftspl').setLevel(logging.DEBUG)\n"
    "sys.argv[0] = 'ftspl'\n"
    "from ftspl.cli.main import main\n"
    "main()\n"
)


def make_gallery(root: Path, n: int) -> Path:
    rng = np.random.default_rng(7)
    for i in range(n):
        shape = trimesh.creation.box(1 + 2 * rng.random(3)) if i % 2 else trimesh.creation.icosphere(1)
        shape.apply_scale(1 + 2 * rng.random(3))
        p = root / f"c{i % 3}" / f"s{i:03d}.ply"
        p.parent.mkdir(parents=True, exist_ok=True)
        shape.export(p)
    return root


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class AddRun:
    """One ``ftspl index add`` (``extra``: more flags, e.g. ``--prune``) with its stderr lines collected by a thread."""

    def __init__(self, home: Path, gallery: Path, commit_every: int = 2, extra: tuple[str, ...] = ()) -> None:
        env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "index", "add", str(gallery), *extra, "--commit-every", str(commit_every),
             "--threads", "1", "--json"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, phase: str, occurrence: int, timeout: float = 120.0) -> bool:
        """Block until the ``occurrence``-th ``phase <phase> `` line; False if the run ended first."""
        deadline = time.monotonic() + timeout
        found = 0
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return False
            self.seen.append(line)
            if f": phase {phase} " in line:
                found += 1
                if found >= occurrence:
                    return True
        raise AssertionError(f"no 'phase {phase}' line within {timeout} s; seen: {self.seen[-5:]}")

    def drain(self) -> None:
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                return
            if line is None:
                return
            self.seen.append(line)

    def batches(self, phase: str) -> list[int]:
        return [int(ln.rsplit(" ", 1)[1]) for ln in self.seen if f": phase {phase} " in ln]
