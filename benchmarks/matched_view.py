"""The view that matched, measured on the SH3D benchmark: re-ranking by best view, its cost, its bytes.

    python benchmarks/matched_view.py --bench BENCH --home HOME --split val [--out FILE] [--json]      # tune
    python benchmarks/matched_view.py --bench BENCH --home HOME --split queries [--choice FILE]    # report

``BENCH`` is a folder from ``ftspl data sh3d``; ``HOME`` holds a model exported
with per-view output (``ftspl export``, since issue 17), trained on BENCH, and
an index of the gallery the split ranks (``protocollib``, :mod:`ftspl.data.protocol`),
so every shape has codes: ``--split val`` (purpose ``tune``, a tuning seed's
build) ranks ``BENCH/val_gallery``; ``--split queries`` (purpose ``report``, a
report seed's build) ranks ``BENCH/target``. A build or an index of the wrong
role is refused.

* **Re-ranking**: each photo's whole gallery is ranked by the pooled distance
  (exact, as ``ftspl eval``); the top ``--depth`` are re-ordered by a rule of
  :mod:`ftspl.engine.scoring.views` (``view``; ``blend`` at each ``--weights``)
  from the stored int8 codes, the rest keep their order. ``val``: the rule and
  weight are chosen by the mean of NN, FT, ST, DCG and 1 - ANMRR (ties keep
  ``none``), and adopted when the paired 95% interval of the mean's change
  lies above 0. ``queries``: every rule is scored and reported as it comes,
  with the interval of the rule the val run chose (``--choice``, its result
  file, default ``benchmarks/results/matched_view_val.json``).
* **Cost**: ms per query of the real path (:func:`search_matched` on the
  index's ANN, one photo at a time, after a warm-up): the plain search, plus
  matched views for the top 10, plus re-ranking of the top ``--depth``.
* **Bytes**: the index folder per shape, the codes and view strips in it, and
  ``--baseline-home``'s index (the same gallery without codes) for comparison.

Writes ``--out`` (default ``benchmarks/results/matched_view_<split>.json``;
``none``: print only) with the command, date, git state and config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ftspl.engine.home import Home
from ftspl.engine.index.store import viewcodes
from ftspl.engine.index.library import Library
from common import RESULTS, result_record, write_result
from protocollib import check_build, check_gallery, gallery_with_paths, tuned_choice

from ftspl.engine.scoring.evaluate import embed_labelled
from ftspl.engine.scoring.metrics import (
    format_metrics,
    pairwise_euclidean,
    retrieval_metrics,
)
from ftspl.engine.scoring.views import RERANKS, MatchConfig, cosine_of, search_matched

METRICS = ("NN", "FT", "ST", "DCG", "ANMRR")
WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def scores(dist: np.ndarray, q_labels: list[str], g_labels: list[str]) -> dict[str, float]:
    m = format_metrics(retrieval_metrics(dist, np.asarray(q_labels, object), np.asarray(g_labels, object)))
    out = {k: round(m[k], 4) for k in METRICS}
    out["mean"] = round((out["NN"] + out["FT"] + out["ST"] + out["DCG"] + 1 - out["ANMRR"]) / 5, 4)
    return out


def best_view_sims(emb: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(photos, shapes) best-view cosine: ``codes`` is (shapes, V, D) of unit rows."""
    return np.einsum("qd,svd->qsv", emb, codes, optimize=True).max(axis=2)


def reranked(dist: np.ndarray, view: np.ndarray, rule: str, w: float, depth: int) -> np.ndarray:
    """A distance matrix whose ascending order is the re-ranked order (top ``depth`` re-ordered)."""
    out = dist + 4.0  # unit vectors are at most 2 apart: every re-ranked candidate sorts first
    for q in range(len(dist)):
        top = np.argsort(dist[q], kind="stable")[:depth]
        score = RERANKS[rule](cosine_of(dist[q, top]), view[q, top].astype(np.float64), w)
        order = top[np.argsort(-score, kind="stable")]
        out[q, order] = 1e-3 * np.arange(1, len(order) + 1)
    return out


def paired_interval(a: np.ndarray, b: np.ndarray, labels: list[str], g_labels: list[str], rounds: int,
                    seed: int = 0) -> list[float]:
    """95% interval of mean(b) - mean(a) over photos resampled with replacement (the same draw for both)."""
    rng = np.random.default_rng(seed)
    lab = np.asarray(labels, object)
    diffs = []
    for _ in range(rounds):
        rows = rng.integers(0, len(labels), len(labels))
        diffs.append(scores(b[rows], list(lab[rows]), g_labels)["mean"] - scores(a[rows], list(lab[rows]), g_labels)["mean"])
    return [round(float(x), 4) for x in np.percentile(diffs, [2.5, 97.5])]


def table(dist: np.ndarray, view: np.ndarray, labels: list[str], g_labels: list[str], depth: int) -> dict:
    rows = {"none": scores(dist, labels, g_labels), "view": scores(reranked(dist, view, "view", 0, depth), labels, g_labels)}
    for w in WEIGHTS:
        rows[f"blend w={w:g}"] = scores(reranked(dist, view, "blend", w, depth), labels, g_labels)
    return rows


def cost_ms(lib: Library, emb: np.ndarray, depth: int, repeats: int) -> dict[str, float]:
    """Median ms per photo of the plain search, with matched views, and with re-ranking (real index)."""
    cfgs = {"search_top10": MatchConfig(views=False), "matched_view_top10": MatchConfig(),
            f"rerank_top{depth}": MatchConfig(rerank="view", depth=depth)}
    out: dict[str, float] = {}
    with lib.open_reader() as reader:
        for name, cfg in cfgs.items():
            for e in emb[:5]:  # warm-up: pages in SQLite, numpy paths
                search_matched(reader, e[None], 10, cfg)
            times = []
            for _ in range(repeats):
                for e in emb:
                    t = time.perf_counter()
                    search_matched(reader, e[None], 10, cfg)
                    times.append((time.perf_counter() - t) * 1000)
            out[name] = round(float(np.median(times)), 3)
    out["matched_view_extra"] = round(out["matched_view_top10"] - out["search_top10"], 3)
    out[f"rerank_top{depth}_extra"] = round(out[f"rerank_top{depth}"] - out["search_top10"], 3)
    return out


def index_bytes(home: Home) -> dict:
    """The index folder's files (not the WAL side files) per shape, and the codes' and strips' share."""
    from ftspl.engine.index.library import STORE_NAME
    from ftspl.engine.index.store import ShapeStore

    folder = home.index_dir
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.endswith(("-wal", "-shm")))
    with ShapeStore(folder / STORE_NAME, readonly=True) as store:
        n = store.count()
        rows, codes, strips = viewcodes.stored_bytes(store._conn)
    return {"shapes": n, "index_bytes": total, "bytes_per_shape": round(total / max(n, 1), 1),
            "code_bytes_per_shape": round(codes / max(rows, 1), 1) if rows else 0,
            "strip_bytes_per_shape": round(strips / max(rows, 1), 1) if rows else 0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bench", type=Path, required=True)
    ap.add_argument("--home", type=Path, required=True, help="a model with per-view output and an index of the split's gallery")
    ap.add_argument("--split", choices=("val", "queries"), default="val",
                    help="val: tune (val photos vs val_gallery); queries: report (query photos vs target)")
    ap.add_argument("--choice", type=Path, default=RESULTS / "matched_view_val.json",
                    help="with --split queries: the val run's result file (its chosen rule)")
    ap.add_argument("--baseline-home", type=Path, help="the same gallery indexed without codes (bytes comparison)")
    ap.add_argument("--depth", type=int, default=MatchConfig().depth, help="candidates re-ranked")
    ap.add_argument("--repeats", type=int, default=3, help="timing passes over the split's photos")
    ap.add_argument("--bootstrap", type=int, default=500, help="resamples for the paired interval of the change")
    ap.add_argument("--out", default=None, help="result file (default: benchmarks/results/matched_view_<split>.json); none")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    purpose, gallery_dir = check_build(args.bench, args.split)
    chosen = tuned_choice(purpose, args.choice, "chosen_on_val", "rule chosen on val")
    home = Home.resolve(args.home)
    lib = Library(home)
    if not lib.encoders.has_view_output:
        raise SystemExit(f"{lib.model_dir}: model {lib.manifest.model_id} has no per-view output; export it again")
    ids, gallery, g_labels, g_paths = gallery_with_paths(lib)
    check_gallery(g_paths, args.bench / gallery_dir)
    with lib.open_reader() as reader:
        by_id = reader.view_embeddings([int(i) for i in ids])
    missing = [int(i) for i in ids if int(i) not in by_id]
    if missing:
        raise SystemExit(f"{len(missing)} shapes have no view codes (e.g. id {missing[0]}); rebuild the index")
    codes = np.stack([by_id[int(i)] for i in ids])
    emb, labels, failed = embed_labelled(args.bench / args.split, lib)
    if failed:
        raise SystemExit(f"{args.bench / args.split}: {len(failed)} photos failed to load, e.g. {failed[0]}")
    dist, view = pairwise_euclidean(emb, gallery), best_view_sims(emb, codes)
    rows = table(dist, view, labels, g_labels, args.depth)
    if chosen is None:
        chosen = max(rows, key=lambda k: (rows[k]["mean"], k == "none"))  # ties keep the paper's order
    rule, _, w = chosen.partition(" w=")
    interval = paired_interval(dist, reranked(dist, view, rule, float(w or 0), args.depth), labels, g_labels,
                               args.bootstrap)
    res = {
        "model_id": lib.manifest.model_id,
        "gallery": len(g_labels),
        "photos": len(labels),
        "depth": args.depth,
        "criterion": "mean of NN, FT, ST, DCG and 1 - ANMRR on val",
        "chosen_on_val": chosen,
        "mean_change_95ci": interval,
        "bootstrap_rounds": args.bootstrap,
        args.split: rows,
        "ms_per_query": cost_ms(lib, emb, args.depth, args.repeats),
        "bytes": {"with_codes": index_bytes(home)},
    }
    if purpose == "tune":  # "improves": the paired 95% interval of the mean's change lies above 0 on val
        res["adopt_as_default"] = bool(chosen != "none" and interval[0] > 0)
    if args.baseline_home is not None:
        base = index_bytes(Home.resolve(args.baseline_home))
        res["bytes"]["without_codes"] = base
        res["bytes"]["ratio"] = round(res["bytes"]["with_codes"]["bytes_per_shape"] / base["bytes_per_shape"], 2)
    config = {"bench": str(args.bench), "home": str(args.home), "split": args.split, "purpose": purpose,
              "gallery": gallery_dir, "depth": args.depth, "repeats": args.repeats, "bootstrap": args.bootstrap,
              "baseline_home": str(args.baseline_home) if args.baseline_home else None,
              **({"choice": str(args.choice)} if purpose == "report" else {})}
    record = result_record("matched_view.py", argv, config, **res)
    out = args.out or str(RESULTS / f"matched_view_{args.split}.json")
    if out.lower() != "none":
        write_result(Path(out), record)
    if args.json:
        print(json.dumps(record, indent=1))
    else:
        print(f"model {res['model_id']}, gallery {res['gallery']}, photos {res['photos']}, re-rank depth {args.depth}")
        print(f"{args.split} ({purpose}):")
        for name, row in rows.items():
            mark = " <- chosen on val" if name == chosen else ""
            print(f"  {name:12s} " + "  ".join(f"{k} {row[k]:.4f}" for k in (*METRICS, "mean")) + mark)
        print(f"{chosen} vs none, mean change 95% interval:", json.dumps(interval),
              *(["adopt:", res["adopt_as_default"]] if purpose == "tune" else []))
        print("ms per query:", json.dumps(res["ms_per_query"]))
        print("bytes:", json.dumps(res["bytes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
