"""Beyond the paper, measured on the SH3D benchmark: multi-photo fusion and open-set answers.

    python benchmarks/beyond.py --bench BENCH --home HOME --split val [--out FILE] [--json]       # tune
    python benchmarks/beyond.py --bench BENCH --home HOME --split queries [--calibration FILE]   # report

``BENCH`` is a folder from ``ftspl data sh3d``; ``HOME`` holds an exported
model (trained on BENCH) and an index of the gallery the split ranks
(:mod:`ftspl.data.protocol`): ``--split val`` (purpose ``tune``: BENCH must be a
tuning seed's build) ranks ``BENCH/val_gallery`` (``ftspl index add
BENCH/val_gallery``); ``--split queries`` (purpose ``report``: a report seed's
build) ranks ``BENCH/target``. The script refuses a build or an index of the
wrong role. Ranks are exact (the whole gallery), as in ``ftspl eval``.

* **Fusion**: the split's photos grouped by the model they show (``<model>__r0.jpg``,
  ``__icon.png``...). For each rule and n in 1, 2, 3 and all, the first n photos
  of a group (sorted by name) are fused into one query; the single-photo row
  scores every photo alone. Tune on ``--split val``; report ``queries`` as it comes.
* **Open set**: ``--holdout K`` classes (seeded) leave the gallery. ``val``:
  the threshold for ``--precision`` on known photos is calibrated on the val
  photos against the val gallery. ``queries``: that threshold (``--calibration``,
  the ``val`` run's result file, default ``benchmarks/results/beyond_val.json``)
  is applied to the query photos against the target gallery: AUROC of known vs
  unknown (nearest distance), the share of unknown query photos answered "no
  match" and of known ones kept.

Writes ``--out`` (default ``benchmarks/results/beyond_<split>.json``; ``none``:
print only) with the command, date, git state and config.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from common import RESULTS, result_record, write_result
from protocollib import check_build, check_gallery, gallery_with_paths, tuned_choice

from ftspl.engine.home import Home
from ftspl.engine.index.library import Library
from ftspl.engine.scoring.evaluate import embed_labelled, labelled_photos
from ftspl.engine.scoring.fusion import FUSIONS, fuse
from ftspl.engine.scoring.metrics import format_metrics, pairwise_euclidean, retrieval_metrics
from ftspl.engine.scoring.openset import auroc, calibrate

METRICS = ("NN", "FT", "ST", "DCG", "ANMRR")


def _split(lib: Library, root: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Embeddings, labels and model keys of a split's photos (in ``labelled_photos`` order)."""
    emb, labels, failed = embed_labelled(root, lib)
    if failed:
        raise SystemExit(f"{root}: {len(failed)} photos failed to load, e.g. {failed[0]}")
    keys = [p.name.split("__")[0] for p, _ in labelled_photos(root)]
    return emb, labels, keys


def _scores(dist: np.ndarray, q_labels: list[str], g_labels: list[str]) -> dict[str, float]:
    m = format_metrics(retrieval_metrics(dist, np.asarray(q_labels, object), np.asarray(g_labels, object)))
    return {k: round(m[k], 4) for k in METRICS}


def fusion_table(emb: np.ndarray, labels: list[str], keys: list[str], gallery: np.ndarray,
                 g_labels: list[str]) -> dict:
    dist = pairwise_euclidean(emb, gallery)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    group_keys = sorted(groups)
    out: dict = {"groups": len(group_keys), "photos": len(labels),
                 "single_photo": _scores(dist, labels, g_labels)}
    sizes = sorted({len(v) for v in groups.values()})
    for how in FUSIONS:
        rows = {}
        for n in ("1", "2", "3", "all"):
            take = {k: groups[k] if n == "all" else groups[k][: int(n)] for k in group_keys}
            fused = np.stack([fuse(dist[take[k]], how) for k in group_keys])
            rows[n] = _scores(fused, [labels[groups[k][0]] for k in group_keys], g_labels)
        out[how] = rows
    out["photos_per_group"] = sizes
    return out


def held_out(g_labels: list[str], holdout: int, seed: int) -> list[str]:
    """The ``holdout`` classes (a seeded pick) that leave the gallery."""
    classes = sorted(set(g_labels))
    return sorted(np.random.default_rng(seed).choice(classes, size=holdout, replace=False).tolist())


def _without(gallery: np.ndarray, g_labels: list[str], held: list[str]) -> tuple[np.ndarray, set[str]]:
    keep = np.array([g not in held for g in g_labels])
    return gallery[keep], {g for g, k in zip(g_labels, keep) if k}


def open_set_calibrate(val: tuple, gallery: np.ndarray, g_labels: list[str], holdout: int, precision: float,
                       seed: int) -> dict:
    """Tune: the threshold for ``precision`` on the val photos' nearest distances to the val gallery."""
    held = held_out(g_labels, holdout, seed)
    gal, kept_labels = _without(gallery, g_labels, held)
    v_emb, v_lab, _ = val
    cal = calibrate(pairwise_euclidean(v_emb, gal).min(axis=1), v_lab, kept_labels, precision, "-", "-", "val")
    return {"held_out_classes": held, "precision_target": precision, "threshold": round(cal.max_distance, 4),
            "val": {"auroc": round(cal.auroc, 4), "known_kept": round(cal.known_accepted, 4),
                    "unknown_rejected": round(cal.unknown_rejected, 4)}}


def open_set_apply(queries: tuple, gallery: np.ndarray, g_labels: list[str], held: list[str], threshold: float) -> dict:
    """Report: a tuned threshold applied to the query photos against the target gallery."""
    gal, kept_labels = _without(gallery, g_labels, held)
    q_emb, q_lab, _ = queries
    q_near = pairwise_euclidean(q_emb, gal).min(axis=1)
    known = np.array([lab in kept_labels for lab in q_lab])
    return {
        "known": int(known.sum()), "unknown": int((~known).sum()),
        "auroc": round(auroc(q_near[known], q_near[~known]), 4),
        "unknown_rejected": round(float((q_near[~known] > threshold).mean()), 4),
        "known_kept": round(float((q_near[known] <= threshold).mean()), 4),
        "precision_on_accepted": round(float(known[q_near <= threshold].mean()), 4),
    }


FUSION_RULE = "the rule with the best mean val FT over n = 2, 3 and all photos per object; ties (< 0.001) go to mean"


def choose_fusion(table: dict) -> dict:
    """``--fusion``'s default as :data:`FUSION_RULE` picks it from a val fusion table."""
    score = {how: float(np.mean([table[how][n]["FT"] for n in ("2", "3", "all")])) for how in FUSIONS}
    best = max(score.values())
    winner = "mean" if best - score["mean"] < 0.001 else max(score, key=score.get)
    return {"rule": FUSION_RULE, "mean_ft": {k: round(v, 4) for k, v in score.items()}, "winner": winner}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, required=True)
    ap.add_argument("--home", type=Path, required=True, help="a model and an index of the split's gallery")
    ap.add_argument("--split", choices=("val", "queries"), default="val",
                    help="val: tune (val photos vs val_gallery); queries: report (query photos vs target)")
    ap.add_argument("--holdout", type=int, default=4, help="classes left out of the gallery (open set)")
    ap.add_argument("--precision", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0, help="the pick of held-out classes")
    ap.add_argument("--calibration", type=Path, default=RESULTS / "beyond_val.json",
                    help="with --split queries: the val run's result file (its open_set threshold)")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/beyond_<split>.json); none")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    purpose, gallery_dir = check_build(args.bench, args.split)
    cal = tuned_choice(purpose, args.calibration, "open_set", "tuned open-set threshold")
    lib = Library(Home.resolve(args.home))
    _ids, gallery, g_labels, g_paths = gallery_with_paths(lib)
    check_gallery(g_paths, args.bench / gallery_dir)
    photos = _split(lib, args.bench / args.split)
    res = {
        "model_id": lib.manifest.model_id,
        "gallery": len(g_labels),
        "fusion": {"split": args.split, "purpose": purpose, **fusion_table(*photos, gallery, g_labels)},
    }
    if purpose == "tune":
        res["fusion_choice"] = choose_fusion(res["fusion"])
    if cal is None:
        res["open_set"] = open_set_calibrate(photos, gallery, g_labels, args.holdout, args.precision, args.seed)
    else:
        res["open_set"] = {"held_out_classes": cal["held_out_classes"], "precision_target": cal["precision_target"],
                           "threshold": cal["threshold"], "tuned_in": str(args.calibration),
                           "queries": open_set_apply(photos, gallery, g_labels, cal["held_out_classes"], cal["threshold"])}
    config = {"bench": str(args.bench), "home": str(args.home), "split": args.split, "purpose": purpose,
              "gallery": gallery_dir, "holdout": args.holdout, "precision": args.precision, "seed": args.seed,
              **({"calibration": str(args.calibration)} if cal else {})}
    record = result_record("beyond.py", argv, config, **res)
    out = args.out or str(RESULTS / f"beyond_{args.split}.json")
    if out.lower() != "none":
        write_result(Path(out), record)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        f = res["fusion"]
        print(f"fusion on {f['split']}: {f['groups']} objects, {f['photos']} photos")
        print("  single photo  " + "  ".join(f"{k} {v:.3f}" for k, v in f["single_photo"].items()))
        for how in FUSIONS:
            for n, row in f[how].items():
                print(f"  {how:5s} n={n:3s}  " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
        if "fusion_choice" in res:
            print("fusion default:", json.dumps(res["fusion_choice"]))
        print("open set:", json.dumps(res["open_set"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
