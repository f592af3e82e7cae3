"""Partial fine-tuning (``--mode partial``) beside head mode: the tail's settings on val, then the report.

    python benchmarks/partial_study.py tail [--seeds 0,1] [--train-blocks 1] [--cells 0.1-frozen,0.1-train,1.0-frozen]
    python benchmarks/partial_study.py report [--seeds 5,6,7] [--train-blocks 1]
                                      [--rows CNN,source_only,FTSPL,source_only_partial,FTSPL_partial]
    common options: [--bench full] [--work DIR] [--data-root DIR] [--out FILE] [--json]

Every cell is ``studylib.run_cell``: ``TrainConfig``'s defaults and the row's
preset; a ``*_partial`` row is its preset with ``mode="partial"`` and the tail
settings (``train_blocks``, ``backbone_lr_mult``: the tail's learning rate as a
multiple of ``lr``, ``tail_bn``), all part of the cell's key.

* ``tail`` (purpose ``tune``, tuning seeds, :mod:`ftspl.data.protocol`): FTSPL
  in head mode and FTSPL in partial mode at each tail setting of ``--cells``
  (``LR_MULT-BN``), val photos ranking the val gallery. The rule: the best mean
  val FT; within 0.001 a tie, broken by the higher mean val NN, then by the
  order of ``--cells`` (the default setting first). Writes
  ``benchmarks/results/partial_tail_val.json``.
* ``report`` (purpose ``report``, report seeds): the rows, query photos ranking
  the target gallery, with seconds per round; paired differences of each
  partial row against its head row, ``source_only`` and ``CNN``
  (``studylib.paired``: per-seed mean and std, 95% bootstrap over query models).
  Writes ``benchmarks/results/partial_mode.json``.

The result files carry the command, date, git state and config. Partial mode
is slow on a CPU (a round is 20-40x a head round): run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result
from studylib import RULE, pick

quiet_openmp()
log = logger("partial")
PARTIAL = "_partial"
SHOWN = ("NN", "FT", "ST", "DCG", "ANMRR")
TAIL_GRID = ("0.1-frozen", "0.1-train", "1.0-frozen")  #: the tail stage's settings (LR_MULT-BN)


def tail_fields(train_blocks: int, lr_mult: float, tail_bn: str) -> dict:
    """The TrainConfig fields of a partial cell."""
    return {"mode": "partial", "train_blocks": train_blocks, "backbone_lr_mult": lr_mult, "tail_bn": tail_bn}


def parse_cell(text: str) -> tuple[float, str]:
    """``0.1-frozen`` -> (0.1, "frozen")."""
    mult, _, bn = text.partition("-")
    if bn not in ("frozen", "train"):
        sys.exit(f"--cells {text}: expected LR_MULT-frozen or LR_MULT-train")
    return float(mult), bn


def row_cell(row: str, train_blocks: int, lr_mult: float, tail_bn: str) -> tuple[str, dict | None]:
    """(preset, fields) of a study row: ``X_partial`` is preset X in partial mode, else the row as it is."""
    if row.endswith(PARTIAL):
        return row[: -len(PARTIAL)], tail_fields(train_blocks, lr_mult, tail_bn)
    return row, None


def seconds_per_round(recs: list[dict]) -> dict:
    """Per seed: the seconds of every round, and their mean over rounds 1..L (round 0 is the warm-up)."""
    out = {}
    for r in recs:
        s = [x for x in (r.get("seconds_per_round") or []) if x is not None]
        out[str(r["seed"])] = {"per_round": s, "mean_1_to_L": round(sum(s[1:]) / len(s[1:]), 1) if len(s) > 1 else None}
    return out


def tail_stage(args, splits: list, work: Path) -> dict:
    import studylib

    head = [studylib.run_cell("FTSPL", s, "tune", None, work) for s in splits]
    cells = []
    for i, text in enumerate(args.cells.split(",")):
        mult, bn = parse_cell(text.strip())
        fields = tail_fields(args.train_blocks, mult, bn)
        recs = [studylib.run_cell("FTSPL", s, "tune", fields, work) for s in splits]
        cells.append({"order": i, "label": text.strip(), "fields": fields, "mean": studylib.mean_std(recs),
                      "per_seed": {str(r["seed"]): {m: r["metrics"][m] for m in SHOWN} for r in recs},
                      "vs_head": studylib.paired(recs, head), "seconds_per_round": seconds_per_round(recs),
                      "selection": {str(r["seed"]): r.get("selection") for r in recs}})
    win = pick(cells)
    return {"head": {"mean": studylib.mean_std(head),
                     "per_seed": {str(r["seed"]): {m: r["metrics"][m] for m in SHOWN} for r in head},
                     "seconds_per_round": seconds_per_round(head)},
            "cells": cells, "rule": RULE,
            "winner": {"label": win["label"], "fields": win["fields"], "FT": win["mean"]["FT"], "NN": win["mean"]["NN"]}}


def report_stage(args, splits: list, work: Path) -> dict:
    import studylib

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    mult, bn = args.tail_lr_mult, args.tail_bn
    results = {}
    for row in rows:
        preset, fields = row_cell(row, args.train_blocks, mult, bn)
        results[row] = [studylib.run_cell(preset, s, "report", fields, work) for s in splits]
    pairs: dict = {}
    for row in (r for r in rows if r.endswith(PARTIAL)):
        for ref in dict.fromkeys([row[: -len(PARTIAL)], "source_only", "CNN"]):
            if ref in results and ref != row:
                pairs.setdefault(row, {})[ref] = studylib.paired(results[row], results[ref])
    return {"rows": {r: studylib.mean_std(v) for r, v in results.items()}, "paired": pairs,
            "per_seed": {r: {str(x["seed"]): {m: x["metrics"][m] for m in SHOWN} for x in v} for r, v in results.items()},
            "seconds_per_round": {r: seconds_per_round(v) for r, v in results.items() if r not in ("CNN", "CNN_centred")},
            "pseudo_acc": {r: {str(x["seed"]): x.get("pseudo_acc_per_round") for x in v} for r, v in results.items()
                           if any(x.get("pseudo_acc_per_round") for x in v)}}


def main(argv: list[str] | None = None) -> int:
    from ftspl.train.config import TrainConfig
    from protocollib import report_seeds, tuning_seeds

    d = TrainConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=("tail", "report"))
    ap.add_argument("--seeds", default=None, help="default: tail 0,1 (tuning seeds); report 5,6,7 (report seeds)")
    ap.add_argument("--train-blocks", type=int, default=d.train_blocks, help="K: the backbone steps the tail trains")
    default_cell = f"{d.backbone_lr_mult}-{d.tail_bn}"
    grid = [default_cell] + [c for c in TAIL_GRID if c != default_cell]
    ap.add_argument("--cells", default=",".join(grid), help="tail: LR_MULT-BN settings (the default first)")
    ap.add_argument("--tail-lr-mult", type=float, default=d.backbone_lr_mult, help="report: the partial rows' tail lr x")
    ap.add_argument("--tail-bn", default=d.tail_bn, choices=("frozen", "train"), help="report: the tail's BatchNorm")
    ap.add_argument("--rows", default="CNN,source_only,FTSPL,source_only_partial,FTSPL_partial", help="report rows")
    ap.add_argument("--bench", default="full", choices=("small", "full", "folders"))
    ap.add_argument("--work", type=Path, default=None, help="per-cell results (default: <home>/cache/study)")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: benchmarks/results/partial_tail_val.json (tail), partial_mode.json (report)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    purpose = "tune" if args.stage == "tail" else "report"
    seeds = tuning_seeds(args.seeds or "0,1") if purpose == "tune" else report_seeds(args.seeds or "5,6,7", "--seeds")
    if args.stage == "tail":
        [parse_cell(c.strip()) for c in args.cells.split(",")]
    home = study_home()
    work = (args.work or home.cache / "study").resolve()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    load_torch_before_mesa()
    from studylib import build_split

    splits = [build_split(s, data_root, args.bench) for s in seeds]
    res = tail_stage(args, splits, work) if args.stage == "tail" else report_stage(args, splits, work)
    config = {"stage": args.stage, "purpose": purpose, "seeds": seeds, "train_blocks": args.train_blocks,
              "bench": args.bench, "training": "TrainConfig defaults and each row's preset (studylib.run_cell)",
              **({"cells": args.cells} if args.stage == "tail" else
                 {"rows": args.rows, "tail_lr_mult": args.tail_lr_mult, "tail_bn": args.tail_bn}),
              "scoring": ("val photos vs the val gallery" if purpose == "tune" else "query photos vs the target gallery")}
    record = result_record("partial_study.py", argv, config, **res)
    out = args.out or RESULTS / ("partial_tail_val.json" if args.stage == "tail" else "partial_mode.json")
    write_result(out, record)
    log(f"wrote {out}")
    print(json.dumps(record) if args.json else json.dumps(record.get("winner") or record["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
