"""Regional search (``ftspl query --regions``) measured: quality on validation and real photos, cost at 100k shapes.

    python benchmarks/regions.py [--seeds 0,1] [--real DIR] [--cost-size 100000] [--cost-photos 20]
                                 [--repeats 5] [--exporter torchscript] [--out FILE] [--json]

Per tuning seed (:data:`ftspl.data.protocol`: val photos rank the val gallery),
the FTSPL run with ``ftspl train``'s defaults (the study's cell under
``<home>/cache/study``, trained here when no earlier study left it; ``--model
pretrained``: the ImageNet encoders instead) is exported with ``ftspl export RUN --precision fp32`` (its image graph carries
the regional output) into a home that indexes the val gallery with
``ftspl index add``, and a second home with the same model indexes the seed's
target gallery for the real photos.

Every photo is embedded once per mode through the engine
(:func:`ftspl.engine.scoring.regions.embed_regions`): ``crops`` cuts the whole
photo and the windows of scales 0.6 and 0.4 out of it (15 regions), ``rmac``
takes the graph's pooled windows (14). A variant is a mode, a subset of scales
and a fusion rule; each ranks the whole gallery with the engine's own
:func:`~ftspl.engine.scoring.regions.fuse_regions` on exact distances (what
``ftspl query --regions`` answers; ``served_check`` compares the two), then
the paper's metrics. ``none`` is the whole photo alone.

The decision (:data:`studylib.RULE`): the best mean val FT over the tuning
seeds, ties (< 0.001) to the higher NN, then the cheaper variant (none, rmac,
crops; fewer windows first). ``regions`` takes the winner's mode; the fusion
and scales defaults are those of the best regional variant. A scene val split
(``val_scenes/``: the val models in furnished rooms, ``ftspl data sh3d --scenes``, as
``benchmarks/scenes.py`` builds it) is scored beside val when there is one for every
seed, and then the decision takes the mean FT (and NN) of val and val_scenes.

Real photos (``--real``; ``labels.csv``: file, class; interior scenes are the
``pexels`` files) are reported only, per seed, against the target gallery.
Also per block: how often at least one region alone puts the right class first.

Cost: the seed's target home grows to ``--cost-size`` shapes (real embeddings
plus synthetic ones, ``querylib.build_big_index``, as ``benchmarks/run.py``),
and one process times warm ``Library.query(photo, 10, regions=...)`` calls,
the modes interleaved photo by photo, on every core of this machine.

Writes ``--out`` (default ``benchmarks/results/regions.json``). The variants,
their scoring and the decision are in ``benchmarks/regionlib.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import (RESULTS, ROOT, cli_run, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home,
                    write_result)
from regionlib import (FUSIONS, MODES, SCALE_SETS, decide, mean_table, paired_vs_none, score_block, served_check,
                       variants)

quiet_openmp()
log = logger("regions")
REAL = ROOT.parent / "shared" / "data" / "real_photos"


# -- models and indexes ---------------------------------------------------------------------------------
def model_run(split, model: str = "FTSPL") -> tuple[Path | None, str]:
    """The FTSPL run with ``ftspl train``'s defaults for ``split`` (tune): the study's cell, trained here
    (``studylib.run_cell``, cached under ``<home>/cache/study``) when no earlier study left it; None for
    ``model="pretrained"`` (the ImageNet encoders)."""
    if model == "pretrained":
        return None, "pretrained (--model pretrained)"
    from studylib import run_cell, run_dir_of, train_config

    work = study_home().cache / "study"
    run = run_dir_of("FTSPL", train_config("FTSPL", split), split, "tune", work)
    if not (run / "best.pt").is_file():
        log(f"seed {split.seed}: training the FTSPL cell with ftspl train's defaults")
        run_cell("FTSPL", split, "tune", None, work)
    return run, "the study's FTSPL run (ftspl train's defaults)"


def active_manifest(home: Path):
    from ftspl.engine.home import Home
    from ftspl.engine.model.manifest import ModelManifest

    try:
        return ModelManifest.load(Home(home).active_model_dir())
    except Exception:  # noqa: BLE001 - no model yet
        return None


def export(run: Path | None, home: Path, exporter: str) -> str:
    """``ftspl export RUN --precision fp32`` (or ``--pretrained``) into ``home``, kept when it already holds it
    with the regional output."""
    man = active_manifest(home)
    want = "pretrained" if run is None else str(run.resolve())
    if man is None or man.source != want or man.encoders["image_encoder"].region_output_name is None:
        shutil.rmtree(home, ignore_errors=True)
        args = ["--pretrained"] if run is None else [str(run)]
        log(f"ftspl export {args[0]} --precision fp32 --exporter {exporter}")
        cli_run("export", *args, "--precision", "fp32", "--exporter", exporter, home=home,
                env={"FTSPL_CACHE": str(study_home().cache)})
        man = active_manifest(home)
    return man.model_id


def index(home: Path, gallery: Path) -> None:
    """``ftspl index add GALLERY`` in ``home`` unless its index already holds that many shapes."""
    from ftspl.api import Library

    try:
        with Library(home) as lib:
            if lib.stats().count > 0:
                return
    except Exception:  # noqa: BLE001 - no index yet
        pass
    log(f"ftspl index add {gallery}")
    cli_run("index", "add", str(gallery), "--rebuild", home=home)


def twin_home(src: Path, dst: Path) -> Path:
    """A home with ``src``'s model (copied) for a second gallery."""
    from ftspl.engine.home import Home

    if active_manifest(dst) is None or active_manifest(dst).model_id != active_manifest(src).model_id:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(Home(src).models, Home(dst).models)
    return dst


def gallery(home: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, unit embeddings, labels) of a home's index."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import STORE_NAME
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(Home(home).index_dir / STORE_NAME, readonly=True) as st:
        ids, mat = st.all_embeddings()
        rows = {r.id: r for r in st.get([int(i) for i in ids])}
    return ids, mat, np.asarray([rows[int(i)].label for i in ids], dtype=object)


# -- photos and their regions -------------------------------------------------------------------------
def labelled(folder: Path) -> list[tuple[Path, str]]:
    from ftspl.engine.scoring.evaluate import labelled_photos

    return labelled_photos(folder)


def scene_split(split, root: Path) -> Path | None:
    """The seed's scene val photos (``val_scenes/``, the val models in furnished rooms, ranking the same val
    gallery): in the study's build, else in the scenes build of ``root``; None when neither has one."""
    for folder in (split.root / "val_scenes", Path(root) / f"scenes-s{split.seed}" / "val_scenes"):
        if folder.is_dir() and any(folder.rglob("*.jpg")):
            return folder
    return None


def real_sets(src: Path, classes: list[str]) -> dict[str, list[tuple[Path, str]]]:
    """The real photos of a benchmark class: {"interior": [(path, class)], "object": [...]}."""
    rows = list(csv.DictReader((src / "labels.csv").open()))
    out: dict[str, list[tuple[Path, str]]] = {"interior": [], "object": []}
    for r in rows:
        if r["class"] in classes:
            out["interior" if "pexels" in r["file"] else "object"].append((src / r["file"], r["class"]))
    return out


def region_embeddings(home: Path, photos: list[tuple[Path, str]], cache: Path) -> dict:
    """Per mode, per photo: (R x D embeddings, R scales; 0 for the whole photo), cached in ``cache`` (npz)."""
    from ftspl.engine.home import Home
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.model.encoders import Encoders
    from ftspl.engine.scoring.regions import RegionConfig, embed_regions, window_boxes

    model_id = active_manifest(home).model_id
    names = [str(p) for p, _ in photos]
    if cache.is_file():
        got = np.load(cache, allow_pickle=False)
        if str(got["model_id"]) == model_id and list(got["names"]) == names:
            return {m: [(got[f"{m}_{i}"], got[f"{m}_scales"]) for i in range(len(names))] for m in MODES}
    enc = Encoders(Home(home).active_model_dir())
    scales_all = SCALE_SETS[-1]
    out: dict = {}
    crop_scales = np.asarray([0.0, *(s for s in scales_all for _ in window_boxes([s])[1:])])
    rmac_scales = np.asarray([0.0, *(r["scale"] for r in enc.regions if r["scale"] in scales_all)])
    for mode, scales in (("crops", crop_scales), ("rmac", rmac_scales)):
        cfg = RegionConfig(mode=mode, scales=scales_all)
        rows = []
        for i in range(0, len(photos), 8):
            imgs = [load_photo(p) for p, _ in photos[i:i + 8]]
            rows += [e for e, _ in embed_regions(enc, imgs, cfg)]
        out[mode] = [(r, scales) for r in rows]
        log(f"  {mode}: {len(rows)} photos x {len(scales)} regions")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, model_id=model_id, names=np.asarray(names),
             **{f"{m}_{i}": out[m][i][0] for m in MODES for i in range(len(names))},
             **{f"{m}_scales": out[m][0][1] for m in MODES})
    return out



# -- cost ---------------------------------------------------------------------------------------------------
def cost_worker(argv: list[str]) -> None:
    """(Child process) ``HOME REPEATS FUSION PHOTO...``: warm query latency per mode, modes interleaved."""
    import ftspl

    home, repeats, fusion, *photos = argv
    modes = ("none", "rmac", "crops")
    lib = ftspl.open(home, device="cpu")
    for m in modes:  # warm-up: sessions, caches
        lib.query(photos[0], 10, regions=m, region_fusion=fusion)
    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(int(repeats)):
        for p in photos:
            for m in modes:
                t = time.perf_counter()
                ans = lib.query(p, 10, regions=m, region_fusion=fusion)
                times[m].append((time.perf_counter() - t) * 1000)
                assert len(ans.hits) == 10
    print(json.dumps({m: {"queries": len(t), "p50_ms": round(float(np.percentile(t, 50)), 2),
                          "p95_ms": round(float(np.percentile(t, 95)), 2)} for m, t in times.items()}))


def cost(src_home: Path, work: Path, size: int, photos: list[Path], repeats: int, fusion: str) -> dict:
    from querylib import build_big_index

    big = work / f"home-big-{size}"
    if active_manifest(big) is None or active_manifest(big).model_id != active_manifest(src_home).model_id:
        log(f"building a {size}-shape index (real + synthetic embeddings)")
        build_big_index(src_home, big, size)
    log(f"warm queries: {len(photos)} photos x {repeats} repeats x 3 modes")
    cmd = [sys.executable, __file__, "--cost-worker", str(big), str(repeats), fusion, *map(str, photos)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if r.returncode:
        sys.exit(f"cost worker failed:\n{r.stderr[-3000:]}")
    return {"shapes": size, "photos": len(photos), "repeats": repeats, "cores": os.cpu_count(),
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "threads": "all cores (onnxruntime default)",
            "per_mode": json.loads(r.stdout.strip().splitlines()[-1])}


# -- main ---------------------------------------------------------------------------------------------------
def report_queries(seed: int, data_root: Path, work: Path, exporter: str) -> dict:
    """The report seed's FTSPL run (quality.py's cell, trained when missing) queried with every variant:
    its query photos rank its target gallery. Reported only."""
    from studylib import build_split, run_cell, run_dir_of, train_config

    split = build_split(seed, data_root)
    cells = study_home().cache / "study"
    run = run_dir_of("FTSPL", train_config("FTSPL", split), split, "report", cells)
    if not (run / "best.pt").is_file():
        run_cell("FTSPL", split, "report", None, cells)
    home = work / f"report{seed}" / "home-target"
    export(run, home, exporter)
    index(home, split.target)
    ids, gal, glab = gallery(home)
    photos = labelled(split.scored("report")[0])
    log(f"report seed {seed} queries: {len(photos)} photos vs {len(ids)} shapes")
    sets = region_embeddings(home, photos, work / f"report{seed}" / "queries.npz")
    return {"seed": seed, "gallery": len(ids),
            "queries": score_block(sets, [c for _, c in photos], [str(p) for p, _ in photos], gal, glab)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="tuning seeds (val vs val_gallery)")
    ap.add_argument("--real", type=Path, default=REAL, help="real photos with labels.csv ('none': skip)")
    ap.add_argument("--cost-size", type=int, default=100_000, help="shapes in the latency index (0: skip)")
    ap.add_argument("--cost-photos", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--report-seeds", default="none",
                    help="also report the benchmark queries vs the target gallery on these report seeds (none: skip)")
    ap.add_argument("--model", choices=("FTSPL", "pretrained"), default="FTSPL",
                    help="FTSPL: the run of ftspl train's defaults per seed (trained when no study left it)")
    ap.add_argument("--exporter", default="torchscript", help="ftspl export --exporter (torchscript: faster)")
    ap.add_argument("--data-root", type=Path, default=None, help="default: <cache>/quality-data")
    ap.add_argument("--scenes-root", type=Path, default=None,
                    help="builds with val_scenes/ (scenes-s<seed>/, benchmarks/scenes.py); default <cache>/scenes-data")
    ap.add_argument("--out", type=Path, default=RESULTS / "regions.json")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cost-worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cost_worker:
        cost_worker(args.cost_worker)
        return 0
    from protocollib import report_seeds, tuning_seeds
    from studylib import build_split

    seeds = tuning_seeds(args.seeds)
    rseeds = report_seeds(args.report_seeds)
    if args.model != "pretrained":
        load_torch_before_mesa()  # training may follow the builds' rendering in this process
    t0 = time.perf_counter()
    cache = study_home().cache
    work = cache / "regions"
    data_root = args.data_root or cache / "quality-data"
    per_seed, real_out, checks = [], [], {}
    for seed in seeds:
        split = build_split(seed, data_root)
        run, origin = model_run(split, args.model)
        home = work / f"seed{seed}" / "home-val"
        model_id = export(run, home, args.exporter)
        index(home, split.val_gallery)
        ids, gal, glab = gallery(home)
        rec: dict = {"seed": seed, "run": str(run), "run_origin": origin, "model_id": model_id,
                     "gallery": len(ids)}
        blocks = [("val", split.scored("tune")[0])]
        scenes = scene_split(split, args.scenes_root or cache / "scenes-data")
        if scenes is not None:
            blocks.append(("val_scenes", scenes))
        for name, folder in blocks:
            photos = labelled(folder)
            log(f"seed {seed} {name}: {len(photos)} photos vs {len(ids)} shapes")
            sets = region_embeddings(home, photos, work / f"seed{seed}" / f"{name}.npz")
            rec[name] = score_block(sets, [c for _, c in photos], [str(p) for p, _ in photos], gal, glab)
            if name == "val":
                checks[seed] = served_check(home, photos, sets, ids, gal, variants())
        per_seed.append(rec)
        if str(args.real) != "none":
            thome = twin_home(home, work / f"seed{seed}" / "home-target")
            index(thome, split.target)
            tids, tgal, tlab = gallery(thome)
            entry = {"seed": seed, "gallery": len(tids)}
            for kind, photos in real_sets(args.real, split.classes).items():
                sets = region_embeddings(thome, photos, work / f"seed{seed}" / f"real-{kind}.npz")
                entry[kind] = score_block(sets, [c for _, c in photos], [p.name for p, _ in photos], tgal, tlab)
            real_out.append(entry)
    report_out = [report_queries(seed, data_root, work, args.exporter) for seed in rseeds]
    decision = decide(per_seed, *(("val", "val_scenes") if all("val_scenes" in s for s in per_seed) else ("val",)))
    summary = {"val": decide(per_seed, "val")["table"]}
    if all("val_scenes" in s for s in per_seed):
        summary["val_scenes"] = decide(per_seed, "val_scenes")["table"]
        decision["val_alone"] = {k: v for k, v in decide(per_seed, "val").items() if k != "table"}
    for kind in ("interior", "object"):
        if real_out:
            summary[f"real_{kind}"] = mean_table(real_out, kind)
    if report_out:
        summary["queries"] = mean_table(report_out, "queries")
    best = decision["best_regional"]
    gains = {"variant": best, "val": paired_vs_none(per_seed, best, "val")}
    if report_out:
        gains["queries"] = paired_vs_none(report_out, best, "queries")
    if "val_scenes" in summary:
        gains["val_scenes"] = paired_vs_none(per_seed, best, "val_scenes")
    for kind in ("interior", "object"):
        if real_out:
            gains[f"real_{kind}"] = paired_vs_none(real_out, best, kind)
    cost_out = None
    if args.cost_size:
        split0 = build_split(seeds[0], data_root)
        photos = [p for p, _ in labelled(split0.val)]
        photos = photos[:: max(1, len(photos) // args.cost_photos)]
        src = work / f"seed{seeds[0]}" / ("home-target" if str(args.real) != "none" else "home-val")
        cost_out = cost(src, work, args.cost_size, photos[: args.cost_photos], args.repeats, decision["region_fusion"])
    record = result_record("regions.py", argv, {"seeds": seeds, "exporter": args.exporter, "precision": "fp32",
                                                "scale_sets": SCALE_SETS, "fusions": FUSIONS,
                                                "real": str(args.real), "data_root": str(data_root),
                                                "report_seeds": [e["seed"] for e in report_out]},
                           decision=decision, summary=summary, paired_best_regional_vs_none=gains,
                           served_check=checks, cost=cost_out, per_seed=per_seed, real=real_out, report=report_out,
                           seconds=round(time.perf_counter() - t0, 1))
    if str(args.out) != "none":
        write_result(args.out, record)
    print(json.dumps({"decision": {k: decision[k] for k in ("regions", "winner", "best_regional", "region_fusion",
                                                          "scales")},
                      "cost": None if cost_out is None else cost_out["per_mode"]}) if args.json else
          json.dumps({"decision": decision, "summary": summary, "cost": cost_out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
