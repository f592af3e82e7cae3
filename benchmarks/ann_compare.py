"""ANN backends side by side on N trained-like vectors: build time, bytes, peak RSS, recall@10 and speed per ef.

    python benchmarks/run.py --ann-only N [--ann-config SPEC ...] [--ann-queries 200]

``run.py`` supplies the real embeddings; this module does the rest. Each
configuration (a backend of ``ANN_BACKENDS`` plus constructor parameters, e.g.
``hnsw:M=48``) runs in two processes of its own, so peak RSS figures do not mix:

1. *build* (at nice 10): the N base vectors are drawn by ``run.synthetic_like``
   (the same seeds as ``run.hnsw_vs_exact``), the index is built through
   ``make_index`` (``build_s``; ``build_peak_rss_mb``: the process with the
   vectors and the index) and saved with ``AnnIndex.save`` (``index_bytes``,
   ``bytes_per_shape``: manifest + payload);
2. *serve*: a fresh process loads the saved index (``load_s``) and answers every
   query once at its default beam; ``serve_peak_rss_mb`` is that process's peak
   (the interpreter and libraries, ``rss_start_mb``, included). Loads move the
   index into huge pages (``graph.huge_pages_for_new_memory``); the exact twin's
   matrix gets the same. Then the exact twin (``ExactIndex``, numpy) answers
   every query: the ground truth. For each
   ef of the sweep and the size-aware default (``ef: "auto"``), the index
   answers every query one at a time, then the exact twin answers an eighth of
   them right after, once with numpy's default BLAS threads and once with one
   thread. ``speedup_vs_exact`` is the ratio of the mean times of the faster
   exact block and the ANN block (``speedup_p50`` of the medians), so the load
   of this shared machine changes both sides alike. (On 2 shared cores a
   two-thread BLAS call stalls whenever another process holds the other core:
   the same exact search then takes 0.3 or 8 ms at 20k vectors; taking the
   faster block keeps such stalls from flattering the ANN.) A row meets the
   target with recall@10 >= 0.99 and ``speedup_vs_exact`` >= 20.

The parent writes ``benchmarks/results/ann_N.json`` and prints one JSON line.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The issue's target: recall@10 >= 0.99 at >= 20x the exact twin, one query at a time.
TARGET_RECALL, TARGET_SPEEDUP = 0.99, 20.0
DEFAULT_CONFIGS = ("hnsw", "faiss-hnsw", "usearch")
DEFAULT_EFS = (64, 128, 192, 256, 320, 384, 448, 512, 768)
WARMUP_QUERIES = 20
#: Builds run at a lower priority (they hold both cores for minutes on a shared machine); queries do not.
BUILD_NICE = 10


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_config(spec: str) -> tuple[str, dict]:
    """``backend[:key=value,...]`` -> (backend, params); values are ints, or None for ``none``."""
    from ftspl.engine.errors import UnknownKeyError
    from ftspl.engine.index.ann import ANN_BACKENDS

    backend, _, rest = spec.partition(":")
    if backend not in ANN_BACKENDS or backend == "exact":
        raise UnknownKeyError("ANN backend to compare", backend, [b for b in ANN_BACKENDS if b != "exact"])
    params: dict = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            sys.exit(f"--ann-config {spec}: expected key=value, got {item!r}")
        try:
            params[key.strip()] = None if value.strip().lower() == "none" else int(value)
        except ValueError:
            sys.exit(f"--ann-config {spec}: {key} must be an integer, got {value!r}")
    return backend, params


# --------------------------------------------------------------------------- worker (one process per config)
def _rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _timed(index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-10 ids per query and each query's milliseconds, one query at a time."""
    for q in queries[:WARMUP_QUERIES]:
        index.query(q[None], 10)
    out, ms = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(index.query(q[None], 10)[0][0])
        ms.append((time.perf_counter() - t) * 1000)
    return np.stack(out), np.asarray(ms)


def _blas_threads(n: int):
    """numpy's BLAS limited to ``n`` threads (threadpoolctl, from the dev extra), or unchanged without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(n, user_api="blas")


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())]))


def build_worker(job: dict) -> dict:
    """Build the index through the registry and save it: build time, peak RSS, bytes."""
    from rich.console import Console
    from rich.progress import Progress
    from run import synthetic_like

    from ftspl.engine.index.ann import make_index

    n = job["n"]
    real = np.load(job["real"])
    base = synthetic_like(real, n, seed=1)
    ids = np.arange(n, dtype=np.int64)
    index = make_index(job["backend"], real.shape[1], **job["params"])
    chunk = max(1, n // 20)
    t = time.perf_counter()
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"{job['name']}: build", total=n)
        for s in range(0, n, chunk):
            index.add(ids[s : s + chunk], base[s : s + chunk])
            bar.update(task, completed=min(n, s + chunk))
            if (s // chunk) % 5 == 4:
                log(f"{job['name']}: {min(n, s + chunk)} / {n} added, {time.perf_counter() - t:.0f} s")
    build_s = time.perf_counter() - t
    out_dir = Path(job["dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t = time.perf_counter()
    index.save(out_dir / "vectors.ann", meta={"vectors": n})
    return {"params": {**job["params"], "M": index.M, "ef_construction": index.ef_construction},
            "build_s": round(build_s, 1), "save_s": round(time.perf_counter() - t, 1),
            "build_peak_rss_mb": round(_rss_mb(), 1),
            "index_bytes": (size := sum(p.stat().st_size for p in out_dir.iterdir())),
            "bytes_per_shape": round(size / n, 1)}


def serve_worker(job: dict) -> dict:
    """Load the saved index (serving RSS), then ANN and exact blocks in turn at each ef."""
    from run import synthetic_like

    from ftspl.engine.index.ann import ExactIndex, load_index
    from ftspl.engine.index.ann.graph import huge_pages_for_new_memory

    n = job["n"]
    real = np.load(job["real"])
    queries = synthetic_like(real, job["queries"], seed=2)
    rss_start = _rss_mb("VmRSS")
    t = time.perf_counter()
    index = load_index(Path(job["dir"]) / "vectors.ann")
    load_s = time.perf_counter() - t
    if hasattr(index, "num_threads"):
        index.num_threads = 1  # one query at a time on one core
    _timed(index, queries)  # at the default beam
    serve_rss = _rss_mb()
    shutil.rmtree(job["dir"], ignore_errors=True)

    log(f"{job['name']}: loaded in {load_s:.1f} s; exact twin for the ground truth")
    with huge_pages_for_new_memory():  # as the graph backends' loads get: the exact side is not handicapped
        exact = ExactIndex(real.shape[1])
        exact.add(np.arange(n, dtype=np.int64), synthetic_like(real, n, seed=1))
    gc.collect()
    with _blas_threads(1):
        truth, exact_ms = _timed(exact, queries)
    exact_queries = queries[: job["exact_block"]]
    sweep = []
    for ef in [*job["efs"], None]:
        index.ef_search = ef
        got, ms = _timed(index, queries)
        # the exact twin right after, same machine load: numpy's default threads, then one thread
        _, ems = _timed(exact, exact_queries)
        with _blas_threads(1):
            _, ems1 = _timed(exact, exact_queries)
        fast = min((ems, ems1), key=np.mean)  # the faster exact block is the baseline
        sweep.append({
            "ef": ef if ef is not None else "auto", "ef_used": index.ef_search,
            "recall_at_10": round(_recall(got, truth), 4),
            "ms_per_query": round(float(ms.mean()), 3), "p50_ms": round(float(np.median(ms)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "exact_ms_per_query": round(float(ems.mean()), 3), "exact_1thread_ms_per_query": round(float(ems1.mean()), 3),
            "speedup_vs_exact": round(float(fast.mean() / ms.mean()), 1),
            "speedup_p50": round(float(np.median(fast) / np.median(ms)), 1),
            "load_avg_1min": round(os.getloadavg()[0], 1),
        })
        sweep[-1]["meets_target"] = (sweep[-1]["recall_at_10"] >= TARGET_RECALL
                                     and sweep[-1]["speedup_vs_exact"] >= TARGET_SPEEDUP)
    return {"load_s": round(load_s, 2), "rss_start_mb": round(rss_start, 1), "serve_peak_rss_mb": round(serve_rss, 1),
            "exact_1thread_ms_per_query": round(float(exact_ms.mean()), 3), "sweep": sweep}


def _run_worker(mode: str, job: dict, nice: int) -> dict | None:
    r = subprocess.run([sys.executable, __file__, mode, json.dumps(job)], stdout=subprocess.PIPE, text=True,
                       check=False, env=dict(os.environ, PYTHONWARNINGS="ignore"),
                       preexec_fn=(lambda: os.nice(nice)) if nice else None)
    if r.returncode:
        log(f"{job['name']}: {mode} worker failed ({r.returncode}); see the lines above")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- parent
def compare(real: np.ndarray, n: int, work: Path, configs: list[str], n_queries: int = 200,
            efs: tuple[int, ...] = DEFAULT_EFS, on_row=None) -> dict:
    """Run every configuration in its own process, one after another; the combined figures.

    ``on_row(partial_result)`` runs after each configuration, so a long run keeps what it measured.
    """
    work = Path(work) / f"ann-{n}"
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "real.npy", real)
    rows = []
    for spec in configs:
        backend, params = parse_config(spec)
        job = {"name": spec, "backend": backend, "params": params, "n": n, "queries": n_queries, "efs": list(efs),
               "exact_block": max(1, n_queries // 8),
               "real": str(work / "real.npy"), "dir": str(work / spec.replace(":", "_").replace(",", "_"))}
        log(f"{spec}: building on {n} x {real.shape[1]}")
        t = time.perf_counter()
        built = _run_worker("--build", job, BUILD_NICE)
        served = _run_worker("--serve", job, 0) if built else None
        shutil.rmtree(job["dir"], ignore_errors=True)
        if served is None:
            rows.append({"name": spec, "backend": backend, "params": params, "error": "worker failed", **(built or {})})
            continue
        row = {"name": spec, "backend": backend, **built, **served, "wall_s": round(time.perf_counter() - t, 1)}
        rows.append(row)
        best = best_row(row)
        log(f"{spec}: build {row['build_s']} s, {row['bytes_per_shape']} B/shape; "
            + (f"meets the target at ef {best['ef_used']}: recall {best['recall_at_10']}, {best['speedup_vs_exact']}x"
               if best else "target not met"))
        if on_row:
            on_row(_summary(real, n, n_queries, rows))
    return _summary(real, n, n_queries, rows)


def _summary(real: np.ndarray, n: int, n_queries: int, rows: list[dict]) -> dict:
    return {"vectors": n, "dim": int(real.shape[1]), "queries": n_queries,
            "target": {"recall_at_10": TARGET_RECALL, "speedup_vs_exact": TARGET_SPEEDUP},
            "engines": rows,
            "met_by": [{"name": r["name"], **best_row(r)} for r in rows if best_row(r)]}


def best_row(row: dict) -> dict | None:
    """The fastest sweep row that meets the target, if any."""
    ok = [s for s in row.get("sweep", []) if s["meets_target"]]
    return min(ok, key=lambda s: s["ms_per_query"]) if ok else None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--build", "--serve"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        work_fn = build_worker if sys.argv[1] == "--build" else serve_worker
        print(json.dumps(work_fn(json.loads(sys.argv[2]))))
    else:
        sys.exit("run through benchmarks/run.py --ann-only N")
