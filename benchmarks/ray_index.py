"""``ftspl index add`` with and without ``--ray`` on the same real meshes: throughput, scaling, equality.

    python benchmarks/ray_index.py [--meshes 40] [--baseline-meshes 8] [--cores 1 2] [--repeat 1] [--merge-rows 0]
                                   [--nice 0] [--model DIR] [--out FILE] [--entry NAME] [--json]

Indexes the first N Sweet Home 3D models of the curated class map (the files
``benchmarks/run.py`` uses, extracted once under ``<home>/cache/perf``) with the real CLI,
each run in a fresh home and pinned with ``taskset`` to the cores it is given:

* ``plain``: ``ftspl index add MESHES`` on every core of ``--cores``' largest entry;
* ``ray_K``: ``ftspl index add MESHES --ray local`` pinned to K cores (Ray sees K
  CPUs and sizes its actor pools from them); ``first_result_s`` is Ray's start plus
  the actors' (interpreters, GL context, onnxruntime session) until the first results.

Each configuration indexes N meshes and, in another fresh home, ``--baseline-meshes``
B of them, so that start-up cancels out of the per-mesh figures:

* ``marginal_shapes_per_s``: ``(N - B) / (seconds(N) - seconds(B))``, by the
  command's own clock; ``scaling_efficiency`` is ``marginal(K) / (K * marginal(1))``.
  Wall figures need a quiet machine: under load a run's share of the cores
  depends on how many threads it has, so ``load_average`` is reported;
* ``cpu_ms_per_mesh``: ``(CPU(N) - CPU(B)) / (N - B)``, the user + system time of
  the command and every process under it (Ray's workers included, sampled from
  /proc), which holds on a busy machine too.

Each Ray index is compared with the plain one: the same paths, and the largest
difference of any embedding value (``max_abs_diff``). ``--merge-rows R`` also
times ``ftspl index merge`` (the single writer: SQLite + HNSW inserts) on R rows:
the benchmark's real rows (embeddings perturbed and re-normalised, real previews)
under new paths, so only the commit cost is measured, and reports the index's
bytes per shape on disk (SQLite, HNSW).
Needs a model: the perf home's (``benchmarks/run.py``) or ``--model DIR``; else it
exports the pretrained one (needs the ``[train]`` extra). Runs are bounded by
``--meshes``; the machine's other load shows in the figures, so compare runs of
one invocation (``--repeat`` alternates the configurations).

Writes entry ``--entry`` (default ``latest``) of ``--out`` (default
``benchmarks/results/ray_index.json``, a file of named runs; the other entries
stay): the figures with the command, date, git state and config of the run
(``--out none``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from common import RESULTS, cli_run, logger, result_record, study_home, update_entry
from perflib import machine, perf_meshes, perf_work, store_path

from ftspl.engine.home import Home

WORK = study_home().cache / "bench-ray"
log = logger("ray")


def become_subreaper() -> None:
    """Adopt orphaned descendants (Ray's workers can outlive the raylet that forked them): they stay in the sampled tree and are waited for."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


class TreeCpu:
    """CPU seconds of every descendant of this process, sampled from /proc every ``every_s`` seconds.

    ``getrusage(RUSAGE_CHILDREN)`` misses Ray's workers (they are reaped by Ray's
    own processes or outlive the command), so each descendant's own user + system
    time is read while it lives; a process loses at most its last ``every_s``.
    """

    def __init__(self, every_s: float = 0.2) -> None:
        import threading

        self.every_s, self.seen = every_s, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        parent: dict[int, int] = {}
        cpu: dict[int, tuple[str, float]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    text = fh.read()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
            pid = int(entry.name)
            parent[pid] = int(fields[1])
            cpu[pid] = (fields[19], (int(fields[11]) + int(fields[12])) / self._tick)  # starttime, utime+stime
        me = os.getpid()
        for pid in cpu:
            p, hops = pid, 0
            while p in parent and p != me and hops < 64:
                p, hops = parent[p], hops + 1
            if p == me and pid != me:
                self.seen[(pid, cpu[pid][0])] = cpu[pid][1]

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> TreeCpu:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def seconds(self) -> float:
        return sum(self.seen.values())


def reap_all(timeout_s: float = 30.0) -> None:
    """Wait for every descendant to exit (their CPU time then shows in RUSAGE_CHILDREN)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.1)
    log("some descendants still run after the command ended; their CPU time is not counted")


NICE = 0  #: --nice: niceness of every benchmarked command


def ftspl(home: Path, args: list[str], cores: list[int] | None = None, timeout: float = 1800) -> tuple[dict, float, float]:
    """Run the real CLI (pinned to ``cores``); (its --json output, wall seconds, CPU seconds of it and every descendant).

    Ray lowers its workers' priority to niceness 15 by default; ``RAY_worker_niceness=0``
    keeps them at the command's, so Ray and the plain path compete for a shared
    machine on equal terms.
    """
    prefix = [*(["nice", "-n", str(NICE)] if NICE else []),
              *(["taskset", "-c", ",".join(map(str, cores))] if cores else [])]
    with TreeCpu() as tree:
        r = cli_run(*args, home=home, env={"RAY_worker_niceness": "0"}, timeout=timeout, prefix=prefix, ok=(0, 1))
        reap_all()
    if not r.data:
        sys.exit(f"ftspl {' '.join(args)} printed no JSON ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.data, r.wall_s, tree.seconds


def meshes_folder(n: int) -> Path:
    """A folder of links to the first ``n`` models (label/key/model.obj), so exactly those are indexed."""
    files = perf_meshes(perf_work(), n)
    folder = WORK / f"meshes-{n}"
    if folder.exists():
        shutil.rmtree(folder)
    for f in files:
        link = folder / f.parent.parent.name / f.parent.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f.parent, target_is_directory=True)
    return folder


def model_home(explicit: Path | None) -> Path:
    """A home whose models/ holds the model to use (copied into each run's fresh home)."""
    home = WORK / "model-home"
    if explicit is not None:
        shutil.rmtree(home, ignore_errors=True)
        (home / "models").mkdir(parents=True)
        shutil.copytree(explicit, home / "models" / explicit.name)
        (home / "models" / "ACTIVE").write_text(explicit.name)
        return home
    perf = perf_work() / "home"
    if (perf / "models" / "ACTIVE").exists():
        return perf
    if not (home / "models" / "ACTIVE").exists():
        log("no model in the perf home: exporting the pretrained encoders")
        ftspl(home, ["export", "--pretrained"])
    Home(home).active_model_dir()
    return home


def fresh_home(src: Path, name: str) -> Path:
    home = WORK / "runs" / name
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(src / "models", home / "models")
    return home


def embeddings(home: Path) -> dict[str, np.ndarray]:
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(store_path(home), readonly=True) as store:
        ids, emb = store.all_embeddings()
        paths = {r.id: r.path for r in store.get([int(i) for i in ids])}
    return {paths[int(i)]: e for i, e in zip(ids, emb)}


def merge_bench(home: Path, rows: int, src: dict[str, np.ndarray]) -> dict:
    """Time ``index merge`` of ``rows`` rows built from the real ones (commit cost only)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(store_path(home), readonly=True) as store:
        info = store.get_info()
        ids, _ = store.all_embeddings()
        previews = [r.preview for r in store.get([int(i) for i in ids], previews=True)]
    real = np.stack(list(src.values()))
    rng = np.random.default_rng(0)
    out = WORK / "merge-shards"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    per = 10_000
    for start in range(0, rows, per):
        n = min(per, rows - start)
        emb = real[rng.integers(0, len(real), n)] + rng.normal(0, real.std(0) / 2, (n, real.shape[1]))
        emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
        pq.write_table(pa.table({
            "path": [f"/bench/merge/{start + i:08d}.obj" for i in range(n)],
            "content_hash": [f"{start + i:064x}" for i in range(n)],
            "label": ["bench"] * n,
            "render_spec_hash": [info["render_spec_hash"]] * n,
            "model_id": [info["model_id"]] * n,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1]),
            "preview": pa.array([previews[(start + i) % len(previews)] for i in range(n)], pa.binary()),
        }), out / f"part-{start // per:05d}.parquet")
    target = fresh_home(home, "merge")
    res, wall, cpu = ftspl(target, ["index", "merge", str(out)])
    sizes = {p.name: p.stat().st_size for p in (target / "index").iterdir() if p.is_file()}
    sqlite = sum(v for k, v in sizes.items() if k.startswith("shapes.sqlite"))
    hnsw = sum(v for k, v in sizes.items() if k.startswith("shapes.hnsw"))
    return {"rows": rows, "dim": int(real.shape[1]), "seconds": res["seconds"], "rows_per_s": round(rows / res["seconds"], 1),
            "sqlite_bytes_per_shape": round(sqlite / rows), "hnsw_bytes_per_shape": round(hnsw / rows),
            "preview_bytes_mean": round(float(np.mean([len(p) for p in previews if p]))),
            "process_wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "command": f"python benchmarks/ray_index.py --merge-rows {rows}"}


def run_config(src: Path, name: str, meshes: Path, cores: list[int], extra: list[str]) -> dict:
    home = fresh_home(src, name)
    load = os.getloadavg()[0]
    res, wall, cpu = ftspl(home, ["index", "add", str(meshes), *extra], cores=cores)
    ray = res.get("ray", {})
    return {"seconds": res["seconds"], "shapes_per_s": res["shapes_per_s"], "added": res["added"], "failed": res["failed"],
            "process_wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_1min_before": round(load, 2),
            **{k: ray[k] for k in ("connect_s", "first_result_s", "steady_shapes_per_s", "render_actors",
                                   "encode_actors", "cpus_per_actor") if k in ray}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meshes", type=int, default=40)
    ap.add_argument("--baseline-meshes", type=int, default=8,
                    help="also index this many, so that (CPU(N) - CPU(B)) / (N - B) is the CPU cost of one more mesh")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2], help="Ray runs pinned to this many cores each")
    ap.add_argument("--repeat", type=int, default=1, help="alternate every configuration this many times")
    ap.add_argument("--merge-rows", type=int, default=0, help="also time index merge of this many rows")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: the perf home's, else pretrained)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run every command at this niceness (negative, as root: a fair share on a busy machine)")
    ap.add_argument("--out", default=str(RESULTS / "ray_index.json"), help="result file (a JSON of named runs); none: print only")
    ap.add_argument("--entry", default="latest", help="the name this run gets in --out")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    global NICE
    NICE = args.nice

    available = sorted(os.sched_getaffinity(0))
    if max(args.cores) > len(available):
        sys.exit(f"--cores {max(args.cores)}: this machine offers {len(available)}")
    if not 0 < args.baseline_meshes < args.meshes:
        sys.exit("--baseline-meshes must be between 0 and --meshes")
    become_subreaper()
    big, small = meshes_folder(args.meshes), meshes_folder(args.baseline_meshes)
    src = model_home(args.model)
    configs = [("plain", available[: max(args.cores)], [])]
    configs += [(f"ray_{k}", available[:k], ["--ray", "local"]) for k in args.cores]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    for rep in range(args.repeat):
        for name, cores, extra in configs:
            log(f"{name} (run {rep + 1}/{args.repeat}) on cores {cores}: {args.meshes} and {args.baseline_meshes} meshes")
            row = run_config(src, name, big, cores, extra)
            base = run_config(src, name + "-base", small, cores, extra)
            extra_meshes = args.meshes - args.baseline_meshes
            row["cpu_ms_per_mesh"] = round(1000 * (row["cpu_s"] - base["cpu_s"]) / extra_meshes, 1)
            row["marginal_shapes_per_s"] = round(extra_meshes / max(1e-9, row["seconds"] - base["seconds"]), 3)
            row["baseline"] = base
            if name != "plain":
                a, b = embeddings(WORK / "runs" / "plain"), embeddings(WORK / "runs" / name)
                row["same_paths"] = sorted(a) == sorted(b)
                row["max_abs_diff"] = float(max((np.abs(a[p] - b[p]).max() for p in a if p in b), default=0.0))
            runs[name].append(row)
            log(json.dumps({k: v for k, v in row.items() if k != "baseline"}))
    summary: dict = {"meshes": args.meshes, "baseline_meshes": args.baseline_meshes, "runs": runs}
    for name, rows in runs.items():
        def med(key: str, rows=rows):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return round(statistics.median(vals), 3) if vals else None

        summary[name] = {k: med(k) for k in ("shapes_per_s", "marginal_shapes_per_s", "first_result_s", "connect_s",
                                             "cpu_ms_per_mesh", "max_abs_diff")}
    one = summary.get("ray_1", {}).get("marginal_shapes_per_s")
    for k in args.cores:
        rate = summary[f"ray_{k}"]["marginal_shapes_per_s"]
        if one and rate:
            summary[f"ray_{k}"]["scaling_efficiency"] = round(rate / (k * one), 3)
    if args.merge_rows:
        log(f"index merge of {args.merge_rows} rows")
        summary["merge"] = merge_bench(WORK / "runs" / "plain", args.merge_rows, embeddings(WORK / "runs" / "plain"))
    summary["machine"] = machine()
    summary["load_average"] = os.getloadavg()
    summary["nice"] = args.nice
    config = {"meshes": args.meshes, "baseline_meshes": args.baseline_meshes, "cores": args.cores,
              "repeat": args.repeat, "merge_rows": args.merge_rows, "model": str(args.model) if args.model else None,
              "nice": args.nice}
    record = result_record("ray_index.py", argv, config, **summary)
    if args.out.lower() != "none":
        update_entry(Path(args.out), args.entry, record)
        log(f"wrote entry {args.entry!r} of {args.out}")
    print(json.dumps(record) if args.json else json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
