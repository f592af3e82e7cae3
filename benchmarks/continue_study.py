"""Re-adapting as the library grows: ``train --continue`` vs training from scratch, and ``index reembed``.

    python benchmarks/continue_study.py [--data DIR] [--work DIR] [--seeds 0] [--halves 0,1,2] [--no-served] [--json]

On the SH3D benchmark split (default: ``benchmarks/quality.py``'s seed-0 data under
``<home>/cache/quality-data/data-full-s0``; build it with ``quality.py --prepare``):

1. ``half``: FTSPL (``TrainConfig`` defaults, head mode, CPU) on a fixed random half
   of the target meshes (one per ``--halves`` seed: a plain seeded shuffle);
2. ``continue``: ``train --continue`` from ``half`` with all target meshes
   (:func:`ftspl.train.continuation.continued_config`: RUN's config, warm-up included);
   ``continue_no_warmup``: the same without the warm-up epochs (the alternative the
   default was chosen against, on validation);
3. ``scratch``: FTSPL from scratch on all target meshes;
4. ``half_model``: ``half``'s network with the full gallery, as a library that
   grew without re-adapting would serve it (scored through the served path below).

Each trained row: query photos ranked against the full target gallery (NN, FT,
ST, DCG, ANMRR; in-process embeddings of the exported round, as quality.py), the
run's validation criterion (carved source photos, the one that chose the round)
and the training wall time with warm view/feature caches (they are shared: every
shape is rendered and its backbone features computed once, whichever run needs it
first; that one-off cost is reported apart as ``warm_caches_s``).

The served path, in a fresh home: export ``half`` (torchscript), ``index add``
the gallery, ``eval`` the queries (the ``half_model`` row); export ``continue``,
``index reembed`` (timed; views from the render cache), ``eval`` again (must
equal the in-process ``continue`` row); and, for scale, ``index add`` of the same
gallery into another fresh home with the continued model.

Every (training seed, half) combination trains the four rows; ``summary`` has each
row's mean and sample std over them. The served path runs for the first one.
Writes ``benchmarks/results/continue.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# quality sets OMP_WAIT_POLICY (spin-waiting OpenMP on 2 shared cores) before torch loads
from quality import ROOT, logger

METRICS = ("NN", "FT", "ST", "DCG", "ANMRR")
log = logger("continue")


def half_list(target: Path, out: Path, seed: int) -> tuple[Path, int, int]:
    """A list file (``path label``) of a fixed random half of the target meshes; (file, half, all)."""
    import numpy as np

    from ftspl.engine.loading.scan import scan

    shapes = sorted(scan(target, "top"), key=lambda s: str(s.path))
    pick = sorted(np.random.default_rng([seed, 17]).permutation(len(shapes))[: len(shapes) // 2].tolist())
    out.write_text("".join(f"{shapes[i].path} {shapes[i].label}\n" for i in pick))
    return out, len(pick), len(shapes)


def trained_row(name: str, cfg, home) -> dict:
    from quality import score

    from ftspl.train.loop import train
    from ftspl.train.validation import verdict

    if Path(cfg.out).exists():
        shutil.rmtree(cfg.out)
    t = time.perf_counter()
    res = train(cfg, return_embeddings=True, home=home)
    seconds = time.perf_counter() - t
    sel = verdict(res.rounds) or {}
    chosen = next((r for r in res.rounds if r["round"] == sel.get("best_round")), res.rounds[-1])
    metrics, _ = score(res.embeddings)
    log(f"{name}: {seconds:.1f} s, round {chosen['round']}, FT {metrics['FT']:.4f}")
    return {
        "run": str(cfg.out), "train_s": round(seconds, 2), "n_target": len(res.embeddings.target_labels),
        "queries_vs_full_gallery": None if name == "half" else {k: round(metrics[k], 4) for k in METRICS},
        "queries_vs_its_gallery": {k: round(metrics[k], 4) for k in METRICS},
        "val": chosen.get("val"), "best_round": chosen["round"], "rounds": len(res.rounds),
        "val_per_round": [r.get("val", {}).get("FT") for r in res.rounds],
    }


def summarize(per_combo: dict[str, dict]) -> dict:
    """Per row: mean and sample std over the (seed, half) combinations of each metric, val FT and train time."""
    import numpy as np

    out: dict[str, dict] = {}
    names = next(iter(per_combo.values())).keys()
    for name in names:
        rows = [c[name] for c in per_combo.values()]
        key = "queries_vs_its_gallery" if name == "half" else "queries_vs_full_gallery"
        series = {k: [r[key][k] for r in rows] for k in METRICS}
        series["val_FT"] = [r["val"]["FT"] for r in rows if r.get("val")]
        series["val_acc"] = [r["val"]["acc"] for r in rows if r.get("val")]
        series["train_s"] = [r["train_s"] for r in rows]
        out[name] = {k: [round(float(np.mean(v)), 4), round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)]
                     for k, v in series.items() if v}
        out[name]["gallery"] = "its half" if name == "half" else "all target meshes"
    return out


def git_state() -> dict:
    """The commit the study ran on, and the training/engine files that differed from it (a shared checkout)."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return r.stdout.rstrip("\n")  # porcelain lines start with a space: strip only the end

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "ftspl").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "modified": dirty}


def ftspl(home: Path, *args: str) -> tuple[dict, float]:
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ftspl", *args, "--json"], capture_output=True, text=True, env=env,
                       check=False)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"ftspl {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), wall


def served(work: Path, half_run: Path, cont_run: Path, target: Path, queries: Path, cache: Path) -> dict:
    """half model: export, index, eval; continued model: export, reembed (timed), eval; a fresh add for scale."""
    home = work / "served-home"
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "cache").symlink_to(cache)  # the render cache the training runs filled
    ftspl(home, "export", str(half_run), "--exporter", "torchscript")
    add, add_wall = ftspl(home, "index", "add", str(target))
    half_eval, _ = ftspl(home, "eval", str(queries))
    ftspl(home, "export", str(cont_run), "--exporter", "torchscript")
    re, re_wall = ftspl(home, "index", "reembed")
    cont_eval, _ = ftspl(home, "eval", str(queries))
    fresh = work / "fresh-home"
    if fresh.exists():
        shutil.rmtree(fresh)
    shutil.copytree(home / "models", fresh / "models")
    add2, add2_wall = ftspl(fresh, "index", "add", str(target))

    def m(ev: dict) -> dict:
        return {k: round(ev["metrics"][k], 4) for k in METRICS}

    return {
        "half_model_full_gallery": m(half_eval), "continue_served": m(cont_eval),
        "index_add_half_model": {"shapes": add["added"], "seconds": add["seconds"], "wall_s": round(add_wall, 1)},
        "reembed": {**{k: re[k] for k in ("total", "encoded", "from_cache", "swapped", "failed")},
                    "seconds": re["seconds"], "wall_s": round(re_wall, 1)},
        "index_add_continued_model_fresh_home": {"shapes": add2["added"], "seconds": add2["seconds"],
                                                 "wall_s": round(add2_wall, 1)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="source/val/queries/target folder (default: quality.py's seed-0 data)")
    ap.add_argument("--work", type=Path, default=None, help="runs and homes (default: <home>/cache/continue)")
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    ap.add_argument("--halves", default="0,1,2", help="seeds of the random halves the first run sees, comma-separated")
    ap.add_argument("--no-served", action="store_true", help="skip export / index / reembed / eval")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "continue.json")
    ap.add_argument("--json", action="store_true", help="print the result JSON")
    args = ap.parse_args(argv)

    from dataclasses import replace

    from quality import study_home

    from ftspl.train.config import TrainConfig
    from ftspl.train.continuation import continued_config
    from ftspl.train.loop import pretrained_embeddings

    home = study_home()
    data = args.data or home.cache / "quality-data" / "data-full-s0"
    if not (data / "target").is_dir():
        raise SystemExit(f"{data}: no benchmark data; run 'python benchmarks/quality.py --prepare' first")
    work = args.work or home.cache / "continue"
    work.mkdir(parents=True, exist_ok=True)
    target, queries, source = data / "target", data / "queries", data / "source"
    seeds = [int(x) for x in args.seeds.split(",")]
    halves = [int(x) for x in args.halves.split(",")]
    base = TrainConfig(source=str(source), target=str(target), queries=str(queries), seed=seeds[0], mode="head",
                       device="cpu")
    t = time.perf_counter()
    for seed in seeds:  # every shape's views and features, and each seed's augmented photos, once (timed apart)
        pretrained_embeddings(replace(base, seed=seed), home=home)
    warm = time.perf_counter() - t
    log(f"caches warm in {warm:.0f} s")
    per_combo: dict[str, dict] = {}
    for seed in seeds:
        for h in halves:
            wd = work / f"s{seed}-h{h}"
            wd.mkdir(parents=True, exist_ok=True)
            half, n_half, n_all = half_list(target, wd / "half.txt", h)
            cfg = replace(base, seed=seed)
            rows: dict[str, dict] = {}
            rows["half"] = trained_row("half", replace(cfg, target=str(half), out=str(wd / "run-half")), home)
            cont = continued_config(wd / "run-half", target, wd / "run-continue")
            rows["continue"] = trained_row("continue", cont, home)
            rows["continue_no_warmup"] = trained_row(
                "continue_no_warmup", replace(cont, out=str(wd / "run-continue-no-warmup"), warmup_epochs=0), home)
            rows["scratch"] = trained_row("scratch", replace(cfg, out=str(wd / "run-scratch")), home)
            per_combo[f"seed{seed}-half{h}"] = rows
    first = work / f"s{seeds[0]}-h{halves[0]}"
    result = {
        "data": str(data), "n_target_half": n_half, "n_target_all": n_all, "seeds": seeds, "halves": halves,
        "warm_caches_s": round(warm, 1), "summary": summarize(per_combo), "per_combo": per_combo,
        "config": {k: getattr(base, k) for k in ("rounds", "epochs", "warmup_epochs", "lr", "lam", "mode", "preset")},
        "cpu": f"{os.cpu_count()} cores", "git": git_state(),
        "command": f"python benchmarks/continue_study.py --seeds {args.seeds} --halves {args.halves}"
                   + (f" --data {args.data}" if args.data else ""),
    }
    if not args.no_served:
        result["served"] = served(work, first / "run-half", first / "run-continue", target, queries, home.cache)
        result["served"]["combo"] = f"seed{seeds[0]}-half{halves[0]}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.json:
        print(json.dumps(result))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
