"""What every benchmark script shares: paths, a tagged logger, the home, the CLI with --json, result files.

A helper module, not a script: scripts import it (and the other helper modules
named in ``tests/test_benchmarks_scripts.py``), never each other.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCHMARKS = ROOT / "benchmarks"


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
    its cache (``$FTSPL_CACHE`` when set) holds the Debian packages, the rendered views and the backbone
    features of every run."""
    from ftspl.engine.home import Home

    return Home.resolve(cwd=ROOT)


@dataclass(frozen=True)
class CliRun:
    """One ``ftspl ... --json`` child process."""

    data: dict  #: its last stdout line, parsed ({} when there is none or it is not JSON)
    wall_s: float  #: the process's wall time, interpreter start-up included
    returncode: int
    stdout: str
    stderr: str


def cli_run(*args: str, home: Path | None = None, check: bool = True, env: dict | None = None,
            timeout: float | None = None, prefix: tuple[str, ...] | list[str] = (), ok: tuple[int, ...] = (0,),
            json_flag: bool = True) -> CliRun:
    """Run ``[PREFIX...] python -m ftspl ARGS --json`` (``FTSPL_HOME=home`` when given, ``env`` added).

    ``prefix``: a wrapper command (``taskset -c 0``, ``nice -n 10``). With ``check``, an exit code
    outside ``ok`` ends the script with the command's stderr.
    """
    full_env = dict(os.environ, PYTHONWARNINGS="ignore", **(env or {}))
    if home is not None:
        full_env["FTSPL_HOME"] = str(home)
    cmd = [*prefix, sys.executable, "-m", "ftspl", *args, *(["--json"] if json_flag else [])]
    t = time.perf_counter()
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=full_env, timeout=timeout)
    wall = time.perf_counter() - t
    if check and r.returncode not in ok:
        sys.exit(f"ftspl {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    lines = r.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else {}
    except ValueError:
        data = {}
    return CliRun(data if isinstance(data, dict) else {"value": data}, wall, r.returncode, r.stdout, r.stderr)


def cli_json(*args: str, home: Path | None = None, check: bool = True, env: dict | None = None,
             timeout: float | None = None) -> dict:
    """Run ``ftspl ARGS --json`` in a child process; its last stdout line parsed (exits with stderr on failure)."""
    return cli_run(*args, home=home, check=check, env=env, timeout=timeout).data


def load_torch_before_mesa() -> None:
    """Triton's LLVM must load before Mesa's (the photo renderer's EGL context); the other order
    segfaults (``ftspl.engine.rendering.renderer._load_torch_llvm_first``)."""
    import importlib

    importlib.import_module("torch._dynamo")


def ann():
    """The ANN backend registry (``ANN_BACKENDS``, ``DEFAULT_BACKEND``, ``make_index``, ``load_index``,
    ``ExactIndex``): the one place benchmarks/ imports it from. ``ftspl.engine.index``'s package-level
    names when it has them, else the registry module."""
    import importlib

    pkg = importlib.import_module("ftspl.engine.index")
    names = ("ANN_BACKENDS", "DEFAULT_BACKEND", "make_index", "load_index", "ExactIndex")
    return pkg if all(hasattr(pkg, n) for n in names) else importlib.import_module("ftspl.engine.index.ann")


def graph_backends() -> list[str]:
    """The registry's approximate backends (every one but the exact twin), in registry order."""
    reg = ann()
    return [name for name, cls in reg.ANN_BACKENDS.items() if cls is not reg.ExactIndex]


def worker_command(module: str, func: str, *args: str) -> list[str]:
    """argv of a child interpreter that runs ``module.func(argv)`` of a helper module (workers that must
    run in a process of their own: peak RSS, a fresh onnxruntime), without any script importing another."""
    boot = (f"import sys; sys.path.insert(0, {str(BENCHMARKS)!r}); import {module}; "
            f"sys.exit({module}.{func}(sys.argv[1:]))")
    return [sys.executable, "-c", boot, *args]


# -- result files ------------------------------------------------------------------------------------
def git_commit() -> dict:
    """The commit a result was measured on, and the files under ftspl/ that differed from it."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.rstrip("\n")

    return {"commit": git("rev-parse", "HEAD"),
            "modified": [ln[3:] for ln in git("status", "--porcelain", "--", "ftspl").splitlines()]}


def command_line(script: str, argv: list[str] | None) -> str:
    """``python benchmarks/SCRIPT ARGS`` as it was run (``argv``: the arguments, default ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *map(shlex.quote, map(str, argv))])


def result_record(script: str, argv: list[str] | None, config: dict, **results) -> dict:
    """A result file's body: what ran (``command``, ``date`` UTC, ``git``, ``config``), then the results."""
    return {"command": command_line(script, argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "git": git_commit(), "config": config, **results}


def write_result(path: Path, record: dict) -> Path:
    """Write a result record as indented JSON (the folder made first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def update_entry(path: Path, entry: str, record: dict) -> Path:
    """Set ``entry`` of a result file that collects named runs (a JSON object), keeping the other entries."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.exists() else {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object of named runs")
    data[entry] = record
    return write_result(path, data)


__all__ = ["BENCHMARKS", "RESULTS", "ROOT", "CliRun", "ann", "cli_json", "cli_run", "command_line", "git_commit",
           "graph_backends", "load_torch_before_mesa", "logger", "quiet_openmp", "result_record", "study_home",
           "update_entry", "worker_command", "write_result"]
