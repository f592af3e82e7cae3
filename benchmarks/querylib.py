"""Query latency: the big index (real shapes plus synthetic ones), warm queries in a worker process, cold
``ftspl query`` processes, and long-lived in-process query workers whose blocks interleave with HTTP load.
A helper module (``run.py``, ``serve_load.py``), not a script."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import ann, cli_run, worker_command
from perflib import store_path


def build_big_index(src_home: Path, dst_home: Path, size: int) -> dict:
    """Copy the model, then store the real shapes plus synthetic ones and build the default backend's index."""
    from annlib import synthetic_like

    from ftspl.engine.home import Home
    from ftspl.engine.index.library import ANN_NAME
    from ftspl.engine.index.store import ShapeRecord, ShapeStore
    from ftspl.engine.model.manifest import ModelManifest

    shutil.rmtree(dst_home, ignore_errors=True)
    src, dst = Home(Path(src_home)), Home(Path(dst_home))
    shutil.copytree(src.models, dst.models)
    dst.index_dir.mkdir(parents=True)
    real_store = ShapeStore(store_path(src.root), readonly=True)
    info = real_store.get_info()
    ids, real = real_store.all_embeddings()
    rows = {r.id: r for r in real_store.get([int(i) for i in ids], previews=True)}
    real_store.close()
    manifest = ModelManifest.load(dst.active_model_dir())
    t = time.perf_counter()
    store = ShapeStore(store_path(dst.root))
    store.ensure_compatible(info["model_id"], info["model_hash"], info["render_spec_hash"], manifest.embed_dim)
    store.set_info("render_spec", info["render_spec"])
    records = [ShapeRecord(rows[int(i)].path, f"real-{i}", rows[int(i)].label, None, "mesh", e, rows[int(i)].preview)
               for i, e in zip(ids, real)]
    store.upsert_batch(records)
    synth = synthetic_like(real, size - len(real), seed=0)
    for s in range(0, len(synth), 20000):
        store.upsert_batch([ShapeRecord(f"/synthetic/{s + j}.obj", f"synthetic-{s + j}", None, None, "mesh", e)
                            for j, e in enumerate(synth[s : s + 20000])])
    all_ids, all_vecs = store.all_embeddings()
    t_store = time.perf_counter() - t
    t = time.perf_counter()
    reg = ann()
    index = reg.make_index(reg.DEFAULT_BACKEND, manifest.embed_dim)  # what a new library builds
    index.add(all_ids, all_vecs)
    t_hnsw = time.perf_counter() - t
    index.save(dst.index_dir / ANN_NAME, meta={"generation": store.generation()})
    store.close()
    size_bytes = sum(p.stat().st_size for p in dst.index_dir.rglob("*") if p.is_file())
    return {"shapes": int(len(all_ids)), "store_build_s": round(t_store, 1), "hnsw_build_s": round(t_hnsw, 1),
            "index_bytes": size_bytes, "index_bytes_per_shape": round(size_bytes / len(all_ids), 1),
            "hnsw_M": index.M, "hnsw_ef_construction": index.ef_construction, "hnsw_ef": index.ef_search,
            "backend": reg.DEFAULT_BACKEND}


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM): unlike ru_maxrss it is not inherited across fork + exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def query_worker(home: str, photos: list[str], repeats: int) -> None:
    """(Subprocess) warm queries against ``home``; prints latency percentiles and peak RSS as JSON."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.model.encoders import RuntimeConfig

    device = os.environ.get("FTSPL_BENCH_DEVICE", "cpu")
    lib = Library(Home(Path(home)), RuntimeConfig(device=device))
    times = []
    with lib.open_reader() as reader:
        reader.query_photos(photos[:2], 10)  # warm-up: sessions, caches
        for _ in range(repeats):
            for p in photos:
                t = time.perf_counter()
                hits = reader.query_photos([p], 10)
                times.append((time.perf_counter() - t) * 1000)
                assert len(hits[0].hits) == 10
    rss_mb = peak_rss_mb()
    print(json.dumps({"queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 2),
                      "p95_ms": round(float(np.percentile(times, 95)), 2), "peak_rss_mb": round(rss_mb, 1)}))


def query_worker_main(argv: list[str]) -> int:
    """(Child process) ``HOME PHOTO...``: :func:`query_worker` with 5 repeats."""
    query_worker(argv[0], argv[1:], repeats=5)
    return 0


def query_bench(home: Path, photos: list[Path], device: str = "cpu") -> dict:
    """Warm query latency and peak RSS, measured in a process of its own."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", FTSPL_BENCH_DEVICE=device)
    r = subprocess.run(worker_command("querylib", "query_worker_main", str(home), *map(str, photos)),
                       capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"query worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cold_query(home: Path, photo: Path) -> dict:
    """Fresh processes. The very first one on a machine also optimises the encoder graph and caches it
    (``engine/model/graphcache.py``, under the home's cache: ``$FTSPL_CACHE`` when set); it is reported
    apart, the target is the median of 3 after.

    ftspl's modules are byte-compiled first, as ``pip install`` does: a session that sets
    ``PYTHONDONTWRITEBYTECODE`` (this workplace's does) would otherwise compile every module of the
    editable checkout in every process, about 0.1 s that no installed copy pays."""
    import compileall

    import ftspl
    from ftspl.engine.home import Home

    compileall.compile_dir(str(Path(ftspl.__file__).parent), quiet=1)
    shutil.rmtree(Home(Path(home)).cache / "onnxruntime", ignore_errors=True)
    from ftspl.engine.scoring.regions import DEFAULT_REGIONS

    first = cli_run("query", str(photo), "--top", "10", home=home).wall_s
    walls = [cli_run("query", str(photo), "--top", "10", home=home).wall_s for _ in range(3)]
    whole = [cli_run("query", str(photo), "--top", "10", "--regions", "none", home=home).wall_s for _ in range(3)]
    return {"cold_query_s": round(statistics.median(walls), 3), "runs_s": [round(w, 3) for w in walls],
            "regions": DEFAULT_REGIONS, "whole_photo_cold_query_s": round(statistics.median(whole), 3),
            "whole_photo_runs_s": [round(w, 3) for w in whole],
            "first_on_machine_s": round(first, 3), "bytecode": "compiled first, as pip install does"}


# --------------------------------------------------------------------------- in-process baseline (serve_load.py)
def inprocess_worker(home: str, threads: int, photos: list[str]) -> None:
    """(Subprocess) warm :class:`Reader` queries: for each line N on stdin, N queries; their ms as a JSON line."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.library import Library
    from ftspl.engine.model.encoders import RuntimeConfig

    lib = Library(Home(Path(home)), RuntimeConfig(device="cpu", intra_op_threads=threads))
    i = 0
    with lib.open_reader() as reader:
        reader.query_photos(photos[:2], 10)
        print("ready", flush=True)
        for line in sys.stdin:
            times = []
            for _ in range(int(line)):
                t = time.perf_counter()
                assert len(reader.query_photos([photos[i % len(photos)]], 10)[0].hits) == 10
                times.append(round((time.perf_counter() - t) * 1000, 3))
                i += 1
            print(json.dumps(times), flush=True)


def inprocess_worker_main(argv: list[str]) -> int:
    """(Child process) ``HOME THREADS PHOTO...``: :func:`inprocess_worker`."""
    home, threads, *photos = argv
    inprocess_worker(home, int(threads), photos)
    return 0


class InProcess:
    """A long-lived in-process query worker, so its blocks interleave with the HTTP ones."""

    def __init__(self, home: Path, photos: list[Path], threads: int) -> None:
        self.threads = threads
        self.times: list[float] = []
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen(worker_command("querylib", "inprocess_worker_main", str(home), str(threads),
                                                    *map(str, photos)),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit("the in-process query worker did not start")

    def send(self, n: int) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()

    def recv(self, keep: bool = True) -> None:
        times = json.loads(self.proc.stdout.readline())
        if keep:
            self.times += times

    def close(self) -> dict:
        self.proc.stdin.close()
        self.proc.wait(60)
        t = np.asarray(self.times or [np.nan])
        return {"threads": self.threads, "queries": len(self.times), "p50_ms": round(float(np.percentile(t, 50)), 2),
                "p95_ms": round(float(np.percentile(t, 95)), 2)}


class Baseline:
    """In-process figures taken between the HTTP blocks: latency (one thread, all cores), and how far
    this machine lets two query processes scale right now (no HTTP, no shared interpreter)."""

    def __init__(self, home: Path, photos: list[Path]) -> None:
        self.one, self.all, self.other = (InProcess(home, photos, t) for t in (1, 0, 1))
        self.alone_s = self.pair_s = 0.0
        self.n = 0

    def round(self, n: int) -> None:
        t = time.perf_counter()
        self.one.send(n)
        self.one.recv()
        self.alone_s += time.perf_counter() - t
        self.all.send(n)
        self.all.recv()
        t = time.perf_counter()
        for w in (self.one, self.other):  # side by side; their latencies are not kept
            w.send(n)
        for w in (self.one, self.other):
            w.recv(keep=False)
        self.pair_s += time.perf_counter() - t
        self.n += n

    def close(self) -> dict:
        one, all_, _ = self.one.close(), self.all.close(), self.other.close()
        alone, pair = self.n / self.alone_s, 2 * self.n / self.pair_s
        return {"one_thread": one, "all_cores": all_, "machine_scaling": {
            "one_process_qps": round(alone, 2), "two_processes_qps": round(pair, 2), "ratio": round(pair / alone, 2)}}


__all__ = ["Baseline", "InProcess", "inprocess_worker", "inprocess_worker_main", "build_big_index", "cold_query", "peak_rss_mb", "query_bench", "query_worker", "query_worker_main"]
