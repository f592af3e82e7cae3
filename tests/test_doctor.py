"""``ftspl doctor``'s onnxruntime line: the CPU/GPU package clash is found and its fix named.

The clash itself cannot be installed in a test, so the installed distribution
names are passed in; the real environment is checked once as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ftspl.engine.doctor import GPU_RUNTIME_FIX, onnxruntime_check


def test_this_environment_has_one_runtime() -> None:
    name, ok, detail = onnxruntime_check()
    assert name == "onnxruntime" and ok, detail
    assert detail.startswith("version ") and "CPUExecutionProvider" in detail


@pytest.mark.parametrize("names", [
    {"onnxruntime", "onnxruntime-gpu", "numpy"},
    {"onnxruntime", "onnxruntime_gpu"},  # the spelling in some wheels' metadata
    {"ONNXRuntime", "onnxruntime-GPU"},
])
def test_cpu_and_gpu_packages_together_fail_with_the_fix(names: set[str]) -> None:
    name, ok, detail = onnxruntime_check(installed=names)
    assert not ok
    assert "onnxruntime and onnxruntime-gpu are both installed" in detail and "CUDA may silently run on the CPU" in detail
    assert detail.endswith(f"Keep one: {GPU_RUNTIME_FIX}")


def test_the_fix_removes_both_then_installs_only_the_gpu_build() -> None:
    """Both go first (they share files: removing only the CPU one breaks the GPU one)."""
    uninstall, install = GPU_RUNTIME_FIX.split(" && ")
    assert uninstall.split()[:3] == ["pip", "uninstall", "-y"]
    assert set(uninstall.split()[3:]) == {"onnxruntime", "onnxruntime-gpu"}
    assert install.split() == ["pip", "install", "onnxruntime-gpu"]


def test_gpu_package_alone_is_fine() -> None:
    ok = onnxruntime_check(installed={"onnxruntime-gpu", "numpy"})[1]
    assert ok  # the module imported is whichever is installed; here the CPU one stands in


def test_other_runtime_builds_clash_too() -> None:
    ok, detail = onnxruntime_check(installed={"onnxruntime", "onnxruntime-openvino"})[1:]
    assert not ok and "onnxruntime and onnxruntime-openvino are both installed" in detail
    assert "pip uninstall -y onnxruntime onnxruntime-openvino" in detail and "CUDA" not in detail


def test_doctor_prints_the_onnxruntime_line_without_a_model(tmp_path) -> None:
    """``ftspl doctor`` shows the line (and its JSON) even when nothing else is set up."""
    env = dict(os.environ, FTSPL_HOME=str(tmp_path), PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "ftspl", "doctor", "--json"], capture_output=True, text=True,
                       env=env, timeout=300)
    out = json.loads(r.stdout)
    checks = {c["name"]: c for c in out["checks"]}
    assert checks["onnxruntime"] == {"name": "onnxruntime", "ok": True, "detail": onnxruntime_check()[2]}
    assert r.returncode == 1 and not checks["model"]["ok"]  # no model in an empty home
