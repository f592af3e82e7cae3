"""``ftspl serve`` under load: a bounded closed loop over loopback against a 100k-shape index.

    python benchmarks/serve_load.py [--json] [--requests 150] [--rounds 5] [--size 100000]

In one run on this machine (results in ``benchmarks/results/serve.json``):

* ``quiet``: a real ``ftspl serve``; httpx/asyncio clients in a closed loop at
  concurrency 1, 2, 4 and 8, a fixed number of requests each (a multipart photo,
  ``top=10``): p50/p95/p99 latency, requests per second, errors. The machine is
  shared, so each level's requests are split into rounds interleaved with the
  other levels and with the in-process blocks: background load falls on all alike.
* ``inprocess``: warm :class:`Reader` queries in separate processes, same photos,
  same index, with the server's engine settings (one onnxruntime thread) and
  ``run.py``'s (all cores); the target compares with the faster. ``machine_scaling``:
  two such processes side by side against one, i.e. how far the cores let two
  queries scale at that moment (the ceiling for ``rps_c2_over_c1``).
* ``during_add``: the same sweep while ``ftspl index add`` adds real meshes to the
  served index, batch after batch (``add_fraction``: the share of answers given
  while a writer ran). Every answer must be 200 with ten hits and a generation
  that never goes back; afterwards the server must reach the store's generation.

The index is ``run.py``'s (``querylib.build_big_index``: the real shapes' embeddings
plus synthetic ones around them) from a ``run.py`` home (``--source-home``, default
``<cache>/perf/home``), else one built with the same helpers (``perflib``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from common import RESULTS, study_home
from perflib import ensure_perf_index, log, machine, perf_meshes, perf_work, store_path
from querylib import Baseline, build_big_index

CONCURRENCY = (1, 2, 4, 8)
TARGETS = {"http_c1_p50_over_inprocess_p50": ("<=", 1.5), "rps_c2_over_c1": (">=", 1.6),
           "p99_c8_over_c1_p50": ("<", 10.0), "errors": ("==", 0)}
OPS = {"<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "==": lambda a, b: a == b}


# --------------------------------------------------------------------------- inputs
def source_home(work: Path, given: Path) -> Path:
    """A home with a model and an index of real shapes: ``given`` when it has both, else built like run.py."""
    if (given / "models" / "ACTIVE").is_file() and store_path(given).is_file():
        return given
    log(f"{given} has no model and index: building one with run.py's helpers")
    return ensure_perf_index(work)


def big_index(work: Path, src: Path, size: int) -> tuple[Path, dict]:
    """A pristine ``size``-shape home (built once, reused while its model matches), copied for this run."""
    from ftspl.engine.index.store import ShapeStore

    pristine, served = work / "big-pristine", work / "big"
    model = (src / "models" / "ACTIVE").read_text().strip()
    stamp = pristine / "built.json"
    built = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if built.get("model") != model or built.get("shapes") != size:
        log(f"building the {size}-shape index (run.py build_big_index)")
        built = {"model": model, **build_big_index(src, pristine, size)}
        stamp.write_text(json.dumps(built))
    shutil.rmtree(served, ignore_errors=True)
    shutil.copytree(pristine, served)
    with ShapeStore(store_path(served), readonly=True) as st:
        assert st.count() == size, st.count()
    return served, built


def add_batches(work: Path, n_batches: int, per_batch: int) -> list[Path]:
    """Folders of real SH3D meshes that are not in the index (the models after run.py's first 60)."""
    files = perf_meshes(work, 60 + n_batches * per_batch)[60:]
    out = []
    for b in range(n_batches):
        folder = work / "add" / f"batch{b}"
        shutil.rmtree(folder, ignore_errors=True)
        for f in files[b * per_batch : (b + 1) * per_batch]:
            shutil.copytree(f.parent, folder / f.parent.parent.name / f.parent.name)
        out.append(folder)
    return out


def photos_for(src: Path, work: Path) -> list[Path]:
    """run.py's query photos (the SH3D benchmark's held-out photos), 20 of them."""
    for data in (src.parent / "data", work / "data"):
        found = sorted((data / "queries").rglob("*.jpg"))[:20]
        if found:
            return found
    raise SystemExit("no query photos found next to the source home (run benchmarks/run.py --quick first)")


# --------------------------------------------------------------------------- the server and the load
class Served:
    """``python -m ftspl serve --port 0`` (a free loopback port, read from its ready line); stopped with SIGINT."""

    def __init__(self, home: Path) -> None:
        import re
        import select

        env = dict(os.environ, PYTHONWARNINGS="ignore")
        self.proc = subprocess.Popen([sys.executable, "-m", "ftspl", "serve", "--home", str(home), "--port", "0",
                                      "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        found = re.search(r"at (http://127\.0\.0\.1:\d+)/", line)
        if not found:
            self.stop()
            raise SystemExit(f"ftspl serve did not start: {line!r}")
        self.base, self.ready_line = found.group(1), line.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def multipart_bodies(photos: list[bytes]) -> tuple[list[bytes], dict[str, str]]:
    """Each photo as a ready multipart body (``photo`` + ``top=10``): the load generator encodes
    nothing per request, so the 2 cores it shares with the server go to the server."""
    b = "ftspl-serve-load-boundary"
    bodies = [(f'--{b}\r\nContent-Disposition: form-data; name="top"\r\n\r\n10\r\n'
               f'--{b}\r\nContent-Disposition: form-data; name="photo"; filename="p{i}.jpg"\r\n'
               "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
              for i, data in enumerate(photos)]
    return bodies, {"content-type": f"multipart/form-data; boundary={b}"}


async def closed_loop(base: str, photos: list[bytes], concurrency: int, total: int, writer: Writer | None) -> dict:
    """``concurrency`` clients, each sending its next request when the last one answered, ``total`` in all."""
    import httpx

    bodies, headers = multipart_bodies(photos)

    lat: list[float] = []
    took: list[float] = []  # the server's own time per answer (its ``took_ms``)
    errors: list[str] = []
    gens: list[int] = []
    during = 0
    todo = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal during
            last_gen = -1
            for i in todo:
                busy = writer is not None and writer.running()
                t = time.perf_counter()
                try:
                    r = await client.post(f"{base}/api/query", content=bodies[i % len(bodies)], headers=headers)
                except httpx.HTTPError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                lat.append((time.perf_counter() - t) * 1000)
                during += busy and writer.running()
                if r.status_code != 200:
                    errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                    continue
                body = r.json()
                if len(body["hits"]) != 10 or body["generation"] < last_gen:
                    errors.append(f"inconsistent answer: {len(body['hits'])} hits, generation {body['generation']} after {last_gen}")
                last_gen = body["generation"]
                gens.append(last_gen)
                took.append(body["took_ms"])

        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"lat": lat, "took": took, "errors": errors, "gens": gens, "wall": wall, "during": during}


def pooled(concurrency: int, parts: list[dict], with_writer: bool) -> dict:
    """One level's figures over its rounds: latency percentiles of every request, answers per second of wall."""
    lat = np.asarray([x for p in parts for x in p["lat"]] or [0.0])
    took = np.asarray([x for p in parts for x in p["took"]] or [0.0])
    gens = [g for p in parts for g in p["gens"]]
    errors = [e for p in parts for e in p["errors"]]
    wall = sum(p["wall"] for p in parts)
    out = {"concurrency": concurrency, "requests": len(lat), "ok": len(gens), "errors": len(errors),
           "p50_ms": round(float(np.percentile(lat, 50)), 2), "p95_ms": round(float(np.percentile(lat, 95)), 2),
           "p99_ms": round(float(np.percentile(lat, 99)), 2), "server_p50_ms": round(float(np.percentile(took, 50)), 2),
           "rps": round(len(gens) / wall, 2), "wall_s": round(wall, 2),
           "generations": [min(gens), max(gens)] if gens else None, "error_samples": errors[:3]}
    if with_writer:
        out["add_fraction"] = round(sum(p["during"] for p in parts) / max(1, len(lat)), 3)
    return out


class Writer:
    """``ftspl index add`` batch after batch in other processes, until told to stop (bounded by the batches)."""

    def __init__(self, home: Path, batches: list[Path]) -> None:
        self.home, self.batches = home, batches
        self.done: list[dict] = []
        self._stop = threading.Event()
        self._proc: subprocess.Popen | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def running(self) -> bool:
        p = self._proc
        return p is not None and p.poll() is None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore", FTSPL_HOME=str(self.home))
        for folder in self.batches:
            if self._stop.is_set():
                return
            self._proc = subprocess.Popen([sys.executable, "-m", "ftspl", "index", "add", str(folder), "--commit-every", "4",
                                           "--device", "cpu", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, env=env)
            out, err = self._proc.communicate()
            if self._proc.returncode:
                self.done.append({"batch": folder.name, "error": err.strip().splitlines()[-1:]})
            else:
                self.done.append({"batch": folder.name, **json.loads(out.strip().splitlines()[-1])})

    def stop(self) -> None:
        """Let the batch that runs finish (a kill would be a crash test, not this benchmark)."""
        self._stop.set()
        self._thread.join()


def sweep(base: str, photos: list[bytes], total: int, rounds: int, writer: Writer | None = None,
          baseline: Baseline | None = None) -> list[dict]:
    """Every level ``rounds`` times, interleaved (with the in-process blocks when given), so a change in
    the machine's background load falls on all of them alike rather than on one level."""
    parts: dict[int, list[dict]] = {c: [] for c in CONCURRENCY}
    for _ in range(rounds):
        if baseline is not None:
            baseline.round(total // rounds)
        for c in CONCURRENCY:
            parts[c].append(asyncio.run(closed_loop(base, photos, c, total // rounds, writer)))
    rows = [pooled(c, parts[c], writer is not None) for c in CONCURRENCY]
    for row in rows:
        log(f"  c={row['concurrency']}: p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, {row['rps']} req/s, "
            f"errors {row['errors']}" + (f", during add {row['add_fraction']:.0%}" if writer else ""))
    return rows


def wait_caught_up(base: str, home: Path, deadline_s: float = 120) -> dict:
    """The server's /api/info once it serves the store's last generation (bounded)."""
    import httpx

    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(store_path(home), readonly=True) as st:
        gen, count = st.generation(), st.count()
    end = time.monotonic() + deadline_s
    while True:
        info = httpx.get(f"{base}/api/info", timeout=30).json()
        if info["generation"] >= gen or time.monotonic() > end:
            return {"store_generation": gen, "store_shapes": count, "served_generation": info["generation"],
                    "served_shapes": info["shapes"], "caught_up": info["generation"] == gen and info["shapes"] == count}
        time.sleep(0.1)


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON summary on the last line")
    ap.add_argument("--requests", type=int, default=150, help="requests per concurrency level")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds the requests are split into")
    ap.add_argument("--size", type=int, default=100_000, help="shapes in the served index")
    ap.add_argument("--add-batches", type=int, default=4, help="at most this many index add batches during the load")
    ap.add_argument("--batch-meshes", type=int, default=24, help="real meshes per index add batch")
    ap.add_argument("--source-home", type=Path, default=None, help="default: <cache>/perf/home (run.py's)")
    ap.add_argument("--work", type=Path, default=None, help="default: <cache>/serve-load")
    ap.add_argument("--out", type=Path, default=RESULTS / "serve.json")
    args = ap.parse_args()

    t_all = time.perf_counter()
    args.source_home = args.source_home or perf_work() / "home"
    work = args.work or study_home().cache / "serve-load"
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "load_avg_start": os.getloadavg()}
    src = source_home(work, args.source_home)
    home, res["index"] = big_index(work, src, args.size)
    photo_paths = photos_for(src, work)
    photos = [p.read_bytes() for p in photo_paths]
    batches = add_batches(work, args.add_batches, args.batch_meshes)
    res["config"] = {"requests_per_level": args.requests, "rounds": args.rounds, "concurrency": list(CONCURRENCY), "photos": len(photos),
                     "top": 10, "add_batches": len(batches), "batch_meshes": args.batch_meshes}

    log("starting ftspl serve and the in-process query workers (Reader: one thread, and all cores)")
    server = Served(home)
    baseline = Baseline(home, photo_paths)
    try:
        res["server"] = server.ready_line
        log(f"quiet sweep, {args.rounds} interleaved rounds")
        res["quiet"] = sweep(server.base, photos, args.requests, args.rounds, baseline=baseline)
        res["inprocess"] = baseline.close()
        log(f"  in-process p50 {res['inprocess']['one_thread']['p50_ms']} ms (1 thread), "
            f"{res['inprocess']['all_cores']['p50_ms']} ms (all cores); two query processes side by side: "
            f"{res['inprocess']['machine_scaling']['ratio']}x one")
        log("sweep while index add runs")
        writer = Writer(home, batches)
        writer.start()
        try:
            res["during_add"] = sweep(server.base, photos, args.requests, args.rounds, writer)
        finally:
            writer.stop()
        res["index_add"] = writer.done
        res["after_add"] = wait_caught_up(server.base, home)
    finally:
        server.stop()
    res["load_avg_end"] = os.getloadavg()

    q = {r["concurrency"]: r for r in res["quiet"]}
    base_p50 = min(res["inprocess"]["one_thread"]["p50_ms"], res["inprocess"]["all_cores"]["p50_ms"])
    errors = sum(r["errors"] for r in res["quiet"] + res["during_add"])
    summary = {
        "http_c1_p50_ms": q[1]["p50_ms"], "inprocess_p50_ms": base_p50,
        "http_c1_p50_over_inprocess_p50": round(q[1]["p50_ms"] / base_p50, 2),
        # the server runs each query on one onnxruntime thread: the same configuration in process
        "inprocess_one_thread_p50_ms": res["inprocess"]["one_thread"]["p50_ms"],
        "http_c1_p50_over_inprocess_one_thread_p50": round(q[1]["p50_ms"] / res["inprocess"]["one_thread"]["p50_ms"], 2),
        # where the HTTP time goes: the server's own time per answer (parse, decode, embed, search, JSON)
        "server_c1_p50_ms": q[1]["server_p50_ms"],
        "rps_c1": q[1]["rps"], "rps_c2": q[2]["rps"], "rps_c2_over_c1": round(q[2]["rps"] / q[1]["rps"], 2),
        "p99_c8_ms": q[8]["p99_ms"], "p99_c8_over_c1_p50": round(q[8]["p99_ms"] / q[1]["p50_ms"], 2),
        "machine_two_process_scaling": res["inprocess"]["machine_scaling"]["ratio"],
        "errors": errors, "during_add_p50_c1_ms": res["during_add"][0]["p50_ms"],
        "during_add_fraction": round(float(np.mean([r["add_fraction"] for r in res["during_add"]])), 3),
        "new_shapes_served": res["after_add"]["caught_up"] and res["after_add"]["served_shapes"] > args.size,
    }
    summary["targets_met"] = {k: OPS[op](summary[k], v) for k, (op, v) in TARGETS.items()}
    res["summary"] = summary
    res["total_s"] = round(time.perf_counter() - t_all, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    out = {**summary, "total_s": res["total_s"], "results": str(args.out)}
    print(json.dumps(out) if args.json else "\n".join(f"{k:<34} {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
