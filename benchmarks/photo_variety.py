"""What each kind of photo-domain variety adds: the SH3D benchmark rebuilt with one variety at a time.

    python benchmarks/photo_variety.py [--seeds 0,1] [--varieties base,clutter,materials,camera,more_renders,all]
                                       [--rows source_only,FTSPL] [--queries auto|NAME|none]
                                       [--data-root DIR] [--work DIR] [--out FILE] [--json]

Per seed, the ``full`` benchmark is built once with base settings (``<data-root>/base-s<seed>``,
hard-linked from ``<home>/cache/quality-data/data-full-s<seed>`` when that build has the same
config), then once per variety of ``ftspl.data.variety.PHOTO_VARIETY``
(``<data-root>/<variety>-s<seed>``): the same split, the same gallery meshes and the same val
and query photos (hard-linked from the base build, and checked byte for byte by a digest);
only the labelled source photos the model trains on are rendered again with the variety.

Every row is ``ftspl.train.loop.train`` with ``TrainConfig``'s defaults and the row's preset in
head mode (``benchmarks/quality.py``'s ``run_row``), scored on the **val** photos (held-out
source models) against the whole target gallery. The variety with the best mean FTSPL val FT
over the seeds, base aside (``--queries auto``), and ``base`` are then scored on the query photos, once, as
they come out.

A second fixed test set, ``val_hard`` (on unless ``--no-hard-val``), stands in for messier real
photos: the same val models rendered once per seed with every variety knob of the ``all``
preset (clutter as real-image patches only, so no clutter object of a training photo
reappears), from a generator stream the training photos do not use; the same images for every
variety. It favours the varieties whose settings it shares; the val column does not.
Writes ``--out`` (default ``benchmarks/results/photo_variety.json``): per
variety and row the mean and sample std over seeds, the per-seed metrics, and the paired
per-seed differences to ``base`` (ANMRR as ``base - variety``, so positive is a gain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# quality sets OMP_WAIT_POLICY (spin-waiting OpenMP on 2 shared cores) before torch loads
from quality import ROOT, logger

METRICS = ("NN", "FT", "ST", "DCG", "ANMRR")
log = logger("variety")


def digest(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file under ``folder``."""
    h = hashlib.sha256()
    for p in sorted(q for q in folder.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(folder)).encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def build(variety: str, seed: int, data_root: Path, link: Path | None):
    """One variety's benchmark folder for ``seed`` (reused when already built with this config)."""
    from quality import study_home

    from ftspl.data.bench import BENCH_PRESETS, build_sh3d_benchmark
    from ftspl.data.variety import apply_variety
    from ftspl.engine.errors import UsageError

    cfg = apply_variety(replace(BENCH_PRESETS["full"], seed=seed), variety)
    out = data_root / f"{variety}-s{seed}"
    try:
        return build_sh3d_benchmark(out, study_home().debian_cache, cfg, link_from=link)
    except UsageError as exc:  # the quality-data build has another config: render everything here
        if variety != "base" or link is None:
            raise
        log(f"not linking: {exc}")
        return build_sh3d_benchmark(out, study_home().debian_cache, cfg)


def build_hard_val(seed: int, data_root: Path, base) -> Path:
    """``<data-root>/val-hard-s<seed>/val``: the base build's val models, rendered with the ``all``
    variety's photo knobs (patch clutter only), 4 renders each; reused when complete."""
    import numpy as np
    from quality import study_home

    from ftspl.data.backgrounds import fetch_backgrounds
    from ftspl.data.bench import BENCH_PRESETS, _load, _stable
    from ftspl.data.photo_domain import PhotoRenderer
    from ftspl.data.sh3d import all_models, fetch_sources
    from ftspl.data.variety import PHOTO_VARIETY
    from ftspl.engine.files import atomic_write_bytes

    out = data_root / f"val-hard-s{seed}" / "val"
    cfg = replace(BENCH_PRESETS["full"], seed=seed)
    photo = replace(cfg.photo, image_size=cfg.image_size, **PHOTO_VARIETY["all"]["photo"], clutter_object=0.0)
    models = {m.key: m for m in all_models()}
    todo = [(c, models[p.name.split("__")[0]]) for c in sorted(os.listdir(base.val))
            for p in sorted((base.val / c).glob("*__r0.jpg"))]
    cache = study_home().debian_cache
    missing = [(c, m) for c, m in todo if not all((out / c / f"{m.key}__r{k}.jpg").exists() for k in range(4))]
    if missing:
        pool, _ = fetch_backgrounds(cache)
        libdir = fetch_sources(cache)
        with PhotoRenderer(photo) as r:
            for c, m in missing:
                rng = np.random.default_rng([seed, _stable(m.key), 2])
                for k, data in enumerate(r.render(_load(libdir, m), rng, pool, n=4)):
                    atomic_write_bytes(out / c / f"{m.key}__r{k}.jpg", data)
    return out


def summarise(per: dict, varieties: list[str], rows: list[str]) -> dict:
    """{variety: {row: {"mean": {m: [mean, std]}, "vs_base": {m: [mean, std, n]}}}} over seeds."""
    import numpy as np

    out: dict = {}
    for v in varieties:
        for row in rows:
            seeds = [s for s in per.get(v, {}) if row in per[v][s]]
            if not seeds:
                continue
            rec = out.setdefault(v, {}).setdefault(row, {"seeds": seeds, "mean": {}, "vs_base": {}})
            for m in METRICS:
                a = np.asarray([per[v][s][row][m] for s in seeds])
                rec["mean"][m] = [round(float(a.mean()), 4), round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4)]
                paired = [s for s in seeds if row in per.get("base", {}).get(s, {})]
                if v != "base" and paired:
                    d = np.asarray([per[v][s][row][m] - per["base"][s][row][m] for s in paired])
                    d = -d if m == "ANMRR" else d
                    rec["vs_base"][m] = [round(float(d.mean()), 4),
                                         round(float(d.std(ddof=1)) if len(d) > 1 else 0.0, 4), len(d)]
    return out


def markdown(summary: dict, split: str) -> str:
    lines = [f"| variety ({split}) | row | " + " | ".join(METRICS) + " | FT vs base (mean, std of paired diff) |",
             "|---|---|" + "---:|" * len(METRICS) + "---|"]
    for v, rows in summary.items():
        for row, rec in rows.items():
            cells = [f"{rec['mean'][m][0]:.3f} ± {rec['mean'][m][1]:.3f}" for m in METRICS]
            d = rec["vs_base"].get("FT")
            lines.append(f"| {v} | {row} | " + " | ".join(cells) + f" | {f'{d[0]:+.3f}, {d[1]:.3f}' if d else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ftspl.data.variety import PHOTO_VARIETY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--varieties", default=",".join(PHOTO_VARIETY))
    ap.add_argument("--rows", default="source_only,FTSPL")
    ap.add_argument("--queries", default="auto",
                    help="auto: the best variety but base on val (mean FTSPL FT); a name; none. Base runs too.")
    ap.add_argument("--data-root", type=Path, default=None, help="default: <home>/cache/variety-data")
    ap.add_argument("--work", type=Path, default=None, help="per-run results (default: <home>/cache/variety)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "photo_variety.json")
    ap.add_argument("--no-hard-val", action="store_true", help="skip the val_hard test set")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    varieties = [v.strip() for v in args.varieties.split(",") if v.strip()]
    bad = [v for v in varieties if v not in PHOTO_VARIETY]
    if bad:
        sys.exit(f"--varieties: unknown {', '.join(bad)}; valid: {', '.join(PHOTO_VARIETY)}")
    if "base" not in varieties:
        varieties.insert(0, "base")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]

    # Triton's LLVM must load before Mesa's (the photo renderer's EGL context); see quality.py.
    import importlib

    importlib.import_module("torch._dynamo")
    from quality import Split, StudyConfig, run_row, study_home

    cache = study_home().cache
    data_root = (args.data_root or cache / "variety-data").resolve()
    work = (args.work or cache / "variety").resolve()
    study = StudyConfig()
    per: dict = {"val": {}, "val_hard": {}, "queries": {}}
    hard: dict[int, Path] = {}
    info: dict = {}
    splits: dict = {}
    t0 = time.perf_counter()

    def save() -> dict:
        result = {
            "val": summarise(per["val"], varieties, rows),
            "val_hard": summarise(per["val_hard"], varieties, rows),
            "queries": summarise(per["queries"], varieties, rows),
            "per_seed": per,
            "builds": info,
            "config": {
                "seeds": seeds, "varieties": {v: PHOTO_VARIETY[v] for v in varieties}, "rows": rows,
                "study": study.__dict__, "data": "BENCH_PRESETS['full'] + apply_variety (source photos only)",
                "scoring": "val (or query) photos vs the whole target gallery, MI3DOR scorer; std: sample std over "
                           "seeds; vs_base: paired per-seed differences (ANMRR as base - variety)",
                "minutes": round((time.perf_counter() - t0) / 60, 1),
            },
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        return result

    def run(v: str, seed: int, on: str) -> None:
        split = splits[(v, seed)]
        if on == "val":
            split = replace(split, queries=split.val)
        elif on == "val_hard":
            split = replace(split, queries=hard[seed])
        seed_dir = work / v / f"seed{seed}" / on  # run_row keeps one result per row and folder
        seed_dir.mkdir(parents=True, exist_ok=True)
        for row in rows:
            res = run_row(row, seed, split, study, seed_dir)
            per[on].setdefault(v, {}).setdefault(str(seed), {})[row] = {m: res["metrics"][m] for m in METRICS}
            m = res["metrics"]
            log(f"{on} seed {seed} {v:>12} {row:>12}: NN {m['NN']:.3f} FT {m['FT']:.3f} DCG {m['DCG']:.3f} "
                f"ANMRR {m['ANMRR']:.3f} ({res['seconds']:.0f}s)")
        save()

    for seed in seeds:
        for v in varieties:
            t = time.perf_counter()
            quality_build = cache / "quality-data" / f"data-full-s{seed}"
            link = (quality_build if quality_build.joinpath("manifest.json").exists() else None) if v == "base" \
                else data_root / f"base-s{seed}"
            s = build(v, seed, data_root, link)
            sums = {"val": digest(s.val), "queries": digest(s.queries)}
            if v == "base" and not args.no_hard_val:
                hard[seed] = build_hard_val(seed, data_root, s)
                info[f"val-hard-s{seed}"] = {"digest": digest(hard[seed])}
            if v != "base" and sums != info[f"base-s{seed}"]["digests"]:
                sys.exit(f"{s.root}: val/queries photos differ from the base build's; the comparison would be void")
            info[f"{v}-s{seed}"] = {"photos": s.photos, "counts": s.counts, "failed": s.failed, "digests": sums,
                                    "build_seconds": round(time.perf_counter() - t, 1)}
            splits[(v, seed)] = Split(s.source, s.queries, s.target, s.classes, s.counts, s.val, s.photos)
            log(f"seed {seed} {v}: {s.photos['source']} source photos, built in {time.perf_counter() - t:.0f}s")
            run(v, seed, "val")
            if seed in hard:
                run(v, seed, "val_hard")

    val = summarise(per["val"], varieties, rows)
    chosen = args.queries
    if chosen == "auto":
        ranked = sorted((rec["FTSPL"]["mean"]["FT"][0], v) for v, rec in val.items() if "FTSPL" in rec and v != "base")
        chosen = ranked[-1][1] if ranked else "none"
    if chosen != "none":
        for seed in seeds:
            for v in dict.fromkeys(["base", chosen]):
                run(v, seed, "queries")
    result = save()
    result["chosen_on_val"] = chosen
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    text = "\n".join(markdown(result[k], k) for k in ("val", "val_hard", "queries"))
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
