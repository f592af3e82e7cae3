"""Where the indexing time goes: per-stage CPU milliseconds per mesh, each optimisation beside what it replaced.

    python benchmarks/stages.py [--meshes 40] [--model DIR ...] [--out FILE] [--entry NAME] [--json]

Runs each stage of ``index add`` alone, single-threaded where the stage allows it
(llvmpipe with ``LP_NUM_THREADS=1``, onnxruntime with one intra-op thread), on
the same real Sweet Home 3D meshes ``benchmarks/run.py`` indexes, and reports
CPU time (``time.process_time``) per mesh, so the figures hold on a busy
machine too. Every row has the current code (``after``), the code it replaced
(``before``; the same where a stage did not change) and, for some, an older
``alternative`` it beat, all measured in this run:

* load: ftspl's OBJ reader with the degenerate-face check on the first faces
  (``engine/loading/meshes``) vs checking every face; trimesh's loader as the alternative
* render: 12 views without MSAA (unchanged; 4x MSAA as the alternative), and where
  a render's time goes (vertex work alone with rasterisation discarded; with a
  one-colour fragment shader)
* transfer: the views pickled from the render child to the parent and back
* preprocess: gathered per channel into the batch (``engine/model/preprocess``)
  vs a channels-first copy per shape, then a stacked batch; the float formula as the alternative
* encode: each model's multi-view encoder (pooled and per-view outputs) on
  ``IndexConfig.batch_shapes`` shapes per call, one thread; and its wall time
  on every core
* view codes, strip and preview: each view downsampled once for the strip and
  the preview vs twice (the preview bicubic)
* commit: SQLite + HNSW, ``IndexConfig.commit_every`` shapes per transaction

``totals`` adds them per model (``before`` and ``after``), ``ceiling`` is what a
perfect overlap on 2 cores gives (2000 CPU-ms per second / total), and
``ratio_bound`` is the ceiling of the int8 model over the fp32 one: the most
``index add`` can gain from the faster encoder when nothing else changes.

Models: ``--model DIR`` (repeat it), default the perf homes' active models
(``<cache>/perf/home``, the default export, and ``<cache>/perf/home-fp32``; run
``benchmarks/run.py`` once). ``--out FILE --entry NAME`` also writes the figures,
with the command, date, load average and config, as entry NAME of a result file
of named runs (``perf.json``'s ``stages`` comes from ``benchmarks/run.py``, which
runs this script).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pickle
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LP_NUM_THREADS", "1")  # before Mesa loads: measure one core's work

import numpy as np

from common import result_record, update_entry
from perflib import perf_meshes, perf_work

CORES = 2  #: the ceiling's cores: the reference machine's


def cpu_ms(fn, items) -> tuple[float, list]:
    """CPU milliseconds of ``fn`` per item (best of two passes: the first also warms caches), and its outputs."""
    best, out = float("inf"), []
    for _ in range(2):
        t = time.process_time()
        out = [fn(it) for it in items]
        best = min(best, (time.process_time() - t) * 1000 / len(items))
    return best, out


def cpu_ms_alternated(fns: list, items, rounds: int = 3) -> tuple[list[float], list[list]]:
    """:func:`cpu_ms` of several implementations of one stage, taken in turn ``rounds`` times (best of
    each), so neither gains from running second (warm allocator, caches); their outputs."""
    best, outs = [float("inf")] * len(fns), [[] for _ in fns]
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t = time.process_time()
            outs[k] = [fn(it) for it in items]
            best[k] = min(best[k], (time.process_time() - t) * 1000 / len(items))
    return best, outs


def default_models() -> list[Path]:
    from ftspl.engine.home import Home

    homes = [perf_work() / "home", perf_work() / "home-fp32"]
    models = [Home(h).active_model_dir() for h in homes if (h / "models" / "ACTIVE").is_file()]
    if not models:
        raise SystemExit(f"no model in {homes[0]}: run benchmarks/run.py once (or pass --model DIR)")
    return models


# -- what the current code replaced (kept here to measure it beside the new) -------------------------
def preprocess_before(views: list[np.ndarray], pre) -> np.ndarray:
    """A channels-first copy of each shape's pixels, a gather per plane, then the batch stacked."""
    levels = np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
    lut = (levels - np.asarray(pre.mean, np.float32)[:, None]) / np.asarray(pre.std, np.float32)[:, None]

    def one(v: np.ndarray) -> np.ndarray:
        planes = np.ascontiguousarray(np.moveaxis(v, -1, -3))
        out = np.empty(planes.shape, np.float32)
        for c in range(3):
            np.take(lut[c], planes[..., c, :, :], out=out[..., c, :, :])
        return out

    return np.stack([one(v) for v in views])


def preprocess_formula(views: list[np.ndarray], pre) -> np.ndarray:
    """The float formula the lookup table replaced, then the batch stacked."""
    def one(v: np.ndarray) -> np.ndarray:
        x = v.astype(np.float32) * (1.0 / 255.0)
        x = (x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3))

    return np.stack([one(v) for v in views])


def preview_before(views: np.ndarray, size: int = 128) -> bytes:
    """The 2x2 preview with its own bicubic downsampling of four views."""
    from PIL import Image

    n, half = len(views), size // 2
    image = Image.new("RGB", (size, size), (255, 255, 255))
    for k in range(4):
        tile = Image.fromarray(views[(k * n) // 4]).resize((half, half), Image.Resampling.BICUBIC)
        image.paste(tile, ((k % 2) * half, (k // 2) * half))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# -- the stages -----------------------------------------------------------------------------------
def row(after: float, before: float | None = None, what: str = "", alternative: float | None = None) -> dict:
    """One stage: the current code (``after``), the code it replaced here (``before``; the same when
    unchanged) and, where one was measured, an ``alternative`` the current code beat earlier."""
    out = {"after": round(after, 2), "before": round(after if before is None else before, 2)}
    if alternative is not None:
        out["alternative"] = round(alternative, 2)
    return {**out, "what": what} if what else out


def geometry_stages(files: list[Path], spec) -> tuple[dict, list, list]:
    """load, render (with its breakdown) and transfer; the meshes and their views."""
    import ftspl.engine.loading.meshes as meshes_mod
    from ftspl.engine.loading.meshes import MeshLimits, _trimesh_loader, load_mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    res: dict = {}
    limits = MeshLimits()
    load_mesh(files[0])
    after, meshes = cpu_ms(load_mesh, files)
    check = meshes_mod._any_face_with_area
    (t_first, t_all), _ = cpu_ms_alternated([lambda m: check(m.vertices, m.faces, 1.0),
                                             lambda m: check(m.vertices, m.faces, 1.0, first=0)], meshes)  # all faces
    trimesh_ms = cpu_ms(lambda f: _trimesh_loader("obj", Path(f), limits), files)[0]
    res["load"] = row(after, after - t_first + t_all, "ftspl's OBJ reader; degenerate-face check on the first 256 "
                                                      "faces vs every face; alternative: trimesh's loader", trimesh_ms)
    meshes = [normalize(m, spec.up, spec.normalize_radius) for m in meshes]

    with Renderer(dataclasses.replace(spec, samples=4)) as r:
        r.render(meshes[0])
        msaa, _ = cpu_ms(r.render, meshes)
    with Renderer(spec) as r:
        r.render(meshes[0])
        after, views = cpu_ms(r.render, meshes)
        res["render"] = row(after, what="12 views, no MSAA; alternative: 4x MSAA", alternative=msaa)
        res["render_breakdown"] = render_breakdown(r, meshes, after)
    dumped = [pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL) for v in views]
    res["transfer"] = row(cpu_ms(lambda v: pickle.dumps(v, protocol=pickle.HIGHEST_PROTOCOL), views)[0]
                          + cpu_ms(pickle.loads, dumped)[0], what="views pickled through the render child's pipe")
    res["faces_mean"] = round(float(np.mean([m.n_faces for m in meshes])))
    return res, meshes, views


def render_breakdown(r, meshes: list, total: float) -> dict:
    """Where a render's CPU time goes: vertex work alone (rasterisation discarded), and the share of
    fragment shading (the same draw with a one-colour fragment shader). Uses the renderer's internals."""
    from ftspl.engine.rendering.shaders import program_sources

    raster_discard = 0x8C89  # GL_RASTERIZER_DISCARD
    with r._ctx:
        r._ctx.enable_direct(raster_discard)
    vertex, _ = cpu_ms(r.render, meshes)
    with r._ctx:
        r._ctx.disable_direct(raster_discard)
    flat = "#version 330\nin vec3 v_world;\nflat in int v_view;\nout vec4 f_color;\n" \
           "void main() { f_color = vec4(0.5, 0.5, 0.5, 1.0); }\n"
    prog = r._prog
    with r._ctx:
        r._prog = r._ctx.program(vertex_shader=program_sources(r.spec.views, materials=False)[0], fragment_shader=flat)
        for name in ("u_view_proj", "u_tile_offset"):
            r._prog[name].write(prog[name].read())
        r._prog["u_tile_scale"].value = prog["u_tile_scale"].value
    r.render(meshes[0])
    no_shading, _ = cpu_ms(r.render, meshes)
    r._prog.release()
    r._prog = prog
    return {"vertex_ms": round(vertex, 2), "setup_and_raster_ms": round(no_shading - vertex, 2),
            "fragment_shading_ms": round(total - no_shading, 2),
            "what": "vertex: rasteriser discarded; setup and raster: a one-colour shader minus vertex; "
                    "fragment shading: the rest (readback and tile copy included)"}


def encode_side(model: Path, views: list[np.ndarray], batch_shapes: int) -> dict:
    """preprocess, encode (one thread, and every core), view codes, strip and preview for one model."""
    from ftspl.engine.index.store.viewcodes import make_strip, quantize, strip_tiles
    from ftspl.engine.model.encoders import Encoders, RuntimeConfig
    from ftspl.engine.model.preprocess import views_to_tensor
    from ftspl.engine.rendering.renderer import make_preview

    enc = Encoders(model, RuntimeConfig(device="cpu", intra_op_threads=1))
    pre = enc.preprocess
    groups = [views[s : s + batch_shapes] for s in range(0, len(views), batch_shapes)]
    per = len(views) / len(groups)  # shapes per group: ms per group -> per shape

    def after(group: list[np.ndarray]) -> np.ndarray:  # engine/index/pipeline/encode.py's way
        batch = np.empty((len(group),) + group[0].shape[:1] + (3,) + group[0].shape[1:3], np.float32)
        for j, v in enumerate(group):
            views_to_tensor(v, pre, out=batch[j])
        return batch

    res: dict = {}
    (t_after, t_before, t_formula), (batches, old, formula) = cpu_ms_alternated(
        [after, lambda g: preprocess_before(g, pre), lambda g: preprocess_formula(g, pre)], groups)
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(batches, old, formula)), \
        "preprocessing must be bit-identical"
    res["preprocess"] = row(t_after / per, t_before / per, "per channel into the batch vs a channels-first copy "
                                                           "per shape and a stacked batch; alternative: the float "
                                                           "formula", t_formula / per)

    enc.embed_views_full(batches[0])
    t, outs = cpu_ms(enc.embed_views_full, batches)
    res["encode"] = row(t / per, what=f"{enc.manifest.precision} multi-view encoder, both outputs, "
                                      f"{batch_shapes} shapes per call, one thread")
    full = Encoders(model, RuntimeConfig(device="cpu"))
    full.embed_views_full(batches[0])
    w = time.perf_counter()
    for b in batches:
        full.embed_views_full(b)
    res["encode_all_cores_wall_ms"] = round((time.perf_counter() - w) * 1000 / len(views), 2)
    per_view = [pv for _, pvs in outs for pv in (pvs if pvs is not None else [])]
    pooled = [e for es, _ in outs for e in es]
    res["view_codes"] = row(cpu_ms(quantize, per_view)[0] if per_view else 0.0, what="per-view int8 codes")

    def thumbs_after(v: np.ndarray) -> tuple[bytes, bytes]:
        tiles = strip_tiles(v)
        return make_strip(v, tiles=tiles), make_preview(v, tiles=tiles)

    (t_after, t_before), (thumbs, _) = cpu_ms_alternated(
        [thumbs_after, lambda v: (make_strip(v), preview_before(v))], views)
    res["strip_and_preview"] = row(t_after, t_before, "each view downsampled once for the WebP strip and the PNG "
                                                      "preview vs twice (the preview bicubic)")
    return res, pooled, per_view or [None] * len(views), thumbs


def commit_ms(model: Path, files: list[Path], pooled: list, per_view: list, thumbs: list, commit_every: int) -> float:
    """CPU ms per shape of committing encoded shapes to a fresh store and HNSW index."""
    from ftspl.engine.index.ann import DEFAULT_BACKEND, make_index
    from ftspl.engine.index.pipeline.commit import IndexSink
    from ftspl.engine.index.pipeline.records import AddReport, EncodedShape, PendingShape
    from ftspl.engine.index.store import ShapeStore
    from ftspl.engine.loading.scan import ShapeSource
    from ftspl.engine.model.manifest import ModelManifest

    man = ModelManifest.load(model)
    spec = man.get_render_spec()
    tmp = Path(tempfile.mkdtemp(prefix="ftspl-stages-"))
    try:
        with ShapeStore(tmp / "shapes.sqlite") as store:
            store.ensure_compatible(man.model_id, man.model_hash, spec.digest(), man.embed_dim)
            sink = IndexSink(store, make_index(DEFAULT_BACKEND, man.embed_dim), AddReport(), lambda: None, 1e9)
            shapes = [EncodedShape.of(PendingShape(ShapeSource(Path(f), "mesh", "x"), f"{i:064x}", None), None,
                                      pooled[i], thumbs[i][1], per_view[i], thumbs[i][0]) for i, f in enumerate(files)]
            t = time.process_time()
            for s in range(0, len(shapes), commit_every):
                sink.commit(shapes[s : s + commit_every])
            return (time.process_time() - t) * 1000 / len(shapes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


STAGES = ("load", "render", "transfer", "preprocess", "encode", "view_codes", "strip_and_preview", "commit")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", type=int, default=40)
    ap.add_argument("--model", type=Path, action="append", default=None,
                    help="a model folder (repeat it; default: the perf homes' active models)")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures into this result file")
    ap.add_argument("--entry", default="stages", help="their name in --out")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from ftspl.engine.index.config import IndexConfig
    from ftspl.engine.model.manifest import ModelManifest

    files = perf_meshes(perf_work(), args.meshes)
    models = args.model or default_models()
    cfg = IndexConfig()
    load_before = os.getloadavg()
    spec = ModelManifest.load(models[0]).get_render_spec()
    shared, _, views = geometry_stages(files, spec)
    res: dict = {"meshes": len(files), "faces_mean": shared.pop("faces_mean"),
                 "unit": "CPU ms per mesh, one thread per stage (encode_all_cores_wall_ms: wall ms per mesh, every core)",
                 "models": {}, "stages": {}, "totals": {}}
    for model in models:
        precision = ModelManifest.load(model).precision
        side, pooled, per_view, thumbs = encode_side(model, views, cfg.batch_shapes)
        side["commit"] = row(commit_ms(model, files, pooled, per_view, thumbs, cfg.commit_every),
                             what=f"SQLite + HNSW, {cfg.commit_every} shapes per transaction")
        stages = {**shared, **side}
        res["models"][precision] = str(model)
        res["stages"][precision] = stages
        tot = {k: round(sum(stages[s][k] for s in STAGES), 1) for k in ("before", "after")}
        res["totals"][precision] = {**tot, **{f"ceiling_{k}": round(CORES * 1000 / v, 2) for k, v in tot.items()}}
    if {"fp32", "int8"} <= set(res["totals"]):
        t32, t8 = res["totals"]["fp32"], res["totals"]["int8"]
        res["ratio_bound"] = {k: round(t32[k] / t8[k], 2) for k in ("before", "after")}
    first = res["stages"][next(iter(res["stages"]))]
    # the flat figures benchmarks/precision.py reads (one --model)
    res.update(load_fast=first["load"]["after"], render_no_msaa=first["render"]["after"],
               preprocess_lut=first["preprocess"]["after"], encode_onnx_1thread=first["encode"]["after"],
               encode_all_cores_wall_ms=first["encode_all_cores_wall_ms"])
    res["load_average"] = {"start": [round(x, 2) for x in load_before],
                           "end": [round(x, 2) for x in os.getloadavg()]}
    if args.out:
        update_entry(args.out, args.entry, result_record(
            "stages.py", argv, {"meshes": args.meshes, "models": [str(m) for m in models]}, **res))
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res)


def print_table(res: dict) -> None:
    precisions = list(res["stages"])
    print(f"{'stage':<20}" + "".join(f"{p + ' before':>14}{p + ' after':>13}" for p in precisions))
    for s in STAGES:
        print(f"{s:<20}" + "".join(f"{res['stages'][p][s]['before']:>14}{res['stages'][p][s]['after']:>13}"
                                   for p in precisions))
    print(f"{'total':<20}" + "".join(f"{res['totals'][p]['before']:>14}{res['totals'][p]['after']:>13}"
                                     for p in precisions))
    if "ratio_bound" in res:
        print(f"ceiling int8 / fp32 on {CORES} cores: {res['ratio_bound']}")


if __name__ == "__main__":
    main()
