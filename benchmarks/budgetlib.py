"""The per-mesh budget of ``index add`` with a given model, and alternated ``index add`` timings of models.

:func:`budget` measures, for each model, the CPU milliseconds per mesh of every
stage on one thread: load, render, preprocess and encode from
``benchmarks/stages.py --model DIR`` (run in its own process), and the rest of
the write path here (:func:`write_stages`: the per-view codes, the view strip,
the preview, and the commit into the index's own sink). :func:`speed` times
``ftspl index add`` of the 60 benchmark meshes with each model, alternated.
``benchmarks/precision.py`` compares fp32 and int8 models with them; they are
a helper of their own because they time a model whatever its precision.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import BENCHMARKS, ROOT, logger
from perflib import index_ours, perf_meshes, perf_work

#: tagged as precision.py's own lines, the one script that runs these
log = logger("precision")


def stages_py(model: Path, meshes: int) -> dict:
    """``benchmarks/stages.py --model DIR --json`` in its own process (one thread per stage)."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / "stages.py"), "--model", str(model), "--meshes", str(meshes),
                        "--json"], capture_output=True, text=True, check=False, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"stages.py failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_stages(model: Path, meshes: int, tmp: Path) -> dict:
    """CPU ms per mesh (one thread) of the write path after the encoder: codes, strip, preview, commit."""
    from ftspl.engine.index.ann import DEFAULT_BACKEND, make_index
    from ftspl.engine.index.pipeline.commit import IndexSink
    from ftspl.engine.index.pipeline.records import AddReport, EncodedShape, PendingShape
    from ftspl.engine.index.store import ShapeStore
    from ftspl.engine.index.store.viewcodes import make_strip, quantize
    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.loading.scan import ShapeSource
    from ftspl.engine.model.encoders import Encoders, RuntimeConfig
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.engine.rendering.renderer import Renderer, make_preview

    enc = Encoders(model, RuntimeConfig(device="cpu", intra_op_threads=1))
    spec = enc.manifest.get_render_spec()
    files = perf_meshes(perf_work(), meshes)
    with Renderer(spec) as r:
        views = [r.render(normalize(load_mesh(f), spec.up, spec.normalize_radius)) for f in files]
    pooled, per_view = [], []
    for s in range(0, len(views), 4):
        e, v = enc.embed_views_full(np.stack([views_to_tensor(x, enc.preprocess) for x in views[s : s + 4]]))
        pooled.extend(e)
        per_view.extend(v)

    def cpu_ms(fn, items) -> tuple[float, list]:
        t = time.process_time()
        out = [fn(x) for x in items]
        return round((time.process_time() - t) * 1000 / len(items), 2), out

    res: dict = {}
    res["view_codes"], _ = cpu_ms(quantize, per_view)
    res["view_strip"], strips = cpu_ms(make_strip, views)
    res["preview"], previews = cpu_ms(make_preview, views)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    man = enc.manifest
    with ShapeStore(tmp / "shapes.sqlite") as store:
        store.ensure_compatible(man.model_id, man.model_hash, spec.digest(), man.embed_dim)
        sink = IndexSink(store, make_index(DEFAULT_BACKEND, man.embed_dim), AddReport(), lambda: None, 1e9)
        shapes = [EncodedShape.of(PendingShape(ShapeSource(Path(f), "mesh", "x"), f"{i:064x}", None), None, pooled[i],
                                  previews[i], per_view[i], strips[i]) for i, f in enumerate(files)]
        t = time.process_time()
        for s in range(0, len(shapes), 32):
            sink.commit(shapes[s : s + 32])
        res["commit"] = round((time.process_time() - t) * 1000 / len(shapes), 2)
    return res


def budget(models: dict[str, Path], meshes: int, work: Path) -> dict:
    out = {}
    for p, model in models.items():
        log(f"per-stage budget, {p}: stages.py --model {model.name} --meshes {meshes}")
        st = stages_py(model, meshes)
        rest = write_stages(model, meshes, work / f"stages-{p}")
        row = {"load": st["load_fast"], "render": st["render_no_msaa"], "preprocess": st["preprocess_lut"],
               "encode": st["encode_onnx_1thread"], **rest}
        row["total"] = round(sum(row.values()), 1)
        row["encode_all_cores_wall_ms"] = st["encode_all_cores_wall_ms"]
        row["ceiling_meshes_per_s"] = round(2000 / row["total"], 2)  # two cores, perfect overlap
        out[p] = row
    out["unit"] = "CPU ms per mesh, one thread per stage (encode_all_cores_wall_ms: wall ms per mesh on every core)"
    out["ceiling"] = "2000 CPU-ms per second on 2 cores / total: the meshes/s of a perfect overlap"
    return out


def speed(models: dict[str, Path], rounds: int, work: Path) -> dict:
    """``ftspl index add`` of the 60 benchmark meshes with each model, alternated ``rounds`` times."""
    meshes = perf_work() / "meshes"
    perf_meshes(perf_work(), 60)
    runs: dict[str, list] = {p: [] for p in models}
    for r in range(rounds):
        for p, model in models.items():
            home = work / f"speed-{p}"
            shutil.rmtree(home, ignore_errors=True)
            (home / "models").mkdir(parents=True)
            shutil.copytree(model, home / "models" / model.name)
            (home / "models" / "ACTIVE").write_text(model.name)
            res = index_ours(home, meshes)
            log(f"index add, {p}, round {r + 1}: {res['meshes_per_s']:.2f} meshes/s")
            runs[p].append(res["meshes_per_s"])
    out = {p: {"meshes_per_s": v, "median": round(statistics.median(v), 2)} for p, v in runs.items()}
    out["int8_over_fp32"] = round(out["int8"]["median"] / out["fp32"]["median"], 2)
    return out
