"""Index the real Sweet Home 3D furniture meshes and time indexing and queries.

    python benchmarks/sh3d_index.py [--limit N] [--json]

Fetches Debian's sweethome3d-furniture (cached in the home's cache, git-ignored),
extracts every model of the curated class map (textured OBJ + MTL), then runs
the real CLI: ``ftspl export --pretrained`` (if the home has no model),
``ftspl index add``, and photo queries with the catalogue icons. Prints one
JSON object on the last line with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from common import cli_run, study_home


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="index only the first N models (0: all)")
    ap.add_argument("--work", type=Path, default=None, help="default: <home>/cache/bench-sh3d")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from ftspl.data.sh3d import (
        extract_icon,
        extract_model,
        fetch_furniture,
        furniture_models,
    )
    from ftspl.engine.home import Home

    repo_home = study_home()
    if args.work is None:
        args.work = repo_home.cache / "bench-sh3d"
    cache = repo_home.debian_cache
    libdir = fetch_furniture(cache)
    models = sorted(furniture_models(), key=lambda m: m.key)
    if args.limit:
        models = models[: args.limit]
    gallery, icons = args.work / "gallery", args.work / "icons"
    for m in models:
        if not (gallery / m.label / m.key).is_dir():
            extract_model(libdir, m, gallery / m.label / m.key)
    photos = []
    for m in models[:: max(1, len(models) // 10)][:10]:
        photos.append(extract_icon(libdir, m, icons / f"{m.key}.png"))

    home = args.work / "home"
    res: dict = {"meshes": len(models)}
    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.model.manifest import ModelManifest

    # export when there is no model, or one exported under an older default render spec
    # (e.g. 4x MSAA), which would time that spec
    if (not (home / "models" / "ACTIVE").exists()
            or ModelManifest.load(Home(home).active_model_dir()).get_render_spec() != RenderSpec()):
        res["export"] = cli_run("export", "--pretrained", home=home).data
    r = cli_run("index", "add", str(gallery), "--rebuild", home=home, ok=(0, 1))  # 1: some files failed
    wall, add = r.wall_s, r.data
    res["index"] = {k: add[k] for k in ("added", "failed", "seconds", "shapes_per_s")}
    res["index"]["failures"] = add["failures"]
    res["index"]["process_wall_s"] = round(wall, 2)

    # warm query: one process, the model and index loaded once
    from ftspl.engine.index.library import Library

    lib = Library(Home(home))
    with lib.open_reader() as reader:
        reader.query_photos([photos[0]], 10)
        times = []
        for _ in range(5):
            for p in photos:
                t = time.perf_counter()
                reader.query_photos([p], 10)
                times.append((time.perf_counter() - t) * 1000)
    times.sort()
    res["warm_query_ms"] = {"p50": round(statistics.median(times), 2), "p95": round(times[int(0.95 * (len(times) - 1))], 2)}
    cold = []
    for p in photos[:3]:
        r = cli_run("query", str(p), "--top", "10", home=home)
        cold.append(r.wall_s)
    res["cold_query_s"] = round(statistics.median(cold), 3)
    res["top1_labels"] = {Path(q["photo"]).stem: q["hits"][0]["label"] for q in r.data["results"]}
    if args.json:
        print(json.dumps(res))
    else:
        print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
