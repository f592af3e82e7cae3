"""Which onnxruntime build ``pip install .`` and ``pip install '.[gpu]'`` resolve, asked of pip itself.

``onnxruntime`` and ``onnxruntime-gpu`` install the same ``onnxruntime`` module; with
both, one overwrites the other's files and CUDA may silently be gone (``ftspl doctor``
reports it). pyproject gives exactly one of them to each command: the GPU build in the base
on Linux x86_64 (it runs on a CPU too), so ``[gpu]`` only adds the CUDA libraries.

pip is run offline (``--dry-run --report --no-index``) on stand-ins: tiny wheels named
``onnxruntime`` and ``onnxruntime-gpu`` and a stand-in project whose requirements are the
onnxruntime lines of a pyproject, so what is checked is pip's own reading of those lines
(markers, extras), not a re-implementation of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a dozen offline pip runs: about a minute

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = ("onnxruntime", "onnxruntime-gpu")

def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")  # offline, no site constraints
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _project(folder: Path, name: str, version: str, deps: list[str], extras: dict[str, list[str]]) -> Path:
    (folder / name.replace("-", "_")).mkdir(parents=True)
    (folder / name.replace("-", "_") / "__init__.py").write_text("")
    extra_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extras.items())
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "{name}"\nversion = "{version}"\ndependencies = {json.dumps(deps)}\n'
        f"[project.optional-dependencies]\n{extra_lines}"
        f'[tool.setuptools]\npackages = ["{name.replace("-", "_")}"]\n')
    return folder


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """Stand-in wheels: onnxruntime, onnxruntime-gpu (with empty ``cuda``/``cudnn`` extras)."""
    root = tmp_path_factory.mktemp("standins")
    out = root / "wheels"
    for name, extras in (("onnxruntime", {}), ("onnxruntime-gpu", {"cuda": [], "cudnn": []})):
        src = _project(root / name, name, "1.30.0", [], extras)
        r = _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src), cwd=root)
        assert r.returncode == 0, r.stderr
    return out


def resolved_runtimes(wheels: Path, folder: Path, deps: list[str], gpu: list[str], extra: str) -> list[str]:
    """The onnxruntime builds pip would install for ``folder`` (``extra``: "" or "[gpu]")."""
    project = _project(folder, "standin-ftspl", "1.0", deps, {"gpu": gpu})
    r = _pip("install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--no-index", "--find-links",
             str(wheels), "--report", "-", "-q", f"{project}{extra}", cwd=folder)
    assert r.returncode == 0, r.stderr
    names = [i["metadata"]["name"] for i in json.loads(r.stdout)["install"]]
    return sorted(n for n in names if n in RUNTIMES)


def runtime_lines(pyproject: Path = ROOT / "pyproject.toml") -> tuple[list[str], list[str]]:
    """The onnxruntime requirements of the project's base and of its ``gpu`` extra."""
    project = tomllib.loads(pyproject.read_text())["project"]

    def ort(reqs: list[str]) -> list[str]:
        return [r for r in reqs if r.split(";")[0].strip().lower().startswith(RUNTIMES)]

    return ort(project["dependencies"]), ort(project["optional-dependencies"]["gpu"])


def test_an_extra_cannot_take_a_base_requirement_away(wheels: Path, tmp_path: Path) -> None:
    """Why ``[gpu]`` alone cannot swap the build: pip keeps every base requirement, markers and all."""
    deps, gpu = ['onnxruntime; extra != "gpu"'], ["onnxruntime-gpu"]
    assert resolved_runtimes(wheels, tmp_path / "plain", deps, gpu, "") == ["onnxruntime"]
    assert resolved_runtimes(wheels, tmp_path / "gpu", deps, gpu, "[gpu]") == ["onnxruntime", "onnxruntime-gpu"]


LINUX_X86_64 = sys.platform == "linux" and os.uname().machine == "x86_64"


def test_plain_install_of_this_project_resolves_one_runtime(wheels: Path, tmp_path: Path) -> None:
    """One build: the GPU one (it runs on a CPU) where PyPI has it, Linux x86_64; the CPU one elsewhere."""
    deps, gpu = runtime_lines()
    assert resolved_runtimes(wheels, tmp_path, deps, gpu, "") == (
        ["onnxruntime-gpu"] if LINUX_X86_64 else ["onnxruntime"])


@pytest.mark.skipif(not LINUX_X86_64, reason="[gpu] resolves on Linux x86_64, where PyPI has the GPU build")
def test_gpu_install_of_this_project_resolves_only_the_gpu_runtime(wheels: Path, tmp_path: Path) -> None:
    deps, gpu = runtime_lines()
    assert resolved_runtimes(wheels, tmp_path, deps, gpu, "[gpu]") == ["onnxruntime-gpu"]
