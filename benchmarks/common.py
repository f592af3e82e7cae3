"""What every benchmark script shares: paths, a tagged logger, the home, the CLI with --json.

A helper module, not a script: scripts import it (and :mod:`studylib`), never
each other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def quiet_openmp() -> None:
    """OpenMP workers that spin-wait steal shared cores from each other (a head-mode step is
    10-100x slower on a busy 2-core machine); must run before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def logger(tag: str):
    """A ``log(msg)`` that prints ``[TAG HH:MM:SS] msg`` to stderr."""
    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return log


def study_home():
    """The repository's home (``$FTSPL_HOME``, else ``<repo>/.ftspl``), wherever the script is started:
    its cache holds the Debian packages, the rendered views and the backbone features of every run."""
    from ftspl.engine.home import Home

    return Home.resolve(cwd=ROOT)


def cli_json(*args: str, home: Path | None = None, check: bool = True) -> dict:
    """Run ``ftspl ARGS --json`` in a child process; its last stdout line parsed (exits with stderr on failure)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if home is not None:
        env["FTSPL_HOME"] = str(home)
    r = subprocess.run([sys.executable, "-m", "ftspl", *args, "--json"], check=False, capture_output=True,
                       text=True, env=env)
    if r.returncode and check:
        sys.exit(f"ftspl {' '.join(args)} failed:\n{r.stderr}")
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def load_torch_before_mesa() -> None:
    """Triton's LLVM must load before Mesa's (the photo renderer's EGL context); the other order
    segfaults (``ftspl.engine.rendering.renderer._load_torch_llvm_first``)."""
    import importlib

    importlib.import_module("torch._dynamo")


__all__ = ["RESULTS", "ROOT", "cli_json", "load_torch_before_mesa", "logger", "quiet_openmp", "study_home"]
