"""ftspl's speed and memory, measured beside the design card's obvious pipeline, in one run.

    python benchmarks/run.py [--quick] [--json] [--meshes N] [--out benchmarks/results/perf.json]

What it measures (all on this machine, same inputs, same run):

* ``index_meshes_per_s``: ``ftspl index add`` on N real Sweet Home 3D furniture
  meshes (the first N models of the curated class map, always the same files):
  load + render + encode + insert, by the command's own clock (``process_wall_s``
  adds interpreter start-up).
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
  benchmark (``ftspl data sh3d --small``); the model it trains is the one all the
  figures above use.
* ``cuda``: the same figures with onnxruntime's CUDA provider and the full-mode
  training round time when a GPU is present; ``null`` otherwise (never faked).

Data and models are cached under ``<home>/cache/perf`` (``./.ftspl``, git-ignored). Needs the
``bench`` extra for the peer: ``pip install -e '.[train,bench]'`` and
``pip install --no-deps pyrender==0.1.45`` (pyrender pins PyOpenGL 3.1.0 but
runs on the current one; it is the peer only, never a dependency of ftspl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ftspl(home: Path, *args: str, check: bool = True) -> tuple[dict, float]:
    """Run the real CLI; (its --json output, process wall seconds)."""
    env = dict(os.environ, FTSPL_HOME=str(home), PYTHONWARNINGS="ignore")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "ftspl", *args, "--json"], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if check and r.returncode:
        sys.exit(f"ftspl {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    lines = r.stdout.strip().splitlines()
    return (json.loads(lines[-1]) if lines else {}), wall


# --------------------------------------------------------------------------- inputs
def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import onnxruntime

    from ftspl.engine.rendering.renderer import Renderer

    with Renderer() as r:
        gl = r.gl_renderer
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "os": platform.platform(),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
        "gl_renderer": gl, "gpu": _gpu_name(),
    }


def _gpu_name() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    except OSError:
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def perf_meshes(work: Path, n: int) -> list[Path]:
    """The first ``n`` models of the class map (by key), extracted once: the same files every run."""
    from ftspl.data.sh3d import extract_model, fetch_furniture, furniture_models

    from ftspl.engine.home import Home

    libdir = fetch_furniture(Home.resolve(cwd=ROOT).debian_cache)
    models = sorted(furniture_models(), key=lambda m: m.key)[:n]
    files = []
    for m in models:
        dest = work / "meshes" / m.label / m.key
        if not any(dest.glob("*.obj")):
            extract_model(libdir, m, dest)
        files.append(next(dest.glob("*.obj")))
    return files


def train_model(work: Path, quick: bool) -> tuple[Path, dict, Path]:
    """Build the small SH3D benchmark, train FTSPL in head mode, export it; (home, train figures, queries)."""
    data = work / "data"
    if not (data / "manifest.json").exists():
        log("building the small SH3D benchmark (ftspl data sh3d --small)")
        ftspl(work / "home", "data", "sh3d", "--out", str(data), "--small")
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    rounds, epochs = (2, 2) if quick else (3, 5)
    log(f"training FTSPL head mode ({rounds} rounds x {epochs} epochs)")
    res, wall = ftspl(work / "home", "train", "--source", str(data / "source"), "--target", str(data / "target"),
                      "--out", str(run), "--mode", "head", "--rounds", str(rounds), "--epochs", str(epochs),
                      "--warmup-epochs", str(epochs), "--seed", "0")
    per_round = [r["seconds"] for r in res.get("rounds", []) if r.get("round", 0) >= 1]
    home = work / "home"
    log("exporting the trained encoders (ftspl export RUN)")
    exp, exp_wall = ftspl(home, "export", str(run))
    return home, {
        "train_head_s_per_round": round(statistics.median(per_round), 2) if per_round else None,
        "train_rounds_s": per_round, "train_total_s": round(wall, 1), "export_s": round(exp_wall, 1),
        "model_id": exp.get("model_id"),
    }, data / "queries"


# --------------------------------------------------------------------------- ours vs peer
def index_ours(home: Path, meshes_dir: Path, device: str = "cpu") -> dict:
    res, wall = ftspl(home, "index", "add", str(meshes_dir), "--rebuild", "--device", device)
    return {"meshes": res["added"] + res.get("updated", 0), "failed": len(res.get("failures", [])),
            "seconds": res["seconds"], "meshes_per_s": res["shapes_per_s"], "process_wall_s": round(wall, 2)}


def index_peer(run_dir: Path, files: list[Path]) -> dict:
    """trimesh + pyrender (12 views, same cameras) + eager torch encoder + numpy matrix, one mesh at a time."""
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import pyrender
    except ImportError as exc:
        return {"error": f"pyrender not installed ({exc}); pip install --no-deps pyrender==0.1.45 six"}
    import torch
    import trimesh

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.rendering.renderer import camera_positions
    from ftspl.export.from_run import run_model

    spec = RenderSpec()
    _img, mv, meta = run_model(run_dir)
    pre = meta.preprocess
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    renderer = pyrender.OffscreenRenderer(spec.image_size, spec.image_size)
    eyes = camera_positions(spec)

    def look_at(eye: np.ndarray) -> np.ndarray:  # camera-to-world pose, camera looks down -Z
        z = eye / np.linalg.norm(eye)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, np.cross(z, x), z, eye
        return pose

    poses = [look_at(e) for e in eyes]
    embeddings = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for f in files:
            mesh = trimesh.load(str(f), force="mesh")
            mesh.apply_translation(-mesh.bounds.mean(axis=0))
            mesh.apply_scale(spec.normalize_radius / np.linalg.norm(mesh.vertices, axis=1).max())
            scene = pyrender.Scene(bg_color=[*spec.background_rgb, 1.0], ambient_light=[0.3, 0.3, 0.3])
            material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[*spec.material_rgb, 1.0])
            scene.add(pyrender.Mesh.from_trimesh(mesh, material=material, smooth=False))
            cam = scene.add(pyrender.PerspectiveCamera(yfov=np.radians(spec.fov_deg)), pose=poses[0])
            light = scene.add(pyrender.DirectionalLight(intensity=3.0), pose=poses[0])
            views = []
            for pose in poses:
                scene.set_pose(cam, pose)
                scene.set_pose(light, pose)
                color, _ = renderer.render(scene)
                views.append(color)
            x = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
            x = (x - mean) / std
            embeddings.append(mv(x[None]).numpy()[0])
    seconds = time.perf_counter() - t0
    renderer.delete()
    gallery = np.stack(embeddings)
    q = gallery[:5]
    t = time.perf_counter()
    for v in q:  # exact numpy search, as the glue script would do it
        np.argsort(((gallery - v) ** 2).sum(1))[:10]
    return {"meshes": len(files), "seconds": round(seconds, 2), "meshes_per_s": round(len(files) / seconds, 3),
            "exact_search_ms": round((time.perf_counter() - t) / len(q) * 1000, 3),
            "torch": torch.__version__, "pyrender": getattr(pyrender, "__version__", "?")}


# --------------------------------------------------------------------------- the big index
def synthetic_like(real: np.ndarray, n: int, seed: int, noise: float = 0.5) -> np.ndarray:
    """``n`` vectors drawn around real embeddings: e_i + N(0, (noise * per-dim std)^2), L2-normalised."""
    rng = np.random.default_rng(seed)
    std = real.std(axis=0).astype(np.float32)
    out = np.empty((n, real.shape[1]), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = real[rng.integers(0, len(real), m)] + rng.standard_normal((m, real.shape[1]), dtype=np.float32) * std * noise
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def build_big_index(src_home: Path, dst_home: Path, size: int) -> dict:
    """Copy the model, then store the real shapes plus synthetic ones and build the HNSW file."""
    from ftspl.engine.home import Home
    from ftspl.engine.index.ann import HnswIndex
    from ftspl.engine.index.library import ANN_NAME, STORE_NAME
    from ftspl.engine.index.store import ShapeRecord, ShapeStore
    from ftspl.engine.model.manifest import ModelManifest

    shutil.rmtree(dst_home, ignore_errors=True)
    src, dst = Home(src_home), Home(dst_home)
    shutil.copytree(src.models, dst.models)
    dst.index_dir.mkdir(parents=True)
    real_store = ShapeStore(src.index_dir / STORE_NAME, readonly=True)
    info = real_store.get_info()
    ids, real = real_store.all_embeddings()
    rows = {r.id: r for r in real_store.get([int(i) for i in ids], previews=True)}
    real_store.close()
    manifest = ModelManifest.load(dst.active_model_dir())
    t = time.perf_counter()
    store = ShapeStore(dst.index_dir / STORE_NAME)
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
    ann = HnswIndex(manifest.embed_dim)
    ann.add(all_ids, all_vecs)
    t_hnsw = time.perf_counter() - t
    ann.save(dst.index_dir / ANN_NAME, meta={"generation": store.generation()})
    store.close()
    size_bytes = sum(p.stat().st_size for p in dst.index_dir.rglob("*") if p.is_file())
    return {"shapes": int(len(all_ids)), "store_build_s": round(t_store, 1), "hnsw_build_s": round(t_hnsw, 1),
            "index_bytes": size_bytes, "index_bytes_per_shape": round(size_bytes / len(all_ids), 1),
            "hnsw_M": ann.M, "hnsw_ef_construction": ann.ef_construction, "hnsw_ef": ann.ef_search}


def _peak_rss_mb() -> float:
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
    rss_mb = _peak_rss_mb()
    print(json.dumps({"queries": len(times), "p50_ms": round(float(np.percentile(times, 50)), 2),
                      "p95_ms": round(float(np.percentile(times, 95)), 2), "peak_rss_mb": round(rss_mb, 1)}))


def query_bench(home: Path, photos: list[Path], device: str = "cpu") -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", FTSPL_BENCH_DEVICE=device)
    r = subprocess.run([sys.executable, __file__, "--query-worker", str(home), *map(str, photos)],
                       capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"query worker failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cold_query(home: Path, photo: Path) -> dict:
    """Fresh processes. The very first one on a machine also optimises the encoder graph and
    caches it (``engine/model/graphcache.py``); it is reported apart, the target is the median of 3 after."""
    shutil.rmtree(Path(home) / "cache" / "onnxruntime", ignore_errors=True)
    first = ftspl(home, "query", str(photo), "--top", "10")[1]
    walls = [ftspl(home, "query", str(photo), "--top", "10")[1] for _ in range(3)]
    return {"cold_query_s": round(statistics.median(walls), 3), "runs_s": [round(w, 3) for w in walls],
            "first_on_machine_s": round(first, 3)}


def hnsw_vs_exact(real: np.ndarray, n: int, n_queries: int = 300, sweep_ef: tuple[int, ...] = ()) -> dict:
    """Recall@10 of the library's default ANN backend (its default M/ef) against the exact twin, one query at a time."""
    from ftspl.engine.index.ann import DEFAULT_BACKEND, ExactIndex, make_index

    base = synthetic_like(real, n, seed=1)
    queries = synthetic_like(real, n_queries, seed=2)
    ids = np.arange(n, dtype=np.int64)
    t = time.perf_counter()
    hnsw = make_index(DEFAULT_BACKEND, real.shape[1])
    hnsw.add(ids, base)
    build = time.perf_counter() - t
    exact = ExactIndex(real.shape[1])
    exact.add(ids, base)
    del base
    if hasattr(hnsw, "num_threads"):
        hnsw.num_threads = 1

    def timed(index) -> tuple[np.ndarray, float]:
        out, t0 = [], time.perf_counter()
        for q in queries:
            out.append(index.query(q[None], 10)[0][0])
        return np.stack(out), (time.perf_counter() - t0) / len(queries) * 1000

    got, hnsw_ms = timed(hnsw)
    truth, exact_ms = timed(exact)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
    sweep = []
    for ef in sweep_ef:  # the recall/speed trade-off of the same graph at other query-time ef
        hnsw.ef_search = ef
        g, ms = timed(hnsw)
        sweep.append({"ef": ef, "recall_at_10": round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(g, truth)])), 4),
                      "ms_per_query": round(ms, 3), "speedup_vs_exact": round(exact_ms / ms, 1)})
    hnsw.ef_search = None  # back to the size-aware default for the figures below
    return {"backend": DEFAULT_BACKEND, "ef_sweep": sweep, "vectors": n, "dim": int(real.shape[1]), "queries": n_queries, "hnsw_recall_at_10": round(recall, 4),
            "hnsw_ms_per_query": round(hnsw_ms, 3), "exact_ms_per_query": round(exact_ms, 3),
            "hnsw_speedup_vs_exact": round(exact_ms / hnsw_ms, 1), "hnsw_build_s": round(build, 1),
            "M": hnsw.M, "ef_construction": hnsw.ef_construction, "ef": hnsw.ef_search}


# --------------------------------------------------------------------------- main
TARGETS = {"index_meshes_per_s": (">=", 8.0), "speedup_vs_peer": (">=", 3.0), "query_p50_ms": ("<=", 15.0),
           "cold_query_s": ("<=", 1.0), "hnsw_recall_at_10": (">=", 0.99), "hnsw_speedup_vs_exact": (">=", 20.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k-vector recall test, fewer training epochs (< 10 min)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    ap.add_argument("--meshes", type=int, default=60, help="real meshes to index (ours and the peer)")
    ap.add_argument("--index-size", type=int, default=100_000, help="shapes in the query-latency index")
    ap.add_argument("--work", type=Path, default=None, help="default: <home>/cache/perf")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "perf.json")
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
        from ftspl.engine.home import Home

        args.work = Home.resolve(cwd=ROOT).cache / "perf"
    if args.ann_only:
        ann_only(args.work, args.ann_only, args.out.parent, args.ann_config, args.ann_queries)
        return
    if args.query_worker:
        query_worker(args.query_worker[0], args.query_worker[1:], repeats=5)
        return

    t_all = time.perf_counter()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    files = perf_meshes(work, args.meshes)
    home, train, queries_dir = train_model(work, args.quick)
    res["train"] = train
    photos = sorted(queries_dir.rglob("*.jpg"))[:20]

    log(f"ftspl index add: {len(files)} meshes")
    ours = index_ours(home, work / "meshes")
    log(f"  {ours['meshes_per_s']} meshes/s; peer (trimesh + pyrender + torch) on the same meshes")
    peer = index_peer(work / "run", files)
    res["index"] = {"ours": ours, "peer": peer}

    log(f"building a {args.index_size}-shape index for query latency")
    big_home = work / "home-big"
    res["big_index"] = build_big_index(home, big_home, args.index_size)
    log("warm queries")
    res["query"] = query_bench(big_home, photos)
    res["cold"] = cold_query(big_home, photos[0])

    from ftspl.engine.home import Home
    from ftspl.engine.index.library import STORE_NAME
    from ftspl.engine.index.store import ShapeStore

    st = ShapeStore(Home(home).index_dir / STORE_NAME, readonly=True)
    _, real = st.all_embeddings()
    st.close()
    n = 100_000 if args.quick else 1_000_000
    log(f"HNSW vs exact on {n} x {real.shape[1]}")
    res["ann"] = hnsw_vs_exact(real, n)

    res["cuda"] = cuda_figures(home, work, photos) if res["machine"]["gpu"] else None

    summary = {
        "index_meshes_per_s": ours["meshes_per_s"],
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


def ann_only(work: Path, n: int, out_dir: Path, configs: list[str] | None, n_queries: int) -> None:
    """The ANN backends alone, side by side (a 1M build takes 10-25 min per backend on 2 cores)."""
    from ann_compare import DEFAULT_CONFIGS, compare

    from ftspl.engine.home import Home
    from ftspl.engine.index.library import STORE_NAME
    from ftspl.engine.index.store import ShapeStore

    store = Home(work / "home").index_dir / STORE_NAME
    if not store.exists():  # the real embeddings the synthetic ones are drawn around
        log(f"{store}: no index yet; training the quick model and indexing the benchmark meshes first")
        perf_meshes(work, 60)
        home, _, _ = train_model(work, quick=True)
        index_ours(home, work / "meshes")
    st = ShapeStore(store, readonly=True)
    _, real = st.all_embeddings()
    st.close()
    t = time.perf_counter()
    cmd = " ".join(["python benchmarks/run.py --ann-only", str(n), *(f"--ann-config {c}" for c in configs or [])])
    about = {"real_embeddings": int(len(real)), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
             "command": cmd}
    out = out_dir / f"ann_{n}.json"

    def write(res: dict) -> None:
        res.update(about, total_s=round(time.perf_counter() - t, 1))
        out.write_text(json.dumps(res, indent=2) + "\n")

    res = compare(real, n, work, list(configs or DEFAULT_CONFIGS), n_queries=n_queries, on_row=write)
    write(res)
    print(json.dumps({"results": str(out), "met_by": res["met_by"], "total_s": res["total_s"]}))


def cuda_figures(home: Path, work: Path, photos: list[Path]) -> dict:
    """GPU figures: CUDA execution provider for indexing and queries, full-mode training round time."""
    out: dict = {}
    ours = index_ours(home, work / "meshes", device="cuda")
    out["index_meshes_per_s"] = ours["meshes_per_s"]
    out["query_p50_ms"] = query_bench(work / "home-big", photos, device="cuda")["p50_ms"]
    data = work / "data"
    res, _ = ftspl(home, "train", "--source", str(data / "source"), "--target", str(data / "target"),
                   "--out", str(work / "run-full"), "--mode", "full", "--rounds", "1", "--epochs", "1",
                   "--warmup-epochs", "1", "--device", "cuda")
    rounds = [r["seconds"] for r in res.get("rounds", []) if r.get("round", 0) >= 1]
    out["train_full_s_per_round"] = rounds[0] if rounds else None
    return out


if __name__ == "__main__":
    main()
