"""``FTSPL_REQUIRE_GL=1`` (set by ``make test``, so by CI) turns a missing GL stack into a failure, not a skip.

Shown the way CI would meet it: one GL test run in a child pytest with ``libEGL.so.1``
hidden behind an empty file of that name on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def _gl_test_without_egl(tmp_path: Path, require: str | None) -> subprocess.CompletedProcess:
    hidden = tmp_path / "no-egl"
    hidden.mkdir(exist_ok=True)
    (hidden / "libEGL.so.1").write_bytes(b"")  # dlopen fails on it: as if Mesa's EGL were not installed
    env = {k: v for k, v in os.environ.items() if k != "FTSPL_REQUIRE_GL"}
    env["LD_LIBRARY_PATH"] = f"{hidden}:{env.get('LD_LIBRARY_PATH', '')}"
    if require is not None:
        env["FTSPL_REQUIRE_GL"] = require
    target = f"{TESTS / 'test_render.py'}::test_output_shape_dtype_and_background"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", target],
                          capture_output=True, text=True, env=env, cwd=TESTS.parent, timeout=300)


def test_gl_tests_skip_without_egl_by_default(tmp_path: Path, gl_available) -> None:
    r = _gl_test_without_egl(tmp_path, None)
    assert r.returncode == 0 and "1 skipped" in r.stdout, r.stdout[-2000:]
    assert "libEGL.so.1" in r.stdout  # the skip says why


@pytest.mark.parametrize("value", ["1"])
def test_gl_tests_fail_without_egl_when_gl_is_required(tmp_path: Path, gl_available, value: str) -> None:
    r = _gl_test_without_egl(tmp_path, value)
    assert r.returncode != 0 and "1 error" in r.stdout and "skipped" not in r.stdout, r.stdout[-2000:]
    assert "FTSPL_REQUIRE_GL=1: this machine must render" in r.stdout
