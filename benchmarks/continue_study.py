"""Re-adapting as the library grows: ``train --continue`` vs training from scratch, and ``index reembed``.

    python benchmarks/continue_study.py [--seeds 5] [--halves 0,1,2] [--data-root DIR | --data DIR] [--work DIR]
                                        [--no-served] [--out FILE] [--json]

A report (:mod:`ftspl.data.protocol` purpose ``report``): each seed of ``--seeds``
is a report seed whose SH3D build (``studylib.build_split``, shared with
``quality.py`` under ``<home>/cache/quality-data``) is trained on with that
seed, and its query photos rank its target gallery. ``--data DIR``: one existing
build for every seed instead (its manifest must give queries/ the report role;
the seeds are then training seeds only). Nothing here chooses a default.

1. ``half``: FTSPL (``TrainConfig`` defaults, head mode, CPU) on a fixed random half
   of the target meshes (one per ``--halves`` seed: a plain seeded shuffle);
2. ``continue``: ``train --continue`` from ``half`` with all target meshes
   (:func:`ftspl.train.continuation.continued_config`: RUN's config, warm-up included);
   ``continue_no_warmup``: the same without the warm-up epochs (the alternative the
   default was chosen against);
3. ``scratch``: FTSPL from scratch on all target meshes;
4. ``half_model``: ``half``'s network with the full gallery, as a library that
   grew without re-adapting would serve it (scored through the served path below).

Each trained row: query photos ranked against the full target gallery (NN, FT,
ST, DCG, ANMRR; in-process embeddings of the exported round, ``studylib.score``),
the run's validation criterion (carved source photos, the one that chose the
round) and the training wall time with warm view/feature caches (they are shared:
every shape is rendered and its backbone features computed once, whichever run
needs it first; that one-off cost is reported apart as ``warm_caches_s``).

The served path, in a fresh home: export ``half`` (torchscript), ``index add``
the gallery, ``eval`` the queries (the ``half_model`` row); export ``continue``,
``index reembed`` (timed; views from the render cache), ``eval`` again (must
equal the in-process ``continue`` row); and, for scale, ``index add`` of the same
gallery into another fresh home with the continued model.

Every (seed, half) combination trains the four rows; ``summary`` has each row's
mean and sample std over them. The served path runs for the first one.
Writes ``benchmarks/results/continue.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from common import RESULTS, cli_run, load_torch_before_mesa, logger, quiet_openmp, result_record, study_home, write_result

quiet_openmp()
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
    from studylib import score

    from ftspl.train.loop import train
    from ftspl.train.validation import verdict

    if Path(cfg.out).exists():
        shutil.rmtree(cfg.out)
    t = time.perf_counter()
    res = train(cfg, return_embeddings=True, home=home)
    seconds = time.perf_counter() - t
    sel = verdict(res.rounds) or {}
    chosen = next((r for r in res.rounds if r["round"] == sel.get("best_round")), res.rounds[-1])
    emb = res.embeddings
    metrics, _, _ = score(emb.query, emb.query_labels, emb.target, emb.target_labels)
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


def ftspl(home: Path, *args: str) -> tuple[dict, float]:
    """``ftspl ARGS --json`` with ``FTSPL_HOME=home``: (its JSON, process wall seconds); exits on failure."""
    r = cli_run(*args, home=home)
    return r.data, r.wall_s


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


def check_seeds(args) -> list[int]:
    """``--seeds`` as ints; without ``--data`` each must be a report seed (its build's queries are reported)."""
    from protocollib import report_seeds

    if args.data is None:
        return report_seeds(args.seeds, "--seeds")
    return [int(x) for x in args.seeds.split(",")]


def splits_for(args) -> list:
    """One (report) split per seed: its own build, or ``--data`` for every seed; refused unless reportable."""
    import studylib

    from ftspl.engine.errors import UsageError

    seeds = check_seeds(args)
    splits = []
    for seed in seeds:
        if args.data is not None:
            split = studylib.folder_split(args.data, seed)
        else:
            data_root = (args.data_root or study_home().cache / "quality-data").resolve()
            split = studylib.build_split(seed, data_root, "full")
        try:
            split.scored("report")
        except UsageError as exc:
            sys.exit(str(exc))
        splits.append(split)
    return splits


def main(argv: list[str] | None = None) -> int:
    from ftspl.data.protocol import REPORT_SEEDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default=str(REPORT_SEEDS[0]), help="report seeds (each its own build), comma-separated")
    ap.add_argument("--data-root", type=Path, default=None, help="builds (default: <home>/cache/quality-data)")
    ap.add_argument("--data", type=Path, default=None,
                    help="one existing build for every seed (its manifest must give queries/ the report role)")
    ap.add_argument("--work", type=Path, default=None, help="runs and homes (default: <home>/cache/continue)")
    ap.add_argument("--halves", default="0,1,2", help="seeds of the random halves the first run sees, comma-separated")
    ap.add_argument("--no-served", action="store_true", help="skip export / index / reembed / eval")
    ap.add_argument("--out", type=Path, default=RESULTS / "continue.json")
    ap.add_argument("--json", action="store_true", help="print the result JSON")
    args = ap.parse_args(argv)
    halves = [int(x) for x in args.halves.split(",")]
    check_seeds(args)
    load_torch_before_mesa()
    splits = splits_for(args)

    from dataclasses import replace

    from studylib import train_config

    from ftspl.train.continuation import continued_config
    from ftspl.train.loop import pretrained_embeddings

    home = study_home()
    work = args.work or home.cache / "continue"
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    cfgs = {split.seed: replace(train_config("FTSPL", split), queries=str(split.queries)) for split in splits}
    for split in splits:  # every shape's views and features, and each seed's augmented photos, once (timed apart)
        pretrained_embeddings(cfgs[split.seed], home=home)
    warm = time.perf_counter() - t
    log(f"caches warm in {warm:.0f} s")
    per_combo: dict[str, dict] = {}
    for split in splits:
        target = split.target
        cfg = cfgs[split.seed]
        for h in halves:
            wd = work / f"s{split.seed}-h{h}"
            wd.mkdir(parents=True, exist_ok=True)
            half, n_half, n_all = half_list(target, wd / "half.txt", h)
            rows: dict[str, dict] = {}
            rows["half"] = trained_row("half", replace(cfg, target=str(half), out=str(wd / "run-half")), home)
            cont = continued_config(wd / "run-half", target, wd / "run-continue")
            rows["continue"] = trained_row("continue", cont, home)
            rows["continue_no_warmup"] = trained_row(
                "continue_no_warmup", replace(cont, out=str(wd / "run-continue-no-warmup"), warmup_epochs=0), home)
            rows["scratch"] = trained_row("scratch", replace(cfg, out=str(wd / "run-scratch")), home)
            per_combo[f"seed{split.seed}-half{h}"] = rows
    first, base = splits[0], cfgs[splits[0].seed]
    fw = work / f"s{first.seed}-h{halves[0]}"
    result = result_record(
        "continue_study.py", argv,
        {"seeds": [s.seed for s in splits], "halves": halves, "purpose": "report",
         "data": {str(s.seed): str(s.root) for s in splits},
         "training": {k: getattr(base, k) for k in ("rounds", "epochs", "warmup_epochs", "lr", "lam", "mode", "preset")},
         "cpu": f"{os.cpu_count()} cores"},
        n_target_half=n_half, n_target_all=n_all, warm_caches_s=round(warm, 1), summary=summarize(per_combo),
        per_combo=per_combo)
    if not args.no_served:
        result["served"] = served(work, fw / "run-half", fw / "run-continue", first.target, first.queries, home.cache)
        result["served"]["combo"] = f"seed{first.seed}-half{halves[0]}"
    write_result(args.out, result)
    if args.json:
        print(json.dumps(result))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
