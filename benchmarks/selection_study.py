"""Which round to keep? Round-selection criteria against photo-to-shape retrieval on the tuning splits.

    python benchmarks/selection_study.py [--rows FTSPL,source_only] [--seeds 0,1,2,3,4] [--metric FT]
        [--work DIR] [--data-root DIR] [--bench full|folders] [--out FILE] [--quick] [--json]

Every run is one row at its defaults (TrainConfig, the row's preset and tuned values:
``studylib.train_config``), head mode, on one tuning seed's build (:mod:`ftspl.data.protocol`:
refused on a report seed or a build whose manifest says otherwise). It trains on the source
photos and the unlabelled target shapes, as every tuning cell does, and its ``queries`` are the
build's val photos (held-out source models) with ``queries_shapes`` = the val gallery (the
source models' meshes), so every round (the warm-up included) records

* ``reference`` - the val photos ranking the labelled val gallery with that round's served
  network: what a tuning cell scores (never the reported target gallery);
* ``val`` - what a user has: validation photos carved from the source, scored by
  :mod:`ftspl.train.validation` (retrieving the source photos: FT, and nearest-centroid accuracy);
* ``unsup`` - label-free criteria (:mod:`ftspl.train.unsupervised`): SND, the entropy and the
  margin of the target shapes against the source centroids.

For each criterion (:data:`CRITERIA`) and run: the Spearman correlation of the criterion with the
reference over the run's rounds, and the regret of the round it keeps (the reference of the best
round minus that of the kept one). The rule (:data:`RULE`): the criterion with the lowest mean
regret over every run (rows x seeds) wins; criteria within :data:`TIE` of the lowest tie, and a tie
goes to the shipped criterion (:func:`ftspl.train.validation.rank_key`). Writes
``benchmarks/results/selection.json``: every run with its rounds, the seeds, the rule, the winner.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from common import RESULTS, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result

quiet_openmp()
log = logger("selection")

TIE = 0.001  #: mean regrets closer than this tie (the precision the tables print)
SHIPPED = "val FT, acc"  #: the criterion training keeps its round by (ftspl.train.validation.rank_key)
RULE = (f"lowest mean regret (reference of the best round minus that of the kept round) over every run; "
        f"criteria within {TIE} of the lowest tie, and a tie goes to the shipped criterion ({SHIPPED!r})")


def _shipped(r: dict):
    from ftspl.train.validation import rank_key

    return rank_key(r["val"]) if r.get("val") else None


#: criterion -> (its value in a round record, None when the round has none; +1 when higher is better)
CRITERIA = {
    SHIPPED: (_shipped, +1),
    "val acc, FT": (lambda r: (r["val"]["acc"], r["val"]["FT"]) if r.get("val") else None, +1),
    "snd": (lambda r: r.get("unsup", {}).get("snd"), +1),
    "centroid_entropy": (lambda r: r.get("unsup", {}).get("centroid_entropy"), -1),
    "centroid_margin": (lambda r: r.get("unsup", {}).get("centroid_margin"), +1),
    "last round": (lambda r: r["round"], +1),
}


def _ranks(values: list) -> np.ndarray:
    """Ranks from 0 (tuples compare lexicographically), ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    r = np.empty(len(values))
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            r[k] = (i + j) / 2
        i = j + 1
    return r


def spearman(a: list, b: list) -> float | None:
    """Rank correlation of two equally long lists (average ranks for ties); None when either is constant."""
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def pick(rounds: list[dict], read, sign: int) -> dict | None:
    """The round a criterion keeps (the earliest on ties, as training's ``best_round``); None when no round has it."""
    best = None
    for r in rounds:
        v = read(r)
        if v is None:
            continue
        if best is None or (v > best[0] if sign > 0 else v < best[0]):
            best = (v, r)
    return None if best is None else best[1]


def study_run(rounds: list[dict], metric: str = "FT") -> dict:
    """Per criterion: the kept round, its regret against the best round's reference, and the Spearman
    correlation of the criterion with the reference over the rounds that have both."""
    ref = {r["round"]: r["reference"][metric] for r in rounds}
    best = max(ref.values())
    out = {}
    for name, (read, sign) in CRITERIA.items():
        chosen = pick(rounds, read, sign)
        if chosen is None:
            continue
        have = [r for r in rounds if read(r) is not None]
        vals = [read(r) for r in have]
        rho = spearman(vals if sign > 0 else [-v for v in vals], [ref[r["round"]] for r in have])
        out[name] = {"round": chosen["round"], "regret": round(best - ref[chosen["round"]], 4),
                     "spearman": None if rho is None else round(rho, 3)}
    return out


def summarise(runs: dict[str, dict]) -> dict:
    """Per criterion over the runs: how many, mean and max regret, mean Spearman, the rounds kept."""
    out = {}
    for name in CRITERIA:
        got = [r[name] for r in runs.values() if name in r]
        if not got:
            continue
        rhos = [g["spearman"] for g in got if g["spearman"] is not None]
        out[name] = {"runs": len(got), "mean_regret": round(float(np.mean([g["regret"] for g in got])), 4),
                     "max_regret": round(float(np.max([g["regret"] for g in got])), 4),
                     "mean_spearman": round(float(np.mean(rhos)), 3) if rhos else None,
                     "rounds_kept": [g["round"] for g in got]}
    return out


def decide(summary: dict) -> str:
    """The criterion :data:`RULE` chooses (criteria absent from every run are not candidates)."""
    low = min(s["mean_regret"] for s in summary.values())
    tied = [n for n, s in summary.items() if s["mean_regret"] - low < TIE]
    return SHIPPED if SHIPPED in tied else tied[0]


def run_rounds(row: str, split, fields: dict | None, work: Path) -> dict:
    """Train ``row`` on ``split`` with the reference recorded every round (cached under ``work``)."""
    from ftspl.train.loop import train
    from studylib import cell_key, train_config

    photos, gallery = split.scored("tune")  # refused unless the build gives them the tuning role
    cfg = replace(train_config(row, split, fields), queries=str(photos), queries_shapes=str(gallery))
    key = cell_key(row, cfg, "tune")
    folder = work / f"seed{split.seed}" / "selection"
    done = folder / f"{row}-{key}.json"
    if done.exists():
        return json.loads(done.read_text())
    run_dir = folder / f"run-{row}-{key}"
    if run_dir.exists():  # a run killed before its result was written: start again
        shutil.rmtree(run_dir)
    t0 = time.perf_counter()
    res = train(replace(cfg, out=str(run_dir)), home=study_home())
    info = json.loads((run_dir / "run.json").read_text())
    keep = ("round", "reference", "reference_on", "val", "unsup")
    out = {"row": row, "seed": split.seed, "fields": fields or {}, "key": key,
           "seconds": round(time.perf_counter() - t0, 1), "kept_round": info["selection"]["best_round"],
           "rounds": [{k: r[k] for k in keep if k in r} for r in res.rounds]}
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(out))
    return out


def tuning_cell_ft(row: str, split, fields: dict | None, work: Path) -> float | None:
    """The val FT the tuning cell of the same config scored (``studylib.run_cell``'s cache), when it is cached:
    the served network of the kept round, so it must equal the kept round's reference."""
    from studylib import cell_key, train_config

    path = work / f"seed{split.seed}" / "tune" / f"{row}-{cell_key(row, train_config(row, split, fields), 'tune')}.json"
    return json.loads(path.read_text())["metrics"]["FT"] if path.exists() else None


def table(summary: dict, winner: str) -> str:
    lines = [f"{'criterion':<18} {'mean regret':>11} {'max regret':>10} {'mean Spearman':>13}"]
    for name, s in summary.items():
        mark = "  <- winner" + (" (shipped)" if name == SHIPPED else "") if name == winner else ""
        lines.append(f"{name:<18} {s['mean_regret']:>11.4f} {s['max_regret']:>10.4f} "
                     f"{str(s['mean_spearman']):>13}{mark}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="FTSPL,source_only", help="trained rows (presets) whose rounds are studied")
    ap.add_argument("--seeds", default=None, help="tuning seeds (default: ftspl.data.protocol.TUNE_SEEDS)")
    ap.add_argument("--metric", default="FT", help="the reference metric of each round (FT, NN, ST, DCG)")
    ap.add_argument("--work", type=Path, default=None, help="per-run results (default: <home>/cache/study)")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--bench", default="full", choices=("small", "full", "folders"),
                    help="folders: --data-root holds s<SEED>/ builds (source, val, val_gallery, queries, target, manifest)")
    ap.add_argument("--quick", action="store_true", help="a tiny training budget (smoke test, not a choice)")
    ap.add_argument("--out", type=Path, default=RESULTS / "selection.json")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from protocollib import tuning_seeds
    from ftspl.engine.errors import UsageError
    from ftspl.train.config import PRESETS
    from studylib import QUICK, build_split, folder_split

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in PRESETS]
    if bad:
        sys.exit(f"--rows: unknown {', '.join(bad)}; valid: {', '.join(PRESETS)}")
    if args.metric not in ("FT", "NN", "ST", "DCG"):
        sys.exit(f"--metric: unknown {args.metric}; valid: FT, NN, ST, DCG")
    seeds = tuning_seeds(args.seeds or None)
    home = study_home()
    work = (args.work or home.cache / "study").resolve()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    if args.bench == "folders":  # existing builds: refuse one of the wrong role before anything heavy loads
        for seed in seeds:
            try:
                folder_split(data_root / f"s{seed}", seed).scored("tune")
            except UsageError as exc:
                sys.exit(str(exc))
    fields = dict(QUICK) if args.quick else None
    load_torch_before_mesa()
    t0 = time.perf_counter()
    runs, studied = [], {}
    for seed in seeds:
        split = build_split(seed, data_root, args.bench)
        for row in rows:
            try:
                rec = run_rounds(row, split, fields, work)
            except UsageError as exc:
                sys.exit(str(exc))
            rec["tuning_cell_FT"] = tuning_cell_ft(row, split, fields, work)
            studied[f"seed{seed}/{row}"] = rec["criteria"] = study_run(rec["rounds"], args.metric)
            runs.append(rec)
            log(f"seed {seed} {row}: reference {args.metric} per round "
                f"{[r['reference'][args.metric] for r in rec['rounds']]}, kept round {rec['kept_round']}")
    summary = summarise(studied)
    winner = decide(summary)
    config = {"rows": rows, "seeds": seeds, "metric": args.metric, "fields": fields or {}, "mode": "head",
              "bench": args.bench}
    record = result_record("selection_study.py", argv, config, seconds=round(time.perf_counter() - t0, 1),
                           reference="val photos (held-out source models) ranking the val gallery (the source "
                           "models' meshes) with each round's served network; ftspl.data.protocol",
                           rule=RULE, shipped=SHIPPED, winner=winner, summary=summary, runs=runs)
    if str(args.out) != "none":
        write_result(args.out, record)
    if args.json:
        print(json.dumps({"winner": winner, "shipped": SHIPPED, "summary": summary}))
    else:
        print(f"{len(runs)} runs; reference: val photos ranking the val gallery, {args.metric}; rule: {RULE}")
        print(table(summary, winner))
    return 0


if __name__ == "__main__":
    sys.exit(main())
