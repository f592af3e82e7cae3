"""The paper's ablation study (Tables III-V) on the SH3D benchmark's report seeds, with the tuned defaults.

    python benchmarks/quality.py [--seeds 5,6,7,8,9] [--rows CNN,CNN_centred,source_only,...]
                                 [--real-photos DIR] [--served-check FTSPL] [--quick] [--json]

Per report seed (:data:`ftspl.data.protocol.REPORT_SEEDS`; a tuning seed is
refused): build the split, then every row (``studylib``): ``CNN``,
``CNN_centred`` (the same features centred and projected on the unlabelled
target shapes, as every trained row's served embedding is), and every training
preset with TrainConfig's defaults and the preset's own settings, all chosen by
``benchmarks/tune.py`` on the tuning seeds. Query photos rank the target gallery.

The aggregation: per row, mean and sample std over seeds; paired differences
of FTSPL against every other row (and of every row against ``source_only``
and ``CNN``): the mean of the per-seed differences, their std, and a 95%
bootstrap interval over query models, with ``within_noise`` when it holds 0.

``--real-photos DIR`` (a folder of real photographs with ``labels.csv``:
``file``, ``class``) adds a reported-only block: the photos whose class is a
benchmark class, split into interior scenes (``pexels`` in the file name) and
object photos, ranking each report seed's target gallery, for CNN,
CNN_centred, source_only and FTSPL.

Writes ``OUT/NAME.json`` and ``OUT/NAME.md``; per-cell results stay under
``WORK`` (shared with tune.py) so an interrupted study resumes, and
``WORK/figures/seed<S>/<row>.{json,npz}`` feed ``benchmarks/figures.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, cli_json, load_torch_before_mesa, logger, quiet_openmp, study_home
from studylib import QUICK, data_of, real_photo_cell, real_photo_sets

quiet_openmp()
log = logger("quality")

#: The paper's MI3DOR numbers (NN, FT, ST, F, DCG, ANMRR): Tables III-V. Its "CNN"/"AlexNet" row is
#: AlexNet fine-tuned on the labelled images only (Sec. V-A), i.e. our ``source_only``.
PAPER_MI3DOR: dict[str, tuple[float, ...]] = {
    "source_only": (0.424, 0.323, 0.469, 0.099, 0.345, 0.667),
    "IDCA": (0.814, 0.631, 0.804, 0.153, 0.666, 0.353),
    "ICAV": (0.787, 0.601, 0.782, 0.146, 0.637, 0.379),
    "FT": (0.845, 0.649, 0.816, 0.156, 0.685, 0.334),
    "FT_centroid_pl": (0.866, 0.658, 0.837, 0.161, 0.697, 0.321),
    "SPL": (0.852, 0.653, 0.825, 0.157, 0.692, 0.328),
    "FTSPL": (0.874, 0.665, 0.844, 0.164, 0.704, 0.316),
}
REAL_ROWS = ("CNN", "CNN_centred", "source_only", "FTSPL")


def export_figure_inputs(results: dict, work: Path) -> None:
    """Copy each default cell's result and embeddings to ``WORK/figures/seed<S>/<row>.*`` (figures.py's input)."""
    for row, per_seed in results.items():
        for r in per_seed:
            folder = work / "figures" / f"seed{r['seed']}"
            folder.mkdir(parents=True, exist_ok=True)
            src = work / f"seed{r['seed']}" / "report" / f"{row}-{r['key']}.npz"
            if src.exists():
                shutil.copyfile(src, folder / f"{row}.npz")
            (folder / f"{row}.json").write_text(json.dumps(r))


def served_check(row: str, split, work: Path, fields: dict | None) -> dict:
    """``ftspl export`` + ``index add`` + ``eval`` for ``row``: served vs in-process metrics."""
    from studylib import run_cell, run_dir_of, train_config

    res = run_cell(row, split, "report", fields, work)
    home = work / f"seed{split.seed}" / f"served-{row}"
    if home.exists():
        shutil.rmtree(home)
    if row == "CNN":
        cli_json("export", "--pretrained", home=home)
    else:
        run = run_dir_of(row, train_config(row, split, fields), split, "report", work)
        # fp32: the check is that serving reproduces the in-process network (int8 is measured by precision.py)
        cli_json("export", str(run), "--precision", "fp32", home=home)
    cli_json("index", "add", str(split.target), "--rebuild", home=home)
    served = cli_json("eval", str(split.queries), home=home)["metrics"]
    from studylib import METRICS

    return {"row": row, "seed": split.seed, "served": served, "in_process": res["metrics"],
            "max_abs_diff": max(abs(served[k] - res["metrics"][k]) for k in METRICS)}


def markdown(out: dict) -> str:
    from studylib import METRICS, PAIRED, ci, pm

    n = len(out["config"]["seeds"])
    lines = [f"Report seeds {', '.join(map(str, out['config']['seeds']))}: mean ± sample std over {n} seeds; "
             "ANMRR lower is better, all else higher.", "",
             "| row | " + " | ".join(METRICS) + " | paper MI3DOR (NN FT ST F DCG ANMRR) |",
             "|" + "|".join(["---"] + ["---:"] * len(METRICS) + ["---"]) + "|"]
    for row, ms in out["rows"].items():
        paper = PAPER_MI3DOR.get(row)
        lines.append(f"| {row} | " + " | ".join(pm(ms[m]) for m in METRICS)
                     + f" | {' '.join(f'{v:.3f}' for v in paper) if paper else '-'} |")
    lines += ["", "FTSPL minus each row: mean of the per-seed differences [95% bootstrap interval over query models]; "
              "ANMRR as a gain; * = the interval holds 0 (within noise).", "",
              "| FTSPL minus | " + " | ".join(PAIRED) + " |", "|---|" + "---|" * len(PAIRED)]
    for row, d in out["paired"].get("FTSPL", {}).items():
        cells = [f"{ci(d[m])}{'*' if d[m]['within_noise'] else ''}"
                 for m in PAIRED]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if out.get("real_photos"):
        lines += ["", "Real photos (reported only; never tuned on): mean ± std over the report seeds.", "",
                  "| photos | row | n | NN | FT | ST | DCG | ANMRR |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for kind, rows in out["real_photos"].items():
            for row, d in rows.items():
                lines.append(f"| {kind} | {row} | {d['n']} | " + " | ".join(
                    pm(d["mean"][m]) for m in ("NN", "FT", "ST", "DCG", "ANMRR")) + " |")
    return "\n".join(lines) + "\n"


def versions() -> dict:
    import onnxruntime
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__, "cpu_count": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    from ftspl.data.protocol import REPORT_SEEDS, seed_role
    from studylib import all_rows, build_split, mean_std, paired, run_cell

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default=",".join(map(str, REPORT_SEEDS)))
    ap.add_argument("--rows", default=",".join(all_rows()))
    ap.add_argument("--real-photos", type=Path, default=None, help="a folder of real photos with labels.csv")
    ap.add_argument("--served-check", default=None, metavar="ROW", help="also run ROW and CNN through export+index+eval")
    ap.add_argument("--quick", action="store_true", help="a tiny training budget (smoke test; not a report)")
    ap.add_argument("--bench", default="full", choices=("small", "full", "folders"),
                    help="folders: --data-root holds s<SEED>/ builds (source, val, val_gallery, queries, target, manifest)")
    ap.add_argument("--work", type=Path, default=None, help="per-cell results (default: <home>/cache/study)")
    ap.add_argument("--data-root", type=Path, default=None, help="benchmark builds (default: <home>/cache/quality-data)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="quality")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in rows if r not in all_rows()]
    if bad:
        sys.exit(f"--rows: unknown {', '.join(bad)}; valid: {', '.join(all_rows())}")
    seeds = [int(s) for s in args.seeds.split(",")]
    wrong = [s for s in seeds if seed_role(s) != "report"]
    if wrong:
        sys.exit(f"--seeds: {', '.join(map(str, wrong))} are not report seeds (report {', '.join(map(str, REPORT_SEEDS))}; "
                 "tuning seeds choose the defaults and are never reported)")
    fields = QUICK if args.quick else None
    home = study_home()
    work = (args.work or home.cache / "study").resolve()
    data_root = (args.data_root or home.cache / "quality-data").resolve()
    from ftspl.engine.errors import UsageError

    if args.bench == "folders":  # existing builds: refuse a tuning build before anything heavy loads
        from studylib import folder_split

        for seed in seeds:
            try:
                folder_split(data_root / f"s{seed}", seed).scored("report")
            except UsageError as exc:
                sys.exit(str(exc))
    load_torch_before_mesa()
    t0 = time.perf_counter()

    results: dict[str, list] = {r: [] for r in rows}
    real: dict[str, dict[str, list]] = {}
    checks = []
    for seed in seeds:
        split = build_split(seed, data_root, args.bench)
        try:
            split.scored("report")
        except UsageError as exc:
            sys.exit(str(exc))
        for row in rows:
            results[row].append(run_cell(row, split, "report", fields, work, keep_embeddings=True))
        if args.real_photos:
            sets = real_photo_sets(args.real_photos, split.classes, work / "real-photos" / f"seed{seed}")
            for kind, folder in sets.items():
                for row in (r for r in REAL_ROWS if r in rows):
                    real.setdefault(kind, {}).setdefault(row, []).append(real_photo_cell(row, split, folder, work, fields))
        if args.served_check and seed == seeds[0]:
            for row in dict.fromkeys(["CNN", args.served_check]):
                checks.append(served_check(row, split, work, fields))
                log(f"served check {row}: max |served - in-process| = {checks[-1]['max_abs_diff']:.2e}")

    agg = {r: mean_std(v) for r, v in results.items() if v}
    pairs: dict = {}
    for a in rows:
        refs = [b for b in rows if b != a] if a == "FTSPL" else [b for b in ("source_only", "CNN") if b in rows and b != a]
        for b in refs:
            pairs.setdefault(a, {})[b] = paired(results[a], results[b])
    real_out = {kind: {row: {"n": v[0]["n_query"], "mean": mean_std(v),
                             **({"vs_CNN": paired(v, by_row["CNN"])} if row != "CNN" and "CNN" in by_row else {})}
                       for row, v in by_row.items()} for kind, by_row in real.items()}
    out = {
        "rows": agg,
        "paired": pairs,
        "real_photos": real_out,
        "config": {
            "seeds": seeds, "purpose": "report", "quick": args.quick, "data": data_of(args.bench),
            "defaults": "TrainConfig and PRESETS as chosen by benchmarks/tune.py (benchmarks/results/tune_*.json) "
                        "on the tuning seeds; python benchmarks/tune.py --check verifies they agree",
            "scoring": "query photos vs the whole target gallery, L2-normalised embeddings, Euclidean; "
                       "ftspl.engine.scoring.metrics.retrieval_metrics (MI3DOR scorer)",
            "uncertainty": "std = sample std over seeds; ci95 = bootstrap over query models within each seed, "
                           "seeds averaged (2000 draws)",
            "splits": {str(r["seed"]): {"n_query": r["n_query"], "n_gallery": r["n_gallery"]} for r in results[rows[0]]},
            "versions": versions(), "minutes_this_call": round((time.perf_counter() - t0) / 60, 1),
            "minutes_training_and_scoring": round(sum(r["seconds"] for v in results.values() for r in v) / 60, 1),
            "served_check": checks,
        },
        "per_seed": {row: {str(r["seed"]): r["metrics"] for r in v} for row, v in results.items()},
        "pseudo_acc": {row: {str(r["seed"]): r.get("pseudo_acc_per_round") for r in v}
                       for row, v in results.items() if any(r.get("pseudo_acc_per_round") for r in v)},
    }
    export_figure_inputs(results, work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(out, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(out))
    print(json.dumps(out) if args.json else markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
