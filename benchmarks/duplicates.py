"""``ftspl index duplicates``: precision and recall on planted duplicates of real Sweet Home 3D meshes, the
default ``--max-distance`` chosen on a tuning split, and the time for a 100,000-shape index.

Planted duplicates. From a gallery of real SH3D models, ``--bases`` models
(spread over the classes, fixed seed) get six copies each, written beside the
gallery under ``planted/``: the same OBJ under another name (renamed: the same
bytes, an exact duplicate), the OBJ with every vertex scaled by a unit change
(0.01, 0.0254, 2 or 100: rescaled), the OBJ turned a quarter turn about its up
axis (rotated: another "front"), and the mesh re-exported by trimesh as PLY,
STL and GLB (re-exported formats). Every other model of the gallery is a
different model, most of them of the same class as some base. The gallery and
its copies are indexed with ``ftspl index add``; for each distance D of a grid,
``Library.duplicates(D)`` (the shipped code: ANN k-NN + union-find) groups
them, and a pair of shapes in one group is a predicted duplicate pair. A true
pair is two shapes of one model (a base and its copies). Precision and recall
are over pairs; recall is also given per kind of copy.

Protocol (:mod:`ftspl.data.protocol`): D is chosen on the ``val_gallery`` of a
tuning seed: among the grid distances with the best F1 of pair precision and
recall, the middle of the longest run (the largest margin both to the copies
and to the nearest different models); the figures reported are those of that D
on the ``target`` gallery of a report seed. The model is the home's active one (``--home``), by
default the pretrained encoders exported into this script's work folder.

Scale (``--scale N``): a store of N synthetic shapes, drawn around the tuning
gallery's real embeddings (``annlib.synthetic_like``) with 1% planted near
copies (small noise) and 0.5% exact copies (same content hash), written
through the store's write path and its ANN index built by ``AnnCache.rebuild``
(no rendering: the embeddings are synthetic); then ``ftspl index duplicates
--json`` runs in a child process, timed, and the near pairs an exact search
finds within D for 2,000 sampled shapes are checked against its groups.

    python benchmarks/duplicates.py --tune-seed 0 --report-seed 5 --scale 100000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np

from common import RESULTS, cli_run, logger, result_record, study_home, update_entry

log = logger("duplicates")
KINDS = ("renamed", "rescaled", "rotated", "ply", "stl", "glb")
SCALES = (0.01, 0.0254, 2.0, 100.0)
GRID = tuple(round(0.01 * i, 2) for i in range(0, 61))


def bench_folder(seed: int) -> Path:
    return study_home().cache / "quality-data" / f"data-full-s{seed}"


def pick_bases(gallery: Path, n: int, seed: int) -> list[Path]:
    """``n`` model folders (``class/key``), round-robin over the classes in a seeded order."""
    rng = random.Random(seed)
    by_class = {c.name: sorted(d for d in c.iterdir() if d.is_dir() and any(d.glob("*.obj")))
                for c in sorted(gallery.iterdir()) if c.is_dir()}
    for models in by_class.values():
        rng.shuffle(models)
    picked: list[Path] = []
    while len(picked) < n and any(by_class.values()):
        for models in by_class.values():
            if models and len(picked) < n:
                picked.append(models.pop())
    return picked


def edited_obj(text: str, scale: float = 1.0, quarter_turn: bool = False) -> str:
    """The OBJ with its vertices scaled, or turned 90 degrees about +Y (normals too)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] in (["v"], ["vn"]) and len(parts) >= 4:
            x, y, z = (float(v) for v in parts[1:4])
            if quarter_turn:
                x, z = z, -x
            if parts[0] == "v":
                x, y, z = x * scale, y * scale, z * scale
            line = f"{parts[0]} {x:.6g} {y:.6g} {z:.6g}" + (" " + " ".join(parts[4:]) if parts[4:] else "")
        out.append(line)
    return "\n".join(out) + "\n"


def plant(gallery: Path, out: Path, bases: list[Path], seed: int) -> dict[str, tuple[str, str]]:
    """Write the copies of each base under ``out``; ``resolved path -> (model key, kind)`` of every copy."""
    import trimesh

    rng = random.Random(seed)
    shutil.rmtree(out, ignore_errors=True)
    truth: dict[str, tuple[str, str]] = {}
    for base in bases:
        key = str(base.relative_to(gallery))
        obj = sorted(base.glob("*.obj"))[0]
        try:
            mesh = trimesh.load(obj, force="mesh", process=False)
        except Exception as exc:  # noqa: BLE001 - a model trimesh cannot read is no base; say which
            log(f"{obj}: trimesh cannot read it ({type(exc).__name__}: {exc}); not planted")
            continue
        for kind in KINDS:
            dest = out / base.parent.name / f"{base.name}-{kind}"
            if kind in ("renamed", "rescaled", "rotated"):
                shutil.copytree(base, dest)
                (dest / obj.name).unlink()
                target = dest / f"{obj.stem}-{kind}.obj"
                text = obj.read_text(errors="replace")
                if kind == "renamed":
                    shutil.copyfile(obj, target)
                elif kind == "rescaled":
                    target.write_text(edited_obj(text, scale=rng.choice(SCALES)))
                else:
                    target.write_text(edited_obj(text, quarter_turn=True))
            else:
                dest.mkdir(parents=True)
                target = dest / f"{obj.stem}.{kind}"
                mesh.export(target, file_type=kind)
            truth[str(target.resolve())] = (key, kind)
    return truth


def family_of(path: str, gallery: Path, truth: dict[str, tuple[str, str]]) -> tuple[str, str]:
    if path in truth:
        return truth[path]
    rel = Path(path).relative_to(gallery.resolve())
    return "/".join(rel.parts[:2]), "original"


def score(groups, families: dict[str, tuple[str, str]]) -> dict:
    """Pair precision and recall of ``groups`` (lists of paths) against the model families."""
    pred = {frozenset(p) for g in groups for p in combinations(sorted(set(g)), 2)}
    by_family: dict[str, list[str]] = {}
    for path, (fam, _) in families.items():
        by_family.setdefault(fam, []).append(path)
    true = {frozenset(p) for paths in by_family.values() for p in combinations(sorted(paths), 2)}
    hit = pred & true
    per_kind = {}
    for kind in KINDS:
        pairs = [frozenset((a, b)) for a, (fa, ka) in families.items() if ka == kind
                 for b, (fb, kb) in families.items() if fb == fa and kb == "original"]
        per_kind[kind] = round(sum(p in pred for p in pairs) / len(pairs), 4) if pairs else None
    return {"predicted_pairs": len(pred), "true_pairs": len(true), "correct_pairs": len(hit),
            "precision": round(len(hit) / len(pred), 4) if pred else 1.0,
            "recall": round(len(hit) / len(true), 4) if true else 1.0, "recall_by_kind": per_kind,
            "false_pairs": sorted([sorted(p) for p in pred - true])[:10]}


def split_run(name: str, gallery: Path, work: Path, models: Path, bases: int, seed: int) -> dict:
    """Plant, index and score one gallery over the grid of distances."""
    import ftspl

    home = work / name / "home"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(models, home / "models")
    truth = plant(gallery, work / name / "planted", pick_bases(gallery, bases, seed), seed)
    log(f"{name}: {len(truth)} copies of {len(truth) // len(KINDS)} models planted; indexing {gallery} and them")
    adds = [cli_run("index", "add", str(root), home=home, ok=(0, 1)).data for root in (gallery, work / name / "planted")]
    lib = ftspl.open(home)
    paths = [p for p, _ in _stored(home)]
    families = {p: family_of(p, gallery, truth) for p in paths}
    rows = []
    for d in GRID:
        rep = lib.duplicates(d)
        rows.append({"max_distance": d, "groups": len(rep.groups), "seconds": round(rep.seconds, 3),
                     **score([[m.path for m in g.members] for g in rep.groups], families)})
    dist = _distances(home, families)
    return {"gallery": str(gallery), "shapes": len(paths), "copies": len(truth), "bases": len(truth) // len(KINDS),
            "failed_to_index": sum(len(a.get("failures", [])) for a in adds), "distances": dist, "grid": rows}


def _stored(home: Path) -> list[tuple[str, np.ndarray]]:
    from ftspl.engine.home import Home
    from ftspl.engine.index.folder import IndexFolder
    from ftspl.engine.index.store import ShapeStore

    with ShapeStore(IndexFolder.at(Home(home).index_dir).store, readonly=True) as store:
        ids, vecs = store.all_embeddings()
        rows = {r.id: r.path for r in store.get([int(i) for i in ids])}
    return [(rows[int(i)], v) for i, v in zip(ids, vecs)]


def _distances(home: Path, families: dict[str, tuple[str, str]]) -> dict:
    """Where the true pairs lie (largest distance of a copy to its original, per kind) and the nearest
    pair of different models (the smallest distance a grouping would have to stay under)."""
    stored = _stored(home)
    paths = [p for p, _ in stored]
    x = np.stack([v for _, v in stored])
    d = np.sqrt(np.clip(2 - 2 * x @ x.T, 0, None))
    fam = [families[p][0] for p in paths]
    kinds = [families[p][1] for p in paths]
    same = np.array([[a == b for b in fam] for a in fam])
    np.fill_diagonal(same, False)
    neg = d[~same & ~np.eye(len(paths), dtype=bool)]
    out = {"nearest_different_models": round(float(neg.min()), 4),
           "different_models_below": {str(t): int((neg < t).sum() // 2) for t in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)}}
    for kind in KINDS:
        vals = [d[i, j] for i in range(len(paths)) if kinds[i] == kind for j in range(len(paths))
                if same[i, j] and kinds[j] == "original"]
        out[f"{kind}_to_original"] = {"max": round(float(max(vals)), 4), "median": round(float(np.median(vals)), 4)} \
            if vals else None
    return out


def f1(row: dict) -> float:
    p, r = row["precision"], row["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


def choose(rows: list[dict]) -> dict:
    """The middle of the longest run of grid distances with the best tuning F1 (the widest margin)."""
    best = max(f1(r) for r in rows)
    runs: list[list[dict]] = []
    for i, r in enumerate(rows):
        if abs(f1(r) - best) < 1e-9:
            if runs and runs[-1][-1] is rows[i - 1]:
                runs[-1].append(r)
            else:
                runs.append([r])
    longest = max(runs, key=len)
    return {**longest[len(longest) // 2], "f1": round(best, 4),
            "best_f1_from": longest[0]["max_distance"], "best_f1_to": longest[-1]["max_distance"]}


def scale_run(n: int, real: np.ndarray, max_distance: float, work: Path, models: Path) -> dict:
    """Time ``ftspl index duplicates`` on an index of ``n`` synthetic shapes (see the module)."""
    from annlib import synthetic_like

    from ftspl.engine.home import Home
    from ftspl.engine.index.anncache import AnnCache
    from ftspl.engine.index.folder import IndexFolder
    from ftspl.engine.index.store import ShapeStore
    from ftspl.engine.index.store.schema import ShapeRecord
    from ftspl.engine.model.manifest import ModelManifest

    home = work / f"scale-{n}" / "home"
    shutil.rmtree(home.parent, ignore_errors=True)
    shutil.copytree(models, home / "models")
    man = ModelManifest.load(Home(home).active_model_dir())
    folder = IndexFolder.at(Home(home).index_dir)
    rng = np.random.default_rng(5)
    n_near, n_exact = n // 100, n // 200
    base = synthetic_like(real, n - n_near - n_exact, seed=1)
    src = rng.choice(len(base), n_near + n_exact, replace=False)
    sigma = 0.5 * max_distance / np.sqrt(base.shape[1])  # a near copy sits about D/2 from its original
    near = base[src[:n_near]] + rng.standard_normal((n_near, base.shape[1]), dtype=np.float32) * sigma
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    vecs = np.concatenate([base, near, base[src[n_near:]]])
    digests = [f"s{i}" for i in range(len(base))] + [f"n{i}" for i in range(n_near)] + [f"s{j}" for j in src[n_near:]]
    t = time.perf_counter()
    store = ShapeStore(folder.store)
    store.ensure_compatible(man.model_id, man.model_hash, man.get_render_spec().digest(), man.embed_dim)
    for s in range(0, n, 5000):
        store.upsert_batch([ShapeRecord(f"/synthetic/{i:07d}.obj", digests[i], None, None, "mesh", vecs[i])
                            for i in range(s, min(n, s + 5000))])
    written = time.perf_counter() - t
    AnnCache(folder.ann, man.embed_dim).rebuild(store)
    built = time.perf_counter() - t - written
    store.close()
    log(f"scale: {n} shapes written in {written:.0f} s, ANN built in {built:.0f} s; timing index duplicates")
    run = cli_run("index", "duplicates", "--max-distance", str(max_distance), home=home)
    rep = run.data
    missed = _missed_pairs(home, vecs, max_distance, rep)
    return {"shapes": n, "planted_near": n_near, "planted_exact": n_exact, "dim": int(vecs.shape[1]),
            "store_write_s": round(written, 1), "ann_build_s": round(built, 1), "duplicates_s": rep["seconds"],
            "process_wall_s": round(run.wall_s, 1), "searches": rep["searches"], "exact_groups": rep["exact_groups"],
            "near_groups": rep["near_groups"], **missed,
            "command": f"ftspl index duplicates --max-distance {max_distance} --json (FTSPL_HOME={home})"}


def _missed_pairs(home: Path, vecs: np.ndarray, max_distance: float, rep: dict) -> dict:
    """Pairs within ``max_distance`` of 2,000 sampled shapes (exact search) that no group of ``rep`` joins."""
    group_of = {}
    for n, g in enumerate(rep["exact"] + rep["near"]):
        for m in g["members"]:
            group_of.setdefault(int(m["id"]) - 1, set()).add(n)  # ids are 1.. in write order
    sample = np.random.default_rng(9).choice(len(vecs), min(2000, len(vecs)), replace=False)
    pairs = missed = 0
    for s in range(0, len(sample), 250):
        rows = sample[s:s + 250]
        d = np.sqrt(np.clip(2 - 2 * vecs[rows] @ vecs.T, 0, None))
        for r, row in zip(rows, d):
            for j in np.flatnonzero(row <= max_distance):
                if j != r:
                    pairs += 1
                    missed += not (group_of.get(int(r), set()) & group_of.get(int(j), set()))
    return {"sampled_pairs_within": pairs, "sampled_pairs_missed": missed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune-seed", type=int, default=0, help="tuning seed: its val_gallery chooses D")
    ap.add_argument("--report-seed", type=int, default=5, help="report seed: its target gallery is reported")
    ap.add_argument("--bases", type=int, default=30, help="models that get planted copies, per gallery")
    ap.add_argument("--home", type=Path, default=None, help="a home whose active model to use (default: the "
                    "pretrained encoders, exported into the work folder)")
    ap.add_argument("--scale", type=int, default=0, help="also time index duplicates on this many synthetic shapes")
    ap.add_argument("--out", type=Path, default=RESULTS / "duplicates.json",
                    help="result file; the run is its entry named after the model (pretrained or the model id)")
    args = ap.parse_args(argv)
    from ftspl.data.protocol import check_use
    from ftspl.engine.errors import UsageError

    tune, report = bench_folder(args.tune_seed), bench_folder(args.report_seed)
    try:
        check_use(tune, "tune", "val_gallery")
        check_use(report, "report", "target")
    except UsageError as exc:
        raise SystemExit(str(exc)) from None
    work = study_home().cache / "duplicates" / ("pretrained" if args.home is None else args.home.name)
    models = (args.home / "models") if args.home else _pretrained(work)
    t0 = time.perf_counter()
    tuned = split_run("tune", tune / "val_gallery", work, models, args.bases, seed=args.tune_seed)
    pick = choose(tuned["grid"])
    log(f"tuning: D = {pick['max_distance']} (precision {pick['precision']}, recall {pick['recall']})")
    reported = split_run("report", report / "target", work, models, args.bases, seed=args.report_seed)
    at = next(r for r in reported["grid"] if r["max_distance"] == pick["max_distance"])
    result = {"model": json.loads(next(models.glob("*/manifest.json")).read_text())["model_id"],
              "chosen_max_distance": pick["max_distance"], "rule": "middle of the longest run of D with the best tuning F1",
              "tune_at_chosen": pick, "report_at_chosen": at, "tune": tuned, "report": reported}
    if args.scale:
        real = np.stack([v for _, v in _stored(work / "tune" / "home")])
        result["scale"] = scale_run(args.scale, real, pick["max_distance"], work, models)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    entry = "pretrained" if args.home is None else result["model"]
    update_entry(args.out, entry, result_record("duplicates.py", argv, config, **result))
    print(json.dumps({k: result[k] for k in ("model", "chosen_max_distance", "tune_at_chosen", "report_at_chosen")}
                     | {"scale": result.get("scale")}))
    return 0


def _pretrained(work: Path) -> Path:
    home = work / "model"
    if not (home / "models" / "ACTIVE").is_file():
        log("exporting the pretrained encoders (ftspl export --pretrained)")
        cli_run("export", "--pretrained", home=home)
    return home / "models"


if __name__ == "__main__":
    sys.exit(main())
