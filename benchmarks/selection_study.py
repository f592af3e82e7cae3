"""Which round to keep? Label-free and labelled selection criteria against photo-to-shape retrieval.

    python benchmarks/selection_study.py --work DIR [--rows FTSPL,SPL,...] [--metric FT] [--json]

Reads the run folders ``DIR/seed*/run-ROW/metrics.json`` that ``benchmarks/quality.py
--eval-on val --work DIR`` leaves. Every round there records

* ``metrics`` - the research reference: the benchmark's *val* photos (held-out
  source models) ranking the labelled target gallery (a user has no such labels);
* ``val`` - the shipped criterion: validation photos carved from the source,
  classified by the nearest source-photo centroid (:mod:`ftspl.train.validation`);
* ``unsup`` - label-free criteria (:mod:`ftspl.train.unsupervised`): SND, the
  entropy and the margin of the target shapes against the source centroids.

For each criterion and run: the Spearman correlation of the criterion with the
reference metric over the run's rounds, and the regret of keeping the round the
criterion picks (reference metric of the best round minus that of the picked one).
"Last round" is the no-selection baseline. A criterion is worth adopting when
its mean regret is below the shipped one's on every seed set we measure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: criterion -> (how to read it from a round record, +1 when higher is better)
CRITERIA = {
    "val acc, FT": (lambda r: (r["val"]["acc"], r["val"]["FT"]) if r.get("val") else None, +1),
    "val FT, acc": (lambda r: (r["val"]["FT"], r["val"]["acc"]) if r.get("val") else None, +1),
    "snd": (lambda r: r.get("unsup", {}).get("snd"), +1),
    "centroid_entropy": (lambda r: r.get("unsup", {}).get("centroid_entropy"), -1),
    "centroid_margin": (lambda r: r.get("unsup", {}).get("centroid_margin"), +1),
    "last round": (lambda r: r["round"], +1),
}


def spearman(a: list, b: list) -> float | None:
    """Rank correlation (average ranks for ties); None when either side is constant."""
    def ranks(x: list) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for v in np.unique(x):  # average the ranks of ties
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def pick(rounds: list[dict], read, sign: int) -> dict | None:
    """The round the criterion prefers (the earliest on ties), None when no round has it."""
    scored = [(read(r), r) for r in rounds if read(r) is not None]
    if not scored:
        return None
    best = scored[0]
    for s, r in scored[1:]:
        if (s > best[0]) if sign > 0 else (s < best[0]):
            best = (s, r)
    return best[1]


def study_run(rounds: list[dict], metric: str) -> dict:
    ref = [r["metrics"][metric] for r in rounds]
    best = max(ref)
    out = {}
    for name, (read, sign) in CRITERIA.items():
        chosen = pick(rounds, read, sign)
        if chosen is None:
            continue
        vals = [read(r) for r in rounds]
        flat = [v[0] + 1e-3 * v[1] if isinstance(v, tuple) else v for v in vals]
        rho = spearman([sign * v for v in flat], ref) if None not in flat else None
        out[name] = {"round": chosen["round"], "regret": round(best - chosen["metrics"][metric], 4),
                     "spearman": None if rho is None else round(rho, 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a benchmarks/quality.py --eval-on val --work folder")
    ap.add_argument("--rows", default="FTSPL,SPL,FTSPL_global,FT", help="the rows whose runs are studied")
    ap.add_argument("--metric", default="FT", help="the reference metric of each round (FT, NN, ST, DCG)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    runs = {}
    for f in sorted(args.work.glob("seed*/run-*/metrics.json")):
        row = f.parent.name.removeprefix("run-")
        if row not in args.rows.split(","):
            continue
        rounds = [r for r in json.loads(f.read_text())["rounds"] if "metrics" in r]
        if len(rounds) >= 2:
            runs[f"{f.parent.parent.name}/{row}"] = study_run(rounds, args.metric)
    if not runs:
        raise SystemExit(f"{args.work}: no run folders with per-round metrics for rows {args.rows}")
    summary = {}
    for name in CRITERIA:
        got = [r[name] for r in runs.values() if name in r]
        rhos = [g["spearman"] for g in got if g["spearman"] is not None]
        summary[name] = {"runs": len(got), "mean_regret": round(float(np.mean([g["regret"] for g in got])), 4),
                         "max_regret": round(float(np.max([g["regret"] for g in got])), 4),
                         "mean_spearman": round(float(np.mean(rhos)), 3) if rhos else None}
    res = {"metric": args.metric, "work": str(args.work), "summary": summary, "runs": runs}
    if args.out:
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res))
        return
    print(f"{len(runs)} runs; reference: val photos vs the labelled target gallery, {args.metric}")
    print(f"{'criterion':<18} {'mean regret':>11} {'max regret':>10} {'mean Spearman':>13}")
    for name, s in summary.items():
        print(f"{name:<18} {s['mean_regret']:>11.4f} {s['max_regret']:>10.4f} {str(s['mean_spearman']):>13}")


if __name__ == "__main__":
    main()
