"""Beyond the paper, measured on the SH3D benchmark: multi-photo fusion and open-set answers.

    python benchmarks/beyond.py --bench BENCH --home HOME [--split val|queries] [--json]

``BENCH`` is a folder from ``ftspl data sh3d`` and ``HOME`` holds an exported
model whose index holds ``BENCH/target`` (``ftspl index add BENCH/target``).
Ranks are exact (the whole gallery), as in ``ftspl eval``.

* **Fusion**: the split's photos grouped by the model they show (``<model>__r0.jpg``,
  ``__icon.png``...). For each rule and n in 1, 2, 3 and all, the first n photos
  of a group (sorted by name) are fused into one query; the single-photo row
  scores every photo alone. Tune on ``--split val``; report ``queries`` as it comes.
* **Open set**: ``--holdout K`` classes (seeded) leave the gallery; the threshold
  for ``--precision`` on known photos is calibrated on ``val`` and applied to
  ``queries``: AUROC of known vs unknown (nearest distance), the share of
  unknown query photos answered "no match" and of known ones kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ftspl.engine.home import Home
from ftspl.engine.index.library import Library
from ftspl.engine.scoring.evaluate import embed_labelled, gallery_of, labelled_photos
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


def open_set(val: tuple, queries: tuple, gallery: np.ndarray, g_labels: list[str], holdout: int,
             precision: float, seed: int) -> dict:
    classes = sorted(set(g_labels))
    rng = np.random.default_rng(seed)
    held = sorted(rng.choice(classes, size=holdout, replace=False).tolist())
    keep = np.array([g not in held for g in g_labels])
    kept_labels = {g for g, k in zip(g_labels, keep) if k}
    gal = gallery[keep]
    (v_emb, v_lab, _), (q_emb, q_lab, _) = val, queries
    v_near = pairwise_euclidean(v_emb, gal).min(axis=1)
    cal = calibrate(v_near, v_lab, kept_labels, precision, "-", "-", "val")
    q_near = pairwise_euclidean(q_emb, gal).min(axis=1)
    known = np.array([lab in kept_labels for lab in q_lab])
    return {
        "held_out_classes": held,
        "precision_target": precision,
        "threshold": round(cal.max_distance, 4),
        "val": {"auroc": round(cal.auroc, 4), "known_kept": round(cal.known_accepted, 4),
                "unknown_rejected": round(cal.unknown_rejected, 4)},
        "queries": {
            "known": int(known.sum()), "unknown": int((~known).sum()),
            "auroc": round(auroc(q_near[known], q_near[~known]), 4),
            "unknown_rejected": round(float((q_near[~known] > cal.max_distance).mean()), 4),
            "known_kept": round(float((q_near[known] <= cal.max_distance).mean()), 4),
            "precision_on_accepted": round(float(known[q_near <= cal.max_distance].mean()), 4),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, required=True)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--split", choices=("val", "queries"), default="val", help="fusion rows on this split")
    ap.add_argument("--holdout", type=int, default=4, help="classes left out of the gallery (open set)")
    ap.add_argument("--precision", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    lib = Library(Home.resolve(args.home))
    _ids, gallery, g_labels = gallery_of(lib)
    val = _split(lib, args.bench / "val")
    queries = _split(lib, args.bench / "queries")
    fusion_on = val if args.split == "val" else queries
    res = {
        "model_id": lib.manifest.model_id,
        "gallery": len(g_labels),
        "fusion": {"split": args.split, **fusion_table(*fusion_on, gallery, g_labels)},
        "open_set": open_set(val, queries, gallery, g_labels, args.holdout, args.precision, args.seed),
    }
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        f = res["fusion"]
        print(f"fusion on {f['split']}: {f['groups']} objects, {f['photos']} photos")
        print("  single photo  " + "  ".join(f"{k} {v:.3f}" for k, v in f["single_photo"].items()))
        for how in FUSIONS:
            for n, row in f[how].items():
                print(f"  {how:5s} n={n:3s}  " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
        print("open set:", json.dumps(res["open_set"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
