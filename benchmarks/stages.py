"""Where the indexing time goes: per-stage CPU milliseconds per mesh, each optimisation beside what it replaced.

    python benchmarks/stages.py [--meshes 40] [--model DIR] [--out FILE --entry NAME] [--json]

Runs each stage alone, single-threaded where the stage allows it (llvmpipe with
``LP_NUM_THREADS=1``, onnxruntime with one intra-op thread), on the same real
Sweet Home 3D meshes ``benchmarks/run.py`` indexes, and reports CPU time
(``time.process_time``) per mesh, so the figures hold on a busy machine too:

* load: trimesh's OBJ loader vs ftspl's vectorised reader (``engine/loading/obj_fast.py``)
* render: 12 views with 4x MSAA (the old default) vs without (the new default)
* preprocess: the float formula vs the lookup table (``engine/photos.normalize``)
* encode: the exported multi-view encoder (onnxruntime), one thread; and its wall time on
  every core, the ceiling of ``index add`` throughput on this machine

Needs a model in the perf home (run ``benchmarks/run.py`` once) or ``--model DIR``.
``--out FILE --entry NAME`` also writes the figures, with the command, date and
config, as entry NAME of a result file of named runs (``ray_index.json``'s
``stages`` entry comes from ``--out benchmarks/results/ray_index.json --entry stages``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("LP_NUM_THREADS", "1")  # before Mesa loads: measure one core's work

import numpy as np

from common import result_record, update_entry
from perflib import perf_meshes, perf_work


def cpu_ms(fn, items) -> tuple[float, list]:
    out = []
    t = time.process_time()
    for it in items:
        out.append(fn(it))
    return (time.process_time() - t) * 1000 / len(items), out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", type=int, default=40)
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the perf home's active model)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures into this result file")
    ap.add_argument("--entry", default="stages", help="their name in --out")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.home import Home
    from ftspl.engine.loading.meshes import _trimesh_loader, load_mesh, normalize
    from ftspl.engine.model.encoders import Encoders, RuntimeConfig
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.engine.rendering.renderer import Renderer

    work = perf_work()  # where benchmarks/run.py keeps its meshes and model
    files = perf_meshes(work, args.meshes)
    model = args.model or Home(work / "home").active_model_dir()
    spec = RenderSpec()
    res: dict = {"meshes": len(files), "unit": "CPU ms per mesh (one thread)"}

    from ftspl.engine.loading.meshes import MeshLimits

    limits = MeshLimits()
    load_mesh(files[0])
    res["load_trimesh"], _ = cpu_ms(lambda f: _trimesh_loader("obj", Path(f), limits), files)
    res["load_fast"], meshes = cpu_ms(load_mesh, files)
    meshes = [normalize(m, spec.up, spec.normalize_radius) for m in meshes]

    for samples, key in ((4, "render_msaa4"), (0, "render_no_msaa")):
        with Renderer(dataclasses.replace(spec, samples=samples)) as r:
            r.render(meshes[0])
            res[key], views = cpu_ms(r.render, meshes)

    enc = Encoders(model, RuntimeConfig(device="cpu", intra_op_threads=1))
    pre = enc.preprocess

    def formula(v: np.ndarray) -> np.ndarray:  # the replaced implementation
        x = v.astype(np.float32) * (1.0 / 255.0)
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    res["preprocess_formula"], a = cpu_ms(formula, views)
    res["preprocess_lut"], b = cpu_ms(lambda v: views_to_tensor(v, pre), views)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)), "LUT preprocessing must be bit-identical"
    batch = np.stack(b[:8])
    enc.embed_views(batch)
    t = time.process_time()
    for s in range(0, len(b), 8):
        enc.embed_views(np.stack(b[s : s + 8]))
    res["encode_onnx_1thread"] = (time.process_time() - t) * 1000 / len(b)
    # The ceiling of any indexing pipeline on this machine: the encoder alone on every core
    # (wall time, onnxruntime's default threads), nothing else running in this process.
    full = Encoders(model, RuntimeConfig(device="cpu"))
    full.embed_views(batch)
    t = time.perf_counter()
    for s in range(0, len(b), 8):
        full.embed_views(np.stack(b[s : s + 8]))
    res["encode_all_cores_wall_ms"] = (time.perf_counter() - t) * 1000 / len(b)
    res["encoder_ceiling_meshes_per_s"] = 1000 / res["encode_all_cores_wall_ms"]
    res = {k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}
    res["total_before"] = round(res["load_trimesh"] + res["render_msaa4"] + res["preprocess_formula"] + res["encode_onnx_1thread"], 1)
    res["total_after"] = round(res["load_fast"] + res["render_no_msaa"] + res["preprocess_lut"] + res["encode_onnx_1thread"], 1)
    if args.out:
        update_entry(args.out, args.entry, result_record(
            "stages.py", argv, {"meshes": args.meshes, "model": str(model)}, **res))
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:<22} {v}")


if __name__ == "__main__":
    main()
