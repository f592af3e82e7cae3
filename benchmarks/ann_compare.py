"""ANN backends side by side on N trained-like vectors: build time, bytes, peak RSS, recall@10 and speed per ef.

    python benchmarks/run.py --ann-only N [--ann-config SPEC ...] [--ann-queries 200]

``run.py`` supplies the real embeddings; this module does the rest. Each
configuration (a backend of ``ANN_BACKENDS`` plus constructor parameters, e.g.
``hnsw:M=48``) runs in its own process, so peak RSS figures do not mix:

1. the N base vectors and the queries are drawn by ``run.synthetic_like`` (the
   same seeds as ``run.hnsw_vs_exact``); the index is built through
   ``make_index`` (``build_s``; ``build_peak_rss_mb``: the process with the
   vectors and the index), saved with ``AnnIndex.save`` (``index_bytes``,
   ``bytes_per_shape``: manifest + payload) and dropped;
2. the peak-RSS mark is reset, the saved index is loaded (``load_s``) and
   answers every query once at its default beam: ``serve_peak_rss_mb`` is that
   process's peak (interpreter and libraries included: ``rss_start_mb``);
3. the exact twin (``ExactIndex``, numpy) answers every query: the ground truth;
4. for each ef of the sweep and the size-aware default (``ef: "auto"``), the
   index answers every query one at a time, then the exact twin answers a
   quarter of them right after. ``speedup_vs_exact`` is the ratio of the mean
   times of those two adjacent blocks (``speedup_p50`` of the medians), so the
   load of this shared machine changes both sides alike. A row meets the
   target with recall@10 >= 0.99 and ``speedup_vs_exact`` >= 20.

The parent writes ``benchmarks/results/ann_N.json`` and prints one JSON line.
"""

from __future__ import annotations

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
DEFAULT_EFS = (64, 128, 192, 256, 320, 384, 512, 768)
WARMUP_QUERIES = 20


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


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


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


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), truth.tolist())]))


def worker(job: dict) -> dict:
    """Build and save; reload (serving RSS); then ANN and exact blocks in turn: one configuration's figures."""
    from rich.console import Console
    from rich.progress import Progress
    from run import synthetic_like

    from ftspl.engine.index.ann import ExactIndex, load_index, make_index

    n, backend, params = job["n"], job["backend"], job["params"]
    real = np.load(job["real"])
    queries = synthetic_like(real, job["queries"], seed=2)
    rss_start = _rss_mb("VmRSS")
    base = synthetic_like(real, n, seed=1)
    ids = np.arange(n, dtype=np.int64)
    index = make_index(backend, real.shape[1], **params)
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
    build_rss = _rss_mb()
    out_dir = Path(job["dir"])
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t = time.perf_counter()
    index.save(out_dir / "vectors.ann", meta={"vectors": n})
    save_s = time.perf_counter() - t
    index_bytes = sum(p.stat().st_size for p in out_dir.iterdir())
    config = {"M": index.M, "ef_construction": index.ef_construction}
    del index, base
    gc.collect()

    # serving: a process that loads the saved index and answers queries at the default beam
    reset = _reset_peak_rss()
    rss_before_load = _rss_mb("VmRSS")
    t = time.perf_counter()
    index = load_index(out_dir / "vectors.ann")
    load_s = time.perf_counter() - t
    if hasattr(index, "num_threads"):
        index.num_threads = 1  # one query at a time on one core
    _timed(index, queries)
    serve_rss = _rss_mb()
    shutil.rmtree(out_dir, ignore_errors=True)

    log(f"{job['name']}: built in {build_s:.0f} s, loaded in {load_s:.1f} s; exact twin for the ground truth")
    exact = ExactIndex(real.shape[1])
    exact.add(ids, synthetic_like(real, n, seed=1))
    gc.collect()
    truth, exact_ms = _timed(exact, queries)
    exact_queries = queries[: job["exact_block"]]
    sweep = []
    for ef in [*job["efs"], None]:
        index.ef_search = ef
        got, ms = _timed(index, queries)
        _, ems = _timed(exact, exact_queries)  # the exact twin right after, same machine load
        sweep.append({
            "ef": ef if ef is not None else "auto", "ef_used": index.ef_search,
            "recall_at_10": round(_recall(got, truth), 4),
            "ms_per_query": round(float(ms.mean()), 3), "p50_ms": round(float(np.median(ms)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "exact_ms_per_query": round(float(ems.mean()), 3), "exact_p50_ms": round(float(np.median(ems)), 3),
            "speedup_vs_exact": round(float(ems.mean() / ms.mean()), 1),
            "speedup_p50": round(float(np.median(ems) / np.median(ms)), 1),
            "load_avg_1min": round(os.getloadavg()[0], 1),
        })
        sweep[-1]["meets_target"] = (sweep[-1]["recall_at_10"] >= TARGET_RECALL
                                     and sweep[-1]["speedup_vs_exact"] >= TARGET_SPEEDUP)
    return {
        "name": job["name"], "backend": backend, "params": {**params, **config},
        "build_s": round(build_s, 1), "save_s": round(save_s, 1), "load_s": round(load_s, 2),
        "index_bytes": index_bytes, "bytes_per_shape": round(index_bytes / n, 1),
        "rss_start_mb": round(rss_start, 1), "build_peak_rss_mb": round(build_rss, 1),
        "serve_rss_before_load_mb": round(rss_before_load, 1),
        "serve_peak_rss_mb": round(serve_rss, 1) if reset else None,
        "exact_ms_per_query": round(float(exact_ms.mean()), 3), "sweep": sweep,
    }


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
               "exact_block": max(1, n_queries // 4),
               "real": str(work / "real.npy"), "dir": str(work / spec.replace(":", "_").replace(",", "_"))}
        log(f"{spec}: building on {n} x {real.shape[1]}")
        t = time.perf_counter()
        r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], stdout=subprocess.PIPE, text=True, check=False,
                           env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if r.returncode:
            log(f"{spec}: worker failed ({r.returncode}); see the lines above")
            rows.append({"name": spec, "backend": backend, "params": params, "error": f"exit {r.returncode}"})
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["wall_s"] = round(time.perf_counter() - t, 1)
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
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        print(json.dumps(worker(json.loads(sys.argv[2]))))
    else:
        sys.exit("run through benchmarks/run.py --ann-only N")
