"""One real FTSPL run against the pretrained baseline, on Sweet Home 3D furniture.

    python benchmarks/train_sh3d.py [--presets FTSPL,source_only] [--rounds N] [--epochs N] [--json]

Data: the SH3D benchmark (``ftspl.data.bench``, seeded, disjoint models per
class): photo-domain renders + catalogue icons of source models are the
labelled photos, of val models the tuning photos (the per-round metrics during
training), of query models the held-out query photos; the remaining models'
meshes are the unlabelled gallery. The whole ablation study with seeds is
``benchmarks/quality.py``; this script is the served-pipeline spot check. Runs
the real stages: ``ftspl export --pretrained`` + ``index add`` + ``eval`` for the
CNN row, then ``train`` (head mode) + ``export RUN`` + ``index add`` + ``eval``
for each preset, so the numbers are the served model's, not the trainer's.
The training budget is ``ftspl train``'s default (``TrainConfig``'s) unless
``--rounds``/``--epochs``/``--warmup-epochs`` override it. Data, runs and homes
live under ``--work`` (default ``<home>/cache/bench-train``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import cli_json, study_home


def ftspl(home: Path, *args: str) -> dict:
    return cli_json(*args, home=home)


def serve_metrics(home: Path, split) -> dict:
    ftspl(home, "index", "add", str(split.target), "--rebuild")
    return {k: round(v, 4) for k, v in ftspl(home, "eval", str(split.queries))["metrics"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="source_only,FTSPL")
    ap.add_argument("--rounds", type=int, default=None, help="default: ftspl train's")
    ap.add_argument("--epochs", type=int, default=None, help="default: ftspl train's")
    ap.add_argument("--warmup-epochs", type=int, default=None, help="default: ftspl train's")
    ap.add_argument("--seed", type=int, default=5, help="a report seed (ftspl.data.protocol): its query photos are scored")
    ap.add_argument("--bench", default="full", choices=("small", "full"))
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from dataclasses import replace

    from ftspl.data.protocol import REPORT_SEEDS, seed_role

    if seed_role(args.seed) != "report":
        raise SystemExit(f"--seed {args.seed}: not a report seed (use {', '.join(map(str, REPORT_SEEDS))}); "
                         "tuning seeds' query photos are never scored")

    from ftspl.data.bench import BENCH_PRESETS, build_sh3d_benchmark

    repo_home = study_home()
    if args.work is None:
        args.work = repo_home.cache / "bench-train"
    cache = repo_home.debian_cache
    budget = [f"--{k.replace('_', '-')}={v}" for k, v in
              (("rounds", args.rounds), ("epochs", args.epochs), ("warmup_epochs", args.warmup_epochs)) if v is not None]
    from ftspl.data.protocol import check_use
    from ftspl.engine.errors import UsageError

    split = build_sh3d_benchmark(args.work / f"data-{args.bench}-s{args.seed}", cache,
                                 replace(BENCH_PRESETS[args.bench], seed=args.seed))
    try:
        check_use(split.root, "report", "queries")  # the query photos of a tuning seed are never reported
    except UsageError as exc:
        raise SystemExit(str(exc)) from None
    out: dict = {"split": split.counts, "photos": split.photos, "classes": split.classes, "rows": {}}
    home = args.work / "home-cnn"
    if not (home / "models" / "ACTIVE").exists():
        ftspl(home, "export", "--pretrained")
    out["rows"]["CNN"] = {"metrics": serve_metrics(home, split)}
    for preset in args.presets.split(","):
        run = args.work / f"run-{preset}-s{args.seed}"
        t = time.perf_counter()
        res = ftspl(home, "train", "--source", str(split.source), "--target", str(split.target),
                    "--queries", str(split.val), "--out", str(run), "--preset", preset, *budget,
                    "--seed", str(args.seed),
                    *(["--resume"] if (run / "checkpoint.pt").exists() else []))
        minutes = (time.perf_counter() - t) / 60
        h = args.work / f"home-{preset}"
        ftspl(h, "export", str(run))
        out["rows"][preset] = {
            "minutes": round(minutes, 2),
            "pseudo_acc_per_round": [r.get("pseudo_acc") for r in res["rounds"]],
            "selected_per_round": [r.get("selected") for r in res["rounds"]],
            "metrics": serve_metrics(h, split),
        }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
