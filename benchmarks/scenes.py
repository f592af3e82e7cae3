"""Train for rooms: source_only and FTSPL trained with and without scene photos, scored on val, val_scenes and real photos.

    python benchmarks/scenes.py [--seeds 0,1] [--rows CNN,source_only,FTSPL] [--real DIR|none]
                                [--report-seeds 5,6,7,8,9|none]
                                [--data-root DIR] [--study-data DIR] [--work DIR] [--out FILE] [--json]

Per tuning seed (:data:`ftspl.data.protocol.TUNE_SEEDS`; a report seed is refused):

* ``without``: the study's ``full`` build (``<home>/cache/quality-data/data-full-s<seed>``,
  ``studylib.build_split``): 4 renders and the catalogue icon per source model;
* ``with``: the same build plus the ``scenes`` variety (``PHOTO_VARIETY['scenes']``
  scene photos per source model in source/, every model in the room a source
  model) and ``--scenes`` (as many per val model in val_scenes/: a val model
  among source models), built under ``<data-root>/scenes-s<seed>`` with val/,
  val_gallery/, queries/ and target/ hard-linked from the study's build (their
  digests are checked). The time the scene photos took is recorded.

Every trained row is ``studylib.run_cell`` (TrainConfig's defaults and the row's
preset, head mode) on the variant's source photos, purpose ``tune``, cached under
``--work``; ``CNN`` (the pretrained encoder) needs no training and is scored once.
Each network is scored on the val photos (held-out source models) and on
val_scenes (the same val models in rooms), both ranking the val gallery (the
source models' meshes), and on the real development photos of ``--real``
(``labels.csv``; interior scenes and object photos apart) ranking the seed's
target gallery (152 meshes): reported only, they choose nothing.
``--report-seeds`` (:data:`ftspl.data.protocol.REPORT_SEEDS`) adds the
``queries`` block: on each report seed, built with and without scene photos
the same way, every row trained on that seed's source photos (purpose
``report``) and its query photos ranking its target gallery; reported only.

Writes ``--out`` (default ``benchmarks/results/scenes.json``): per block (val,
val_scenes, real_interior, real_object), row and variant the mean and sample std
over seeds and the per-seed metrics, and ``with`` minus ``without``
(``studylib.paired``: per-seed mean and std, 95% bootstrap interval over query
models, or over photos for the real ones).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from common import RESULTS, ROOT, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result

quiet_openmp()
log = logger("scenes")
REAL = ROOT.parent / "shared" / "data" / "real_photos"
SHOWN = ("NN", "FT", "ST", "DCG", "ANMRR")
BLOCKS = ("val", "val_scenes", "real_interior", "real_object", "queries")
VARIANTS = ("without", "with")
UNTRAINED = ("CNN", "CNN_centred")


def scene_config(seed: int):
    """The ``with`` build's config: the study's ``full`` build plus the scenes variety and ``--scenes``."""
    from ftspl.data.bench import preset_config
    from ftspl.data.variety import PHOTO_VARIETY

    cfg = preset_config("full", seed, "scenes")
    return replace(cfg, val_scenes=int(PHOTO_VARIETY["scenes"]["scenes"]))


def build_with_scenes(seed: int, data_root: Path, base) -> tuple[object, dict]:
    """``<data_root>/scenes-s<seed>`` linked from the study's build ``base``; (split, build record).

    The seconds of the run that rendered the scene photos are kept beside the build, so a reused
    build still reports them.
    """
    import varietylib

    from ftspl.data.bench import build_sh3d_benchmark

    out = Path(data_root) / f"scenes-s{seed}"
    timing = out / "build_seconds.json"
    fresh = not (out / "manifest.json").exists()
    t0 = time.perf_counter()
    s = build_sh3d_benchmark(out, study_home().debian_cache, scene_config(seed), link_from=base.root)
    seconds = round(time.perf_counter() - t0, 1)
    if fresh or not timing.exists():
        timing.write_text(json.dumps({"seconds": seconds}))
    digests = {g: varietylib.digest(getattr(s, g)) for g in ("val", "val_gallery")}
    if digests != {g: varietylib.digest(getattr(base, g)) for g in ("val", "val_gallery")}:
        sys.exit(f"{out}: val/ or val_gallery/ differ from {base.root}; the comparison would be void")
    manifest = json.loads((out / "manifest.json").read_text())
    record = {"photos": s.photos, "counts": s.counts, "failed": s.failed, "digests": digests,
              "scene_photos": manifest.get("scenes", {}).get("photos", {}),
              "build_seconds": json.loads(timing.read_text())["seconds"], "seconds_this_run": seconds}
    return varietylib.as_split(seed, s), record


def row_variants(row: str, base, with_split) -> dict:
    """{variant: split} a row is trained on: a pretrained row once (``-``), a trained row without and with scenes."""
    return {"-": base} if row in UNTRAINED else {"without": base, "with": with_split}


def score_cells(row: str, split, variant: str, scenes_root: Path, real: dict, work: Path) -> dict:
    """{block: record} of one row trained on ``split`` (val, val_scenes, and the real photos)."""
    import studylib
    import varietylib

    from ftspl.data.protocol import check_use

    out = {"val": studylib.run_cell(row, split, "tune", None, work)}
    check_use(scenes_root, "tune", "val_scenes")
    out["val_scenes"] = varietylib.score_trained_cell(row, split, "tune", None, work, scenes_root / "val_scenes",
                                                      "val_scenes")
    for kind, folder in real.items():
        out[f"real_{kind}"] = studylib.real_photo_cell(row, split, folder, work, None, purpose="tune")
    for block, rec in out.items():
        m = rec["metrics"]
        log(f"seed {split.seed} {row:>12} {variant:>7} {block:>13}: NN {m['NN']:.3f} FT {m['FT']:.3f} "
            f"ST {m['ST']:.3f}")
    return out


def summarise(results: dict) -> dict:
    """``results[block][row][variant]`` (records per seed) -> means, per-seed metrics and with - without."""
    from studylib import mean_std, paired

    out: dict = {}
    for block, rows in results.items():
        for row, variants in rows.items():
            rec: dict = {}
            for v, recs in variants.items():
                rec[v] = {"seeds": [r["seed"] for r in recs], "mean": mean_std(recs),
                          "per_seed": {str(r["seed"]): {m: round(r["metrics"][m], 4) for m in SHOWN} for r in recs}}
            if variants.get("with") and variants.get("without"):
                rec["with_minus_without"] = paired(variants["with"], variants["without"])
            out.setdefault(block, {})[row] = rec
    return out


def markdown(summary: dict) -> str:
    from studylib import ci, pm

    lines = ["| block | row | variant | " + " | ".join(SHOWN) + " | FT with - without [95% interval] |",
             "|---|---|---|" + "---:|" * len(SHOWN) + "---|"]
    for block, rows in summary.items():
        for row, rec in rows.items():
            for v in ("-", *VARIANTS):
                if v not in rec:
                    continue
                cells = [pm(rec[v]["mean"][m]) for m in SHOWN]
                d = rec.get("with_minus_without", {}).get("FT") if v == "with" else None
                diff = ci(d) if d else ""
                lines.append(f"| {block} | {row} | {v} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="tuning seeds (purpose tune)")
    ap.add_argument("--rows", default="CNN,source_only,FTSPL")
    ap.add_argument("--real", default=str(REAL), help="real photos (labels.csv: file,class); none: skip")
    ap.add_argument("--report-seeds", default="none",
                    help="also report the benchmark queries vs the target gallery on these report seeds (none: skip)")
    ap.add_argument("--data-root", type=Path, default=None, help="the with-scenes builds (default: <home>/cache/scenes-data)")
    ap.add_argument("--study-data", type=Path, default=None, help="the study's builds (default: <home>/cache/quality-data)")
    ap.add_argument("--work", type=Path, default=None,
                    help="per-cell results and runs (default: <home>/cache/study, shared with quality.py and looks.py)")
    ap.add_argument("--out", type=Path, default=RESULTS / "scenes.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from protocollib import report_seeds, tuning_seeds

    seeds = tuning_seeds(args.seeds)
    args.report_seeds = report_seeds(args.report_seeds)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    real = None if args.real.lower() == "none" else Path(args.real)
    if real is not None and not (real / "labels.csv").exists():
        sys.exit(f"--real {real}: no labels.csv (pass --real none to skip the real photos)")
    load_torch_before_mesa()
    return run_study(args, argv, seeds, rows, real)


def run_study(args, argv, seeds: list[int], rows: list[str], real: Path | None) -> int:
    import studylib

    cache = study_home().cache
    data_root = (args.data_root or cache / "scenes-data").resolve()
    study_data = (args.study_data or cache / "quality-data").resolve()
    work = (args.work or cache / "study").resolve()
    results: dict = {b: {} for b in BLOCKS}
    builds: dict = {}
    t0 = time.perf_counter()

    def save() -> dict:
        summary = summarise({b: r for b, r in results.items() if r})
        record = result_record("scenes.py", argv, {
            "seeds": seeds, "rows": rows, "scene_config": json.loads(json.dumps(asdict(scene_config(seeds[0]).scene))),
            "scenes_per_model": {"source": scene_config(seeds[0]).source_scenes,
                                 "val": scene_config(seeds[0]).val_scenes},
            "training": "TrainConfig defaults and each row's preset, head mode (studylib.run_cell, purpose tune)",
            "variants": {"without": "data-full-s<seed>: 4 renders + icon per source model",
                         "with": "the same + the scenes variety (scene photos of source models among source models)"},
            "scoring": {"val": "val photos vs the val gallery (source models' meshes)",
                        "val_scenes": "the val models in rooms among source models vs the val gallery",
                        "real_interior/real_object": f"{real} vs the seed's target gallery; reported only",
                        "queries": "report seeds: each seed's query photos vs its target gallery, trained on that "
                                   "seed with and without its scene photos; reported only"},
            "report_seeds": args.report_seeds,
            "uncertainty": "mean: [mean, sample std] over seeds; with_minus_without: studylib.paired",
            "minutes": round((time.perf_counter() - t0) / 60, 1)}, **summary, builds=builds)
        write_result(args.out, record)
        return record

    for seed in seeds:
        base = studylib.build_split(seed, study_data, variety="base")
        base.scored("tune")  # refuses a build whose manifest does not make val a tuning split
        with_split, builds[f"scenes-s{seed}"] = build_with_scenes(seed, data_root, base)
        log(f"seed {seed}: {builds[f'scenes-s{seed}']['scene_photos']} scene photos, "
            f"built in {builds[f'scenes-s{seed}']['build_seconds']:.0f}s")
        scenes_root = with_split.root
        sets = studylib.real_photo_sets(real, base.classes, work / "real-photos" / f"seed{seed}") if real else {}
        for row in rows:
            for v, split in row_variants(row, base, with_split).items():
                for block, rec in score_cells(row, split, v, scenes_root, sets, work).items():
                    results[block].setdefault(row, {}).setdefault(v, []).append(rec)
            save()
    for seed in args.report_seeds:
        base = studylib.build_split(seed, study_data, variety="base")
        base.scored("report")
        with_split, builds[f"scenes-s{seed}"] = build_with_scenes(seed, data_root, base)
        with_split.scored("report")
        for row in rows:
            for v, split in row_variants(row, base, with_split).items():
                rec = studylib.run_cell(row, split, "report", None, work)
                results["queries"].setdefault(row, {}).setdefault(v, []).append(rec)
                m = rec["metrics"]
                log(f"report seed {seed} {row:>12} {v:>7} queries: NN {m['NN']:.3f} FT {m['FT']:.3f} ST {m['ST']:.3f}")
        save()
    result = save()
    print(json.dumps(result) if args.json else markdown({b: result[b] for b in BLOCKS if b in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
