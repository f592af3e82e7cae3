"""Grey or coloured gallery views (``TrainConfig.look``): CNN, source_only and FTSPL with each look.

    python benchmarks/looks.py [--seeds 0,1] [--rows CNN,source_only,FTSPL] [--real DIR] [--cost N]
                               [--report-seeds 5,6,7,8,9|none] [--json]

Per tuning seed (:data:`ftspl.data.protocol.TUNE_SEEDS`; a report seed is refused)
and per look (``grey``: one grey material; ``materials``: each shape's own MTL
colours and textures), every row is trained in head mode with TrainConfig's
defaults and its preset's tuned settings plus ``look`` (``studylib.run_cell``,
purpose ``tune``): the look decides the target views it trains on and the val
gallery views it is scored on. The val photos (held-out source models) rank the
val gallery (the source models' meshes). Grey cells are the tuning study's
own cells (their cache key leaves out ``look: grey``), so they cost nothing when
``benchmarks/tune.py`` already ran.

The same networks then rank each seed's target gallery (152 meshes) with the
real development photos (``--real``, ``labels.csv``; interior scenes and object
photos apart): reported only, they choose nothing. ``--report-seeds`` adds the
benchmark's query photos ranking the target gallery on report seeds
(:data:`ftspl.data.protocol.REPORT_SEEDS`, purpose ``report``): every row
trained again per look on those seeds, reported only. Its materials cells are
``benchmarks/quality.py``'s own cells (the same cache key) while materials is
the default look.

The decision: :data:`studylib.RULE` on the FTSPL row (the product's default
pipeline): the look with the best mean val FT over the seeds, ties (< TIE)
to the higher mean val NN, then grey (no material files to read). ``--cost N``
also times rendering N val-gallery meshes in each look (alternated rounds;
one render process, as ``index add``).

Writes ``benchmarks/results/looks.json``; cells are cached under
``<home>/cache/study`` (shared with tune.py), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from common import RESULTS, ROOT, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result

quiet_openmp()
log = logger("looks")
REAL = ROOT.parent / "shared" / "data" / "real_photos"
LOOKS = ("grey", "materials")
ROWS = ("CNN", "source_only", "FTSPL")
DECIDING_ROW = "FTSPL"


def cells(rows: list[str], seeds: list[int], data_root: Path, work: Path, real: Path | None) -> tuple[dict, dict]:
    """({row: {look: [val cell per seed]}}, {kind: {row: {look: [real-photo cell per seed]}}})."""
    from studylib import build_split, real_photo_cell, real_photo_sets, run_cell

    val: dict = {r: {lk: [] for lk in LOOKS} for r in rows}
    on_real: dict = {}
    for seed in seeds:
        split = build_split(seed, data_root)
        split.scored("tune")  # refuses a build whose manifest does not make val a tuning split
        sets = real_photo_sets(real, split.classes, work / "real-photos-looks" / f"seed{seed}") if real else {}
        for row in rows:
            for look in LOOKS:
                fields = {"look": look}
                val[row][look].append(run_cell(row, split, "tune", fields, work))
                for kind, folder in sets.items():
                    if not folder.exists():
                        continue
                    res = real_photo_cell(row, split, folder, work, fields, purpose="tune")
                    on_real.setdefault(kind, {}).setdefault(row, {}).setdefault(look, []).append(res)
                    m = res["metrics"]
                    log(f"seed {seed} {row} {look} real {kind} ({res['n_query']}): NN {m['NN']:.3f} FT {m['FT']:.3f}")
    return val, on_real


def report(rows: list[str], seeds: list[int], data_root: Path, work: Path) -> dict:
    """{row: summary} of the report seeds: each row and look trained on the seed's source photos, its query
    photos ranking its target gallery (purpose ``report``). Reported only."""
    from studylib import build_split, run_cell

    by_row: dict = {r: {lk: [] for lk in LOOKS} for r in rows}
    for seed in seeds:
        split = build_split(seed, data_root)
        split.scored("report")  # refuses a build whose manifest does not make queries a report split
        for row in rows:
            for look in LOOKS:
                cell = run_cell(row, split, "report", {"look": look}, work)
                by_row[row][look].append(cell)
                m = cell["metrics"]
                log(f"report seed {seed} {row} {look} queries ({cell['n_query']}): NN {m['NN']:.3f} FT {m['FT']:.3f}")
    return {row: summary(by_look) for row, by_look in by_row.items()}


def summary(by_look: dict) -> dict:
    """Per look: mean and std over seeds, per-seed metrics; then materials minus grey, paired per query."""
    from studylib import mean_std, paired

    out = {look: {"mean": mean_std(v), "per_seed": {str(c["seed"]): c["metrics"] for c in v},
                  "n_query": v[0]["n_query"]} for look, v in by_look.items() if v}
    if all(by_look.get(lk) for lk in LOOKS):
        out["materials_minus_grey"] = paired(by_look["materials"], by_look["grey"])
    return out


def decide(val: dict) -> dict:
    """:data:`studylib.RULE` over the looks of :data:`DECIDING_ROW` (grey first: the cheaper order)."""
    from studylib import RULE, mean_std, pick

    options = [{"look": lk, "mean": mean_std(val[DECIDING_ROW][lk]), "order": i} for i, lk in enumerate(LOOKS)]
    best = pick(options)
    return {"look": best["look"], "row": DECIDING_ROW, "rule": RULE,
            "val_FT": {o["look"]: o["mean"]["FT"][0] for o in options},
            "val_NN": {o["look"]: o["mean"]["NN"][0] for o in options}}


def render_cost(split_gallery: Path, n: int, rounds: int = 3) -> dict:
    """Milliseconds per mesh to load and render ``n`` meshes in each look (one render process, alternated)."""
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.scan import scan
    from ftspl.engine.rendering.worker import RenderJob, RenderWorker

    jobs = [RenderJob(s.path, s.kind) for s in scan(split_gallery, "top")[:n]]
    times: dict[str, list[float]] = {lk: [] for lk in LOOKS}
    for _ in range(rounds):
        for look in LOOKS:
            with RenderWorker(RenderSpec().with_look(look)) as worker:
                list(worker.map(jobs[:1]))  # start-up and the first GL context out of the timing
                t0 = time.perf_counter()
                failed = sum(r.error is not None for r in worker.map(jobs))
                times[look].append((time.perf_counter() - t0) * 1000 / len(jobs))
            if failed:
                log(f"render cost: {failed} of {len(jobs)} meshes failed in the {look} look")
    out = {lk: {"ms_per_mesh": [round(t, 1) for t in v], "median": round(statistics.median(v), 1)}
           for lk, v in times.items()}
    out["materials_over_grey"] = round(out["materials"]["median"] / out["grey"]["median"], 2)
    out["meshes"] = len(jobs)
    return out


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=_ints, default=[0, 1], help="tuning seeds (comma list)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"rows (comma list; {DECIDING_ROW} decides)")
    ap.add_argument("--real", type=Path, default=REAL, help="real photos (labels.csv: file,class); none: skip")
    ap.add_argument("--cost", type=int, default=30, help="meshes whose render time is measured per look (0: skip)")
    ap.add_argument("--report-seeds", default="none",
                    help="also report the benchmark queries vs the target gallery on these report seeds (none: skip)")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--work", type=Path, default=None, help="per-cell results (default: <home>/cache/study)")
    ap.add_argument("--out", default=str(RESULTS / "looks.json"), help="result file; none: print only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from protocollib import report_seeds, tuning_seeds
    from studylib import all_rows

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in all_rows()]
    if bad or DECIDING_ROW not in rows:
        sys.exit(f"--rows: unknown {', '.join(bad)}; valid: {', '.join(all_rows())} ({DECIDING_ROW} must be among them)"
                 if bad else f"--rows must include {DECIDING_ROW}, the row that decides")
    args.seeds = tuning_seeds(args.seeds)
    rseeds = report_seeds(args.report_seeds)
    real = None if str(args.real).lower() == "none" else args.real
    if real is not None and not (real / "labels.csv").exists():
        sys.exit(f"--real {real}: no labels.csv (pass --real none to skip the real photos)")
    home = study_home()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    work = (args.work or home.cache / "study").resolve()
    load_torch_before_mesa()
    t0 = time.perf_counter()
    val, on_real = cells(rows, args.seeds, data_root, work, real)
    res: dict = {
        "decision": decide(val),
        "val": {row: summary(by_look) for row, by_look in val.items()},
        "real": {kind: {row: summary(by_look) for row, by_look in by_row.items()} for kind, by_row in on_real.items()},
    }
    if args.cost:
        from studylib import build_split

        res["render_cost"] = render_cost(build_split(args.seeds[0], data_root).val_gallery, args.cost)
    if rseeds:
        res["report"] = report(rows, rseeds, data_root, work)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    config = {"seeds": args.seeds, "report_seeds": rseeds, "rows": rows, "real": str(real), "cost_meshes": args.cost,
              "data_root": str(data_root), "work": str(work), "nice": os.nice(0),
              "scoring": "val photos vs val_gallery (tune runs, head mode); real photos vs each seed's target "
                         "gallery with the same networks; report: each report seed's query photos vs its target gallery, "
                         "trained on that seed; L2-normalised embeddings, Euclidean"}
    record = result_record("looks.py", argv, config, **res)
    if args.out.lower() != "none":
        write_result(Path(args.out), record)
    print(json.dumps(record, indent=1) if args.json else json.dumps(res["decision"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
