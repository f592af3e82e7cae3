"""What each kind of photo-domain variety adds: the SH3D benchmark rebuilt with one variety at a time.

    python benchmarks/photo_variety.py [--seeds 0,1] [--report-seeds 5,6]
                                       [--varieties base,clutter,materials,camera,more_renders,all]
                                       [--rows source_only,FTSPL] [--queries auto|NAME|none]
                                       [--data-root DIR] [--work DIR] [--out FILE] [--no-hard-val] [--json]

The choice (which source-photo variety to train on) is made on **tuning seeds**
(``--seeds``, :data:`ftspl.data.protocol.TUNE_SEEDS`), purpose ``tune``: each
variety's runs score the val photos (held-out source models) ranking the val
gallery (the source models' meshes), never the reported gallery. Per tuning
seed, the ``full`` benchmark is built once with base settings
(``<data-root>/base-s<seed>``, hard-linked from the study's build
``<home>/cache/quality-data/data-full-s<seed>`` when that has the same config),
then once per variety (``<data-root>/<variety>-s<seed>``, ``varietylib``): the
same split, the same gallery meshes and the same val and query photos
(hard-linked from the base build, checked byte for byte by a digest); only the
labelled source photos are rendered again with the variety.

Every row is ``studylib.run_cell``: ``TrainConfig``'s defaults and the row's
preset in head mode. ``val_hard`` (on unless ``--no-hard-val``) is a second
tuning set: the same val models rendered with every knob of the ``all`` preset
(clutter as real-image patches only) from a generator stream the training
photos do not use, scored by the network the val cell trained. It favours the
varieties whose settings it shares; the val column does not.

The rule (``--queries auto``): the variety other than ``base`` with the best
mean val FT of the ``FTSPL`` row (else the first row) over the tuning seeds;
cells within 0.001 FT tie, broken by the higher mean val NN, then by the order
of ``PHOTO_VARIETY``. That variety and ``base`` are then reported (purpose
``report``) on the **report seeds** (``--report-seeds``,
:data:`ftspl.data.protocol.REPORT_SEEDS`; ``none`` skips): query photos ranking
the target gallery, once, as they come out.

Writes ``--out`` (default ``benchmarks/results/photo_variety.json``): per block
(``val``, ``val_hard``, ``queries``), variety and row the mean and sample std
over seeds, the per-seed metrics, and the paired difference to ``base``
(``studylib.paired``: per-seed mean and std, and a 95% bootstrap interval over
query models; ANMRR as ``base - variety``, so positive is a gain).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import protocollib
from common import RESULTS, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result

quiet_openmp()
log = logger("variety")
SHOWN = ("NN", "FT", "ST", "DCG", "ANMRR")
TIE = 0.001
RULE = (f"the variety other than base with the best mean val FT of the chosen row over the tuning seeds; within "
        f"{TIE} FT a tie, broken by the higher mean val NN, then by PHOTO_VARIETY's order")


def summarise(results: dict, rows: list[str]) -> dict:
    """``results[variety][row]`` (run_cell records, one per seed) -> {variety: {row: seeds, mean, vs_base}}."""
    from studylib import mean_std, paired

    out: dict = {}
    base = results.get("base", {})
    for v, by_row in results.items():
        for row in rows:
            recs = by_row.get(row) or []
            if not recs:
                continue
            rec = {"seeds": [r["seed"] for r in recs], "mean": mean_std(recs)}
            if v != "base" and base.get(row):
                rec["vs_base"] = paired(recs, base[row])
            out.setdefault(v, {})[row] = rec
    return out


def choose(val: dict, row: str, order: list[str]) -> str:
    """The rule (:data:`RULE`) over a ``val`` summary; ``none`` when no variety but base has the row."""
    cand = [(v, rec[row]["mean"]) for v, rec in val.items() if v != "base" and row in rec]
    if not cand:
        return "none"
    best = max(m["FT"][0] for _, m in cand)
    tied = [(v, m) for v, m in cand if best - m["FT"][0] < TIE]
    return max(tied, key=lambda vm: (vm[1]["NN"][0], -order.index(vm[0])))[0]


def markdown(summary: dict, block: str) -> str:
    from studylib import ci, pm

    lines = [f"| variety ({block}) | row | " + " | ".join(SHOWN) + " | FT vs base [95% interval] |",
             "|---|---|" + "---:|" * len(SHOWN) + "---|"]
    for v, rows in summary.items():
        for row, rec in rows.items():
            cells = [pm(rec["mean"][m]) for m in SHOWN]
            d = rec.get("vs_base", {}).get("FT")
            diff = ci(d) if d else "-"
            lines.append(f"| {v} | {row} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from ftspl.data.variety import PHOTO_VARIETY

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1", help="tuning seeds the choice is made on (purpose tune)")
    ap.add_argument("--report-seeds", default="5,6", help="report seeds for base and the chosen variety; none: skip")
    ap.add_argument("--varieties", default=",".join(PHOTO_VARIETY))
    ap.add_argument("--rows", default="source_only,FTSPL")
    ap.add_argument("--queries", default="auto",
                    help="auto: the rule's variety (see above); a variety name; none. base is reported beside it.")
    ap.add_argument("--data-root", type=Path, default=None, help="variety builds (default: <home>/cache/variety-data)")
    ap.add_argument("--study-data", type=Path, default=None,
                    help="the study's builds to link base from (default: <home>/cache/quality-data)")
    ap.add_argument("--work", type=Path, default=None, help="per-cell results (default: <home>/cache/variety)")
    ap.add_argument("--out", type=Path, default=RESULTS / "photo_variety.json")
    ap.add_argument("--no-hard-val", action="store_true", help="skip the val_hard tuning set")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    varieties = [v.strip() for v in args.varieties.split(",") if v.strip()]
    bad = [v for v in varieties if v not in PHOTO_VARIETY]
    if bad:
        sys.exit(f"--varieties: unknown {', '.join(bad)}; valid: {', '.join(PHOTO_VARIETY)}")
    if "base" not in varieties:
        varieties.insert(0, "base")
    if args.queries not in ("auto", "none", *PHOTO_VARIETY):
        sys.exit(f"--queries: auto, none or one of {', '.join(PHOTO_VARIETY)}")
    seeds = protocollib.tuning_seeds(args.seeds)
    report_seeds = protocollib.report_seeds(args.report_seeds)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    load_torch_before_mesa()
    return run_study(args, argv, varieties, seeds, report_seeds, rows)


def run_study(args, argv, varieties: list[str], seeds: list[int], report_seeds: list[int], rows: list[str]) -> int:
    import studylib
    import varietylib

    from ftspl.data.variety import PHOTO_VARIETY

    cache = study_home().cache
    data_root = (args.data_root or cache / "variety-data").resolve()
    study_data = (args.study_data or cache / "quality-data").resolve()
    work = (args.work or cache / "variety").resolve()
    blocks: dict[str, dict] = {"val": {}, "val_hard": {}, "queries": {}}
    info: dict = {}
    t0 = time.perf_counter()
    choice_row = "FTSPL" if "FTSPL" in rows else rows[0]
    chosen: str | None = None

    def summary() -> dict:
        return {b: summarise(res, rows) for b, res in blocks.items()}

    def save() -> dict:
        s = summary()
        record = result_record("photo_variety.py", argv, {
            "seeds": seeds, "report_seeds": report_seeds, "varieties": {v: PHOTO_VARIETY[v] for v in varieties},
            "rows": rows, "training": "TrainConfig defaults and each row's preset, head mode (studylib.run_cell)",
            "data": "BENCH_PRESETS['full'] + apply_variety (source photos only)",
            "scoring": {"val": "tune: val photos vs the val gallery (source models' meshes), tuning seeds",
                        "val_hard": "tune: the val models with every 'all' knob vs the val gallery, tuning seeds",
                        "queries": "report: query photos vs the target gallery, report seeds"},
            "uncertainty": "mean: [mean, sample std] over seeds; vs_base: studylib.paired (bootstrap over query models)",
            "rule": RULE, "choice_row": choice_row, "minutes": round((time.perf_counter() - t0) / 60, 1)},
            **s, chosen_on_val=chosen,
            per_seed={b: {v: {row: {str(r["seed"]): {m: r["metrics"][m] for m in SHOWN} for r in recs}
                                 for row, recs in by_row.items()} for v, by_row in res.items()}
                         for b, res in blocks.items()},
            builds=info)
        write_result(args.out, record)
        return record

    def build(v: str, seed: int):
        t = time.perf_counter()
        link = varietylib.base_link(seed, study_data) if v == "base" else data_root / f"base-s{seed}"
        s = varietylib.build_variety(v, seed, data_root, link)
        sums = {"val": varietylib.digest(s.val), "queries": varietylib.digest(s.queries)}
        if v != "base" and sums != info[f"base-s{seed}"]["digests"]:
            sys.exit(f"{s.root}: val/queries photos differ from the base build's; the comparison would be void")
        info[f"{v}-s{seed}"] = {"photos": s.photos, "counts": s.counts, "failed": s.failed, "digests": sums,
                                "build_seconds": round(time.perf_counter() - t, 1)}
        log(f"seed {seed} {v}: {s.photos['source']} source photos, built in {time.perf_counter() - t:.0f}s")
        return s

    def keep(block: str, v: str, row: str, rec: dict) -> None:
        blocks[block].setdefault(v, {}).setdefault(row, []).append(rec)
        m = rec["metrics"]
        log(f"{block} seed {rec['seed']} {v:>12} {row:>12}: NN {m['NN']:.3f} FT {m['FT']:.3f} ST {m['ST']:.3f}")

    for seed in seeds:  # the choice: purpose tune, tuning seeds only
        hard = None
        for v in varieties:
            s = build(v, seed)
            split = varietylib.as_split(seed, s)
            if v == "base" and not args.no_hard_val:
                hard = varietylib.build_hard_val(seed, data_root, s)
                info[f"val-hard-s{seed}"] = {"digest": varietylib.digest(hard)}
            for row in rows:
                keep("val", v, row, studylib.run_cell(row, split, "tune", None, work))
                if hard is not None:
                    keep("val_hard", v, row,
                         varietylib.score_trained_cell(row, split, "tune", None, work, hard, "val_hard"))
            save()

    val = summarise(blocks["val"], rows)
    chosen = choose(val, choice_row, list(PHOTO_VARIETY)) if args.queries == "auto" else args.queries
    log(f"chosen on val ({choice_row}): {chosen}")
    if chosen != "none":
        for seed in report_seeds:  # reported once, as it comes out
            for v in dict.fromkeys(["base", chosen]):
                split = varietylib.as_split(seed, build(v, seed))
                for row in rows:
                    keep("queries", v, row, studylib.run_cell(row, split, "report", None, work))
    result = save()
    text = "\n".join(markdown(result[b], b) for b in ("val", "val_hard", "queries")) + f"\nchosen on val: {chosen}\n"
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
