"""fp32 vs int8 encoders, judged by retrieval, and the per-mesh budget of ``index add`` at both precisions.

    python benchmarks/precision.py [--tune-seeds 0,1] [--report-seeds 5] [--real DIR] [--stages 40]
                                   [--speed-rounds 2] [--out FILE] [--json]

For each seed, the FTSPL run with ``ftspl train``'s defaults (the study's
finished run of that cell when ``<home>/cache/study`` has one, else trained
here under ``<home>/cache/precision``) is exported twice, ``--precision fp32``
and ``--precision int8`` (calibrated on the run's own source photos and target
shapes), each into a home of its own; both homes index the same gallery with
``ftspl index add`` and embed the same photos. Under the protocol
(:mod:`ftspl.data.protocol`):

* tuning seeds (``--tune-seeds``): the val photos rank an index of the val
  gallery. The decision is made here: int8 becomes the default CPU export only
  if the mean change of FT and of NN over these seeds are both smaller than
  0.005 in size (:data:`RULE`);
* report seeds (``--report-seeds``): the query photos rank an index of the
  target gallery, and the real photos of ``--real`` (``labels.csv``: file,class;
  only the classes the gallery has) rank the same index.

Each block gives NN, FT, ST, DCG and ANMRR at both precisions, the paired
difference int8 - fp32 (ANMRR as fp32 - int8: positive is a gain) with a 95%
bootstrap interval over query models (``studylib.paired``; a real photo is its
own group), and how often the two agree: the same nearest shape, the overlap of
the top 10, and the same matched view (the view of a shape closest to the
photo, from the index's per-view codes) for the fp32 top-1 shape and for each
of its top 10.

``--stages N`` measures the per-mesh budget of ``index add`` on the first N
meshes of ``benchmarks/run.py`` with each precision's model (of the last seed):
``benchmarks/stages.py --model DIR`` (load, render, preprocess, encode on one
thread and on every core) plus, here, the rest of the write path on one
thread: the per-view codes, the view strip, the preview, and the commit (the
index's own sink: SQLite upsert and HNSW add, 32 shapes per transaction).
``--speed-rounds R`` times ``ftspl index add`` of those 60 meshes with each
model, alternated R times (fresh homes).

Writes ``--out`` (default ``benchmarks/results/precision.json``; ``none``:
print only) with the command, date, git state and config. The per-mesh budget
and the timings are measured by ``benchmarks/budgetlib.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from budgetlib import budget, speed
from common import RESULTS, ROOT, cli_run, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, \
    write_result
from perflib import machine
from protocollib import check_gallery, gallery_with_paths
from studylib import PAIRED, build_split, cell_key, paired, query_groups, score, train_config

PRECISIONS = ("fp32", "int8")
THRESHOLD = 0.005
RULE = (f"int8 becomes the default CPU export only if the mean val FT change and the mean val NN change "
        f"(int8 - fp32, over the tuning seeds) are both smaller than {THRESHOLD} in size")
REAL = ROOT.parent / "shared" / "data" / "real_photos"
log = logger("precision")


# -- models and indexes ------------------------------------------------------------------------------
def model_run(split, purpose: str, work: Path) -> tuple[Path, str]:
    """The default FTSPL run of ``split`` for ``purpose``: the study's finished one, else one trained here."""
    cfg = train_config("FTSPL", split)
    key = cell_key("FTSPL", cfg, purpose)
    study = study_home().cache / "study" / f"seed{split.seed}" / purpose
    if (study / f"FTSPL-{key}.json").is_file() and (study / f"run-FTSPL-{key}" / "best.pt").is_file():
        return study / f"run-FTSPL-{key}", "the study's finished run"
    own = work / f"seed{split.seed}" / f"run-FTSPL-{key}"
    if not (own / ".done").is_file():
        from ftspl.modelling import train

        shutil.rmtree(own, ignore_errors=True)
        log(f"seed {split.seed}: training FTSPL with ftspl train's defaults into {own}")
        train(cfg=replace(cfg, out=str(own)), home=study_home())
        (own / ".done").write_text("")
    return own, "trained by this script"


def active_manifest(home: Path):
    from ftspl.engine.home import Home
    from ftspl.engine.model.manifest import ModelManifest

    try:
        return ModelManifest.load(Home(home).active_model_dir())
    except Exception:  # noqa: BLE001 - no model yet
        return None


def export(run: Path, precision: str, home: Path, exporter: str) -> dict:
    """``ftspl export RUN --precision P`` into ``home`` (kept when the home already holds it)."""
    man = active_manifest(home)
    if man is None or man.source != str(run.resolve()) or man.precision != precision:
        shutil.rmtree(home, ignore_errors=True)
        log(f"ftspl export {run.name} --precision {precision}")
        # the study's cache holds the run's rendered views: int8 calibrates on them without rendering again
        r = cli_run("export", str(run), "--precision", precision, "--exporter", exporter, home=home,
                    env={"FTSPL_CACHE": str(study_home().cache)})
        man = active_manifest(home)
        wall = round(r.wall_s, 1)
    else:
        wall = None
    return {"model_id": man.model_id, "export_s": wall, "calibration": man.calibration,
            "precision_check": man.precision_check}


def index(home: Path, gallery: Path) -> dict:
    """``ftspl index add GALLERY --rebuild`` in ``home`` (kept when the index holds that gallery for its model)."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library

    try:
        lib = Library(Home(home))
        _ids, _g, _l, paths = gallery_with_paths(lib)
        check_gallery(paths, gallery)
        return {"shapes": len(paths), "kept": True}
    except (Exception, SystemExit):  # noqa: BLE001 - no index, another gallery or model: build it
        pass
    r = cli_run("index", "add", str(gallery), "--rebuild", home=home)
    return {"shapes": r.data["added"], "seconds": r.data["seconds"], "shapes_per_s": r.data["shapes_per_s"],
            "failed": len(r.data.get("failures", []))}


# -- embeddings and scores ----------------------------------------------------------------------------
@dataclass
class Side:
    """One precision's view of a block: photo embeddings, the gallery in path order, its per-view codes."""

    photos: np.ndarray
    gallery: np.ndarray
    labels: list
    paths: list
    codes: list  #: (V, D) per shape, in ``paths`` order


def embed_side(home: Path, gallery_dir: Path, photos: list[tuple[Path, str]]) -> Side:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.model.preprocess import to_tensor

    lib = Library(Home(home))
    ids, gallery, labels, paths = gallery_with_paths(lib)
    check_gallery(paths, gallery_dir)
    order = np.argsort(np.asarray(paths, dtype=object).astype(str), kind="stable")
    with lib.open_reader() as reader:
        by_id = reader.view_embeddings([int(i) for i in ids])
    pre = lib.encoders.preprocess
    tensors = np.stack([to_tensor(load_photo(p), pre) for p, _ in photos])
    emb = np.concatenate([lib.encoders.embed_photos(tensors[i : i + 32]) for i in range(0, len(tensors), 32)])
    return Side(emb, gallery[order], [labels[i] for i in order], [paths[i] for i in order],
                [by_id.get(int(ids[i])) for i in order])


def agreement(a: Side, b: Side, k: int = 10) -> dict:
    """How often ``b`` (int8) answers as ``a`` (fp32): nearest shape, top-k overlap, matched views."""
    from ftspl.engine.scoring.metrics import pairwise_euclidean

    if a.paths != b.paths:
        raise SystemExit("the two indexes hold different shapes; rebuild them from the same gallery")
    da, db = pairwise_euclidean(a.photos, a.gallery), pairwise_euclidean(b.photos, b.gallery)
    ta, tb = np.argsort(da, axis=1, kind="stable")[:, :k], np.argsort(db, axis=1, kind="stable")[:, :k]
    same_view_top1, same_view_topk, n_views = [], 0, 0
    for q in range(len(ta)):
        for r, s in enumerate(ta[q]):
            if a.codes[s] is None or b.codes[s] is None:
                continue
            same = int(np.argmax(a.codes[s] @ a.photos[q])) == int(np.argmax(b.codes[s] @ b.photos[q]))
            same_view_topk += same
            n_views += 1
            if r == 0:
                same_view_top1.append(same)
    return {"same_nearest_shape": round(float(np.mean(ta[:, 0] == tb[:, 0])), 4),
            f"top{k}_overlap": round(float(np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])), 4),
            "same_matched_view_top1": round(float(np.mean(same_view_top1)), 4) if same_view_top1 else None,
            f"same_matched_view_top{k}": round(same_view_topk / n_views, 4) if n_views else None}


def block(seed: int, homes: dict, gallery_dir: Path, photos: list[tuple[Path, str]], groups: list[str]) -> dict:
    """Both precisions' scores on one (photos, gallery) pair, the paired difference and the agreement."""
    sides = {p: embed_side(homes[p], gallery_dir, photos) for p in PRECISIONS}
    labels = [lab for _, lab in photos]
    rows = {}
    for p, s in sides.items():
        metrics, per, _pr = score(s.photos, labels, s.gallery, s.labels)
        rows[p] = {"seed": seed, "metrics": {m: round(metrics[m], 4) for m in (*PAIRED, "F")},
                   "per_query": per, "query_groups": groups}
    return {"photos": len(photos), "gallery": len(sides["fp32"].paths),
            **{p: rows[p]["metrics"] for p in PRECISIONS}, "rows": rows,
            "agreement": agreement(sides["fp32"], sides["int8"])}


def real_photos(folder: Path, classes: set[str]) -> list[tuple[Path, str]]:
    """``labels.csv``'s photos (file, class) of the classes the gallery has."""
    with open(folder / "labels.csv", newline="") as fh:
        rows = [(folder / r["file"], r["class"]) for r in csv.DictReader(fh)]
    return [(p, c) for p, c in rows if c in classes and p.is_file()]


def summarise(blocks: list[dict]) -> dict:
    """Mean metrics per precision over seeds, and the paired bootstrap of int8 - fp32."""
    out = {"seeds": [b["seed"] for b in blocks]}
    for p in PRECISIONS:
        out[p] = {m: round(float(np.mean([b[p][m] for b in blocks])), 4) for m in (*PAIRED, "F")}
    out["int8_minus_fp32"] = paired([b["rows"]["int8"] for b in blocks], [b["rows"]["fp32"] for b in blocks])
    out["agreement"] = {k: round(float(np.mean([b["agreement"][k] for b in blocks if b["agreement"][k] is not None])), 4)
                        for k in blocks[0]["agreement"]}
    return out


# -- main --------------------------------------------------------------------------------------------
def seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tune-seeds", type=seeds, default=[0, 1], help="seeds whose val photos decide (comma list)")
    ap.add_argument("--report-seeds", type=seeds, default=[5], help="seeds whose queries are reported (comma list)")
    ap.add_argument("--real", type=Path, default=REAL, help="real photos (labels.csv: file,class); none: skip")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--work", type=Path, default=None, help="homes and runs (default: <home>/cache/precision)")
    ap.add_argument("--exporter", default="dynamo", help="ftspl export --exporter (dynamo: what users get)")
    ap.add_argument("--stages", type=int, default=40, help="meshes for the per-stage budget (0: skip)")
    ap.add_argument("--speed-rounds", type=int, default=0, help="alternated index add timings of the 60 meshes")
    ap.add_argument("--out", default=str(RESULTS / "precision.json"), help="result file; none: print only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    quiet_openmp()
    load_torch_before_mesa()  # training may run here, and the stages render in this process
    from ftspl.data.protocol import check_use

    home = study_home()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    work = (args.work or home.cache / "precision").resolve()
    t0 = time.perf_counter()
    res: dict = {"rule": RULE, "threshold": THRESHOLD, "machine": machine(), "tune": [], "report": [], "real": []}
    last_models: dict[str, Path] = {}
    for purpose, chosen in (("tune", args.tune_seeds), ("report", args.report_seeds)):
        for seed in chosen:
            split = build_split(seed, data_root)
            photos_name, gallery_name = ("val", "val_gallery") if purpose == "tune" else ("queries", "target")
            try:
                check_use(split.root, purpose, photos_name)
            except Exception as exc:  # noqa: BLE001 - UsageError: the protocol's one line
                raise SystemExit(str(exc)) from None
            photos_dir, gallery_dir = split.root / photos_name, split.root / gallery_name
            run, origin = model_run(split, purpose, work)
            homes, models = {}, {}
            info: dict = {"seed": seed, "run": str(run), "run_origin": origin, "models": {}, "index": {}}
            for p in PRECISIONS:
                homes[p] = work / f"seed{seed}" / f"home-{p}"
                info["models"][p] = export(run, p, homes[p], args.exporter)
                models[p] = homes[p] / "models" / info["models"][p]["model_id"]
                info["index"][p] = index(homes[p], gallery_dir)
            last_models = models
            from ftspl.engine.scoring.evaluate import labelled_photos

            photos = labelled_photos(photos_dir)
            b = block(seed, homes, gallery_dir, photos, query_groups([str(p) for p, _ in photos]))
            res[purpose].append({**info, "split": f"{photos_name} vs {gallery_name}", **b})
            log(f"seed {seed} {purpose}: fp32 NN {b['fp32']['NN']:.3f} FT {b['fp32']['FT']:.3f} | "
                f"int8 NN {b['int8']['NN']:.3f} FT {b['int8']['FT']:.3f} | agreement {b['agreement']}")
            if purpose == "report" and str(args.real).lower() != "none":
                real = real_photos(args.real, set(split.classes) or set(b_labels(homes["fp32"])))
                rb = block(seed, homes, gallery_dir, real, [p.name for p, _ in real])
                res["real"].append({"seed": seed, "split": f"{args.real.name} vs target", **rb})
                log(f"seed {seed} real photos ({len(real)}): fp32 NN {rb['fp32']['NN']:.3f} | int8 NN {rb['int8']['NN']:.3f}")
    for purpose in ("tune", "report", "real"):
        if res[purpose]:
            res[f"{purpose}_summary"] = summarise(res[purpose])
    if res["tune"]:
        d = res["tune_summary"]["int8_minus_fp32"]
        ok = abs(d["FT"]["mean"]) < THRESHOLD and abs(d["NN"]["mean"]) < THRESHOLD
        res["decision"] = {"int8_default_for_cpu": bool(ok), "val_FT_change": d["FT"]["mean"],
                           "val_NN_change": d["NN"]["mean"], "rule": RULE}
    if args.stages and last_models:
        res["stages"] = budget(last_models, args.stages, work)
    if args.speed_rounds and last_models:
        res["index_add_60"] = speed(last_models, args.speed_rounds, work)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    for purpose in ("tune", "report", "real"):  # the per-query values stay out of the file (rows are large)
        for b in res[purpose]:
            b.pop("rows", None)
    config = {"tune_seeds": args.tune_seeds, "report_seeds": args.report_seeds, "real": str(args.real),
              "exporter": args.exporter, "stages_meshes": args.stages, "speed_rounds": args.speed_rounds,
              "data_root": str(data_root), "work": str(work), "nice": os.nice(0)}
    record = result_record("precision.py", argv, config, **res)
    if args.out.lower() != "none":
        write_result(Path(args.out), record)
    print(json.dumps(record, indent=1) if args.json else json.dumps(res.get("decision", {})))
    return 0


def b_labels(home: Path) -> list[str]:
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library

    return [lab for lab in gallery_with_paths(Library(Home(home)))[2] if lab]


if __name__ == "__main__":
    sys.exit(main())
