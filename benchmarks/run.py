"""ftspl's speed and memory, measured beside the design card's obvious pipeline, in one run.

    python benchmarks/run.py [--quick] [--json] [--meshes N] [--out benchmarks/results/perf.json]

What it measures (all on this machine, same inputs, same run):

* ``index_meshes_per_s``: ``ftspl index add`` on N real Sweet Home 3D furniture
  meshes (the first N models of the curated class map, always the same files):
  load + render + encode + insert, by the command's own clock (``process_wall_s``
  adds interpreter start-up), with the default export (``--precision auto``:
  int8 on a CPU). ``index_meshes_per_s_fp32`` is the same run exported
  ``--precision fp32``, indexed alternately with it (``--index-rounds`` each,
  medians); ``index_speedup_vs_fp32`` is their ratio.
* ``stages``: ``benchmarks/stages.py`` on both models (CPU ms per mesh for each
  stage, what each change replaced, the ceiling of a perfect overlap).
* ``peer_meshes_per_s``: the same meshes through the pipeline a user would glue
  together: ``trimesh.load``, pyrender offscreen rendering of the same 12 views,
  the same trained encoder run eagerly in torch, embeddings kept in a numpy
  matrix for exact search. ``speedup_vs_peer`` is the ratio.
* ``query_p50_ms`` / ``query_p95_ms``: warm photo queries (decode, preprocess,
  encode, HNSW search, metadata) against an index of ``--index-size`` shapes:
  the real shapes' real embeddings plus synthetic ones drawn around them
  (a real embedding + Gaussian noise with the real per-dimension spread, then
  L2-normalised), in a separate process that also reports ``peak_rss_mb``.
* ``cold_query_s``: a fresh ``ftspl query PHOTO --top 10`` process, median of 3.
* ``hnsw_recall_at_10`` and ``hnsw_speedup_vs_exact``: the index's HNSW with its
  default M/ef against the exact brute-force twin, one query at a time, on
  100k x 256 (``--quick``) or 1M x 256 vectors.
* ``train_head_s_per_round``: the FTSPL head-mode round time on the small SH3D
  benchmark (``ftspl data sh3d --small``) with ``ftspl train``'s default budget
  (``TrainConfig``); the model it trains is the one all the figures above use.
* ``cuda``: the same figures with onnxruntime's CUDA provider and the full-mode
  training round time when a GPU is present; ``null`` otherwise (never faked).
* ``load_average`` (start and end) and ``niceness``: this machine is shared, so
  every result says how busy it was; run it as ``nice -n -5 python
  benchmarks/run.py`` (root) to take precedence over long jobs at nice 0.

Data and models are cached under ``<cache>/perf`` (``<home>/cache``, or ``$FTSPL_CACHE``). The work is
split by concern into helper modules: ``perflib`` (machine, meshes, the model, ``index add``), ``peerlib``
(the peer), ``querylib`` (the big index, warm and cold queries) and ``annlib`` (the ANN figures and
``--ann-only``); this script runs them and writes the results. Needs the
``bench`` extra for the peer: ``pip install -e '.[train,bench]'`` and
``pip install --no-deps pyrender==0.1.45`` (pyrender pins PyOpenGL 3.1.0 but
runs on the current one; it is the peer only, never a dependency of ftspl).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from annlib import ann_only, hnsw_vs_exact
from common import BENCHMARKS, RESULTS, ROOT, cli_run
from peerlib import index_peer
from perflib import (export_to, index_ours, log, machine, model_precision, perf_meshes, perf_work, real_embeddings,
                     train_model)
from querylib import build_big_index, cold_query, query_bench, query_worker

TARGETS = {"index_meshes_per_s": (">=", 8.0), "index_speedup_vs_fp32": (">=", 2.0), "speedup_vs_peer": (">=", 8.0),
           "query_p50_ms": ("<=", 8.0), "cold_query_s": ("<=", 0.5), "hnsw_recall_at_10": (">=", 0.99),
           "hnsw_speedup_vs_exact": (">=", 20.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k-vector HNSW recall test instead of 1M (< 10 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--meshes", type=int, default=60, help="real meshes to index (ours and the peer)")
    ap.add_argument("--index-size", type=int, default=100_000, help="shapes in the query-latency index")
    ap.add_argument("--index-rounds", type=int, default=5,
                    help="index add runs of each export (default and fp32), alternated; medians are reported")
    ap.add_argument("--stages", type=int, default=40, help="meshes for benchmarks/stages.py (0: skip)")
    ap.add_argument("--work", type=Path, default=None, help="default: <cache>/perf (<home>/cache or $FTSPL_CACHE)")
    ap.add_argument("--out", type=Path, default=RESULTS / "perf.json")
    ap.add_argument("--query-worker", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--ann-only", type=int, metavar="N",
                    help="only the ANN backends vs the exact twin on N vectors (build, bytes, RSS, ef sweep), written "
                         "to results/ann_N.json; uses the embeddings of an earlier run's index (made first if absent)")
    ap.add_argument("--ann-config", action="append", metavar="SPEC",
                    help="with --ann-only: a backend and parameters, e.g. faiss-hnsw or hnsw:M=48,ef_construction=200 "
                         "(repeat; default: every graph backend with its defaults)")
    ap.add_argument("--ann-queries", type=int, default=200, help="with --ann-only: queries per ef")
    args = ap.parse_args()
    if args.work is None:
        args.work = perf_work()
    if args.ann_only:
        cmd = " ".join(["python benchmarks/run.py --ann-only", str(args.ann_only),
                        *(f"--ann-config {c}" for c in args.ann_config or [])])
        ann_only(args.work, args.ann_only, args.out.parent, args.ann_config, args.ann_queries, cmd)
        return
    if args.query_worker:
        query_worker(args.query_worker[0], args.query_worker[1:], repeats=5)
        return

    t_all = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
                 "load_average": {"start": [round(x, 2) for x in os.getloadavg()]}, "niceness": os.nice(0)}
    files = perf_meshes(work, args.meshes)
    home, train, queries_dir = train_model(work)
    train["precision"] = model_precision(home)
    res["train"] = train
    fp32_home = work / "home-fp32"
    res["train"]["fp32_export"] = export_to(work, fp32_home, "fp32")
    photos = sorted(queries_dir.rglob("*.jpg"))[:20]

    res["index"] = index_both(home, fp32_home, work / "meshes", args.index_rounds)
    ours, fp32 = res["index"]["ours"], res["index"]["fp32"]
    log(f"  {ours['meshes_per_s']} meshes/s ({train['precision']}), fp32 {fp32['meshes_per_s']}; "
        "peer (trimesh + pyrender + torch) on the same meshes")
    peer = index_peer(work / "run", files)
    res["index"]["peer"] = peer
    if args.stages:
        log(f"per-stage CPU time, {args.stages} meshes (benchmarks/stages.py)")
        res["stages"] = stages(home, fp32_home, args.stages)

    log(f"building a {args.index_size}-shape index for query latency")
    big_home = work / "home-big"
    res["big_index"] = build_big_index(home, big_home, args.index_size)
    log("warm queries")
    res["query"] = query_bench(big_home, photos)
    res["cold"] = cold_query(big_home, photos[0])

    real = real_embeddings(home)
    n = 100_000 if args.quick else 1_000_000
    log(f"HNSW vs exact on {n} x {real.shape[1]}")
    res["ann"] = hnsw_vs_exact(real, n)

    res["cuda"] = cuda_figures(home, work, photos) if res["machine"]["gpu"] else None

    summary = {
        "index_meshes_per_s": ours["meshes_per_s"], "index_precision": train["precision"],
        "index_meshes_per_s_fp32": fp32["meshes_per_s"],
        "index_speedup_vs_fp32": round(ours["meshes_per_s"] / fp32["meshes_per_s"], 2),
        "stage_ceiling_ratio": (res.get("stages") or {}).get("ratio_bound", {}).get("after"),
        "peer_meshes_per_s": peer.get("meshes_per_s"),
        "speedup_vs_peer": round(ours["meshes_per_s"] / peer["meshes_per_s"], 2) if peer.get("meshes_per_s") else None,
        "query_p50_ms": res["query"]["p50_ms"], "query_p95_ms": res["query"]["p95_ms"],
        "cold_query_s": res["cold"]["cold_query_s"],
        "hnsw_recall_at_10": res["ann"]["hnsw_recall_at_10"], "hnsw_speedup_vs_exact": res["ann"]["hnsw_speedup_vs_exact"],
        "hnsw_vectors": res["ann"]["vectors"],
        "index_bytes_per_shape": res["big_index"]["index_bytes_per_shape"], "peak_rss_mb": res["query"]["peak_rss_mb"],
        "train_head_s_per_round": train["train_head_s_per_round"],
        "cuda_index_meshes_per_s": (res["cuda"] or {}).get("index_meshes_per_s"),
        "cuda_query_p50_ms": (res["cuda"] or {}).get("query_p50_ms"),
        "train_full_s_per_round_cuda": (res["cuda"] or {}).get("train_full_s_per_round"),
    }
    summary["targets_met"] = {k: (summary[k] is not None and (summary[k] >= v if op == ">=" else summary[k] <= v))
                              for k, (op, v) in TARGETS.items()}
    res["summary"] = summary
    res["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if not args.json:
        width = max(map(len, summary))
        for k, v in summary.items():
            if k == "targets_met":
                continue
            tgt = TARGETS.get(k)
            mark = "" if tgt is None else f"  (target {tgt[0]} {tgt[1]}: {'ok' if summary['targets_met'][k] else 'MISSED'})"
            print(f"{k:<{width}}  {v}{mark}")
        print(f"results: {args.out} ({res['total_s']} s)")
    else:
        print(json.dumps({**summary, "total_s": res["total_s"], "results": str(args.out)}))


def index_both(home: Path, fp32_home: Path, meshes: Path, rounds: int) -> dict:
    """``ftspl index add --rebuild`` of the same meshes with the default export and the fp32 one, alternated
    ``rounds`` times (so both see the same hour of a shared machine); each side's median run."""
    runs: dict[str, list[dict]] = {"ours": [], "fp32": []}
    for r in range(max(1, rounds)):
        for name, h in (("fp32", fp32_home), ("ours", home)):
            runs[name].append(index_ours(h, meshes))
            log(f"index add, {name}, round {r + 1}: {runs[name][-1]['meshes_per_s']} meshes/s")
    out = {}
    for name, rs in runs.items():
        med = statistics.median(x["meshes_per_s"] for x in rs)
        best = min(rs, key=lambda x: abs(x["meshes_per_s"] - med))
        out[name] = {**best, "meshes_per_s": round(med, 2), "runs_meshes_per_s": [x["meshes_per_s"] for x in rs]}
    return out


def stages(home: Path, fp32_home: Path, meshes: int) -> dict:
    """``benchmarks/stages.py`` on both homes' models, in its own process (one thread per stage)."""
    from ftspl.engine.home import Home

    models = [str(Home(h).active_model_dir()) for h in (fp32_home, home)]
    cmd = [sys.executable, str(BENCHMARKS / "stages.py"), "--meshes", str(meshes), "--json"]
    for m in models:
        cmd += ["--model", m]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if r.returncode != 0:
        raise SystemExit(f"stages.py failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cuda_figures(home: Path, work: Path, photos: list[Path]) -> dict:
    """GPU figures: CUDA execution provider for indexing and queries, full-mode training round time."""
    out: dict = {}
    ours = index_ours(home, work / "meshes", device="cuda")
    out["index_meshes_per_s"] = ours["meshes_per_s"]
    out["query_p50_ms"] = query_bench(work / "home-big", photos, device="cuda")["p50_ms"]
    data = work / "data"
    # one round of TrainConfig's budget (its epochs per round and warm-up), full mode
    res = cli_run("train", "--source", str(data / "source"), "--target", str(data / "target"),
                  "--out", str(work / "run-full"), "--mode", "full", "--rounds", "1", "--device", "cuda", home=home).data
    rounds = [r["seconds"] for r in res.get("rounds", []) if r.get("round", 0) >= 1]
    out["train_full_s_per_round"] = rounds[0] if rounds else None
    return out


if __name__ == "__main__":
    main()
