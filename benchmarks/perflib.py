"""The speed benchmarks' inputs: the machine, the real meshes, the trained model, ``index add``.

A helper module (``run.py``, ``serve_load.py``, ``stages.py``, ``ray_index.py``
and ``annlib`` use it), not a script. Everything lives under :func:`perf_work`
(``<home>/cache/perf``, ``$FTSPL_CACHE/perf`` when that is set).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from pathlib import Path

from common import cli_run, logger, study_home

log = logger("perf")


def perf_work() -> Path:
    """Where the speed benchmarks keep their meshes, data, run and homes: ``<cache>/perf``."""
    return study_home().cache / "perf"


def machine() -> dict:
    """CPU, cores, memory, OS, versions, the GL renderer and the GPU (None without one)."""
    import numpy as np
    import onnxruntime

    from ftspl.engine.rendering.renderer import Renderer

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    with Renderer() as r:
        gl = r.gl_renderer
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "os": platform.platform(),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
        "gl_renderer": gl, "gpu": gpu_name(),
    }


def gpu_name() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    except OSError:
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def perf_meshes(work: Path, n: int) -> list[Path]:
    """The first ``n`` models of the class map (by key), extracted once: the same files every run."""
    from ftspl.data.sh3d import extract_model, fetch_furniture, furniture_models

    libdir = fetch_furniture(study_home().debian_cache)
    models = sorted(furniture_models(), key=lambda m: m.key)[:n]
    files = []
    for m in models:
        dest = Path(work) / "meshes" / m.label / m.key
        if not any(dest.glob("*.obj")):
            extract_model(libdir, m, dest)
        files.append(next(dest.glob("*.obj")))
    return files


def train_budget() -> dict:
    """The training budget the speed figures use: ``ftspl train``'s, i.e. :class:`TrainConfig`'s defaults."""
    from ftspl.train.config import TrainConfig

    cfg = TrainConfig()
    return {"mode": "head", "rounds": cfg.rounds, "epochs": cfg.epochs, "warmup_epochs": cfg.warmup_epochs}


def train_model(work: Path) -> tuple[Path, dict, Path]:
    """Build the small SH3D benchmark, train FTSPL in head mode with ``ftspl train``'s default budget
    (:func:`train_budget`), export it; (home, train figures, queries)."""
    work = Path(work)
    data = work / "data"
    home = work / "home"
    if not (data / "manifest.json").exists():
        log("building the small SH3D benchmark (ftspl data sh3d --small)")
        cli_run("data", "sh3d", "--out", str(data), "--small", home=home)
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    budget = train_budget()
    log(f"training FTSPL head mode (TrainConfig's budget: {budget['rounds']} rounds x {budget['epochs']} epochs, "
        f"{budget['warmup_epochs']} warm-up epochs)")
    res = cli_run("train", "--source", str(data / "source"), "--target", str(data / "target"), "--out", str(run),
                  "--mode", "head", "--seed", "0", home=home)
    per_round = [r["seconds"] for r in res.data.get("rounds", []) if r.get("round", 0) >= 1]
    log("exporting the trained encoders (ftspl export RUN)")
    exp = cli_run("export", str(run), home=home)
    return home, {
        "train_head_s_per_round": round(statistics.median(per_round), 2) if per_round else None,
        "train_rounds_s": per_round, "train_total_s": round(res.wall_s, 1), "export_s": round(exp.wall_s, 1),
        "model_id": exp.data.get("model_id"), "budget": budget,
    }, data / "queries"


def export_to(work: Path, home: Path, precision: str) -> dict:
    """``ftspl export <work>/run --precision P`` into a fresh ``home`` (the same run as :func:`train_model`'s
    export, at another precision); its model id, precision and export time."""
    home = Path(home)
    shutil.rmtree(home, ignore_errors=True)
    log(f"exporting the same run at {precision} (ftspl export RUN --precision {precision})")
    exp = cli_run("export", str(Path(work) / "run"), "--precision", precision, home=home)
    return {"model_id": exp.data.get("model_id"), "precision": model_precision(home), "export_s": round(exp.wall_s, 1)}


def model_precision(home: Path) -> str:
    """The numeric precision (fp32, int8, fp16) of a home's active model."""
    from ftspl.engine.home import Home
    from ftspl.engine.model.manifest import ModelManifest

    return ModelManifest.load(Home(Path(home)).active_model_dir()).precision


def index_ours(home: Path, meshes_dir: Path, device: str = "cpu") -> dict:
    """``ftspl index add MESHES --rebuild``: meshes/s by the command's own clock, and the process wall time."""
    r = cli_run("index", "add", str(meshes_dir), "--rebuild", "--device", device, home=home)
    res = r.data
    return {"meshes": res["added"] + res.get("updated", 0), "failed": len(res.get("failures", [])),
            "seconds": res["seconds"], "meshes_per_s": res["shapes_per_s"], "process_wall_s": round(r.wall_s, 2)}


def store_path(home: Path) -> Path:
    """A home's SQLite shape store (the one place benchmarks/ names it)."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import STORE_NAME

    return Home(Path(home)).index_dir / STORE_NAME


def real_embeddings(home: Path):
    """Every embedding in a home's index (the real shapes the synthetic ones are drawn around)."""
    from ftspl.engine.index.store import ShapeStore

    st = ShapeStore(store_path(home), readonly=True)
    try:
        return st.all_embeddings()[1]
    finally:
        st.close()


def ensure_perf_index(work: Path) -> Path:
    """The perf home with a trained model and an index of the first 60 meshes (made when absent)."""
    home = Path(work) / "home"
    if (home / "models" / "ACTIVE").is_file() and store_path(home).is_file():
        return home
    log(f"{home}: no model and index yet; training the model and indexing the benchmark meshes first")
    perf_meshes(work, 60)
    home, _, _ = train_model(work)
    index_ours(home, Path(work) / "meshes")
    return home


__all__ = ["ensure_perf_index", "export_to", "gpu_name", "index_ours", "log", "machine", "model_precision", "perf_meshes",
           "perf_work", "real_embeddings", "store_path", "train_budget", "train_model"]
