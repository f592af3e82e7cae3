"""Bodies of the CLI commands: call the library, format the result, choose the exit code.

Kept apart from ``main.py`` so the Typer declarations stay a readable table of
options; heavy modules are imported inside each function.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ftspl.cli import console
from ftspl.engine.constants import MAX_FILE_BYTES, MAX_IMAGE_PIXELS
from ftspl.engine.errors import FtsplError, UsageError


def index_add_cmd(root: Path, cfg, home, runtime, as_json: bool) -> None:
    from ftspl.engine.index.library import Library

    lib = Library(home, runtime)
    with console.progress(not as_json) as update:
        report = lib.add(root, cfg, progress=update)
    summary = add_summary(report)
    finish_add(report, summary, as_json,
               f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
               f"failed {len(report.failed)} in {report.seconds:.1f} s ({summary['shapes_per_s']:.2f} shapes/s)")


def add_summary(report, extra: dict | None = None) -> dict:
    """The JSON of an add (plain, Ray or shards): counts, failures, time and rate."""
    rate = report.processed / report.seconds if report.seconds > 0 else 0.0
    return {
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "failed": len(report.failed),
        "failures": [{"path": p, "reason": r} for p, r in report.failed],
        "seconds": round(report.seconds, 3),
        "shapes_per_s": round(rate, 3),
        **(extra or {}),
    }


def finish_add(report, summary: dict, as_json: bool, line: str) -> None:
    """One line per failed file, then the summary (JSON or one line); exit 1 when a file failed."""
    for path, reason in report.failed:
        console.warn(f"{path}: {reason}")
    if as_json:
        console.print_json(summary)
    else:
        console.out(line)
    if report.failed:
        raise typer.Exit(1)


def index_remove_cmd(paths, wait: bool, home, as_json: bool) -> None:
    from ftspl.engine.index.library import IndexConfig, Library

    lib = Library(home)
    removed = lib.remove([str(p) for p in paths], IndexConfig(wait_lock=wait))
    if as_json:
        console.print_json({"removed": removed})
    else:
        console.out(f"removed {len(removed)} shape(s)")
    if not removed:
        raise FtsplError(f"{', '.join(str(p) for p in paths)}: not in the index; see 'ftspl index stats'")


def index_reembed_cmd(cfg, drop_missing: bool, home, runtime, as_json: bool) -> None:
    """One line per shape that could not be re-encoded, then the summary; exit 1 when one failed."""
    from dataclasses import asdict

    from ftspl.engine.index.library import Library

    lib = Library(home, runtime)
    with console.progress(not as_json) as update:
        rep = lib.reembed(cfg, progress=update, drop_missing=drop_missing)
    for path, reason in rep.failed:
        console.warn(f"{path}: {reason}")
    if as_json:
        console.print_json({**asdict(rep), "failed": len(rep.failed), "seconds": round(rep.seconds, 3),
                            "failures": [{"path": p, "reason": r} for p, r in rep.failed]})
    elif rep.up_to_date:
        console.out(f"the index already holds {rep.model}'s embeddings ({rep.total} shapes); nothing to do")
    elif rep.swapped:
        console.out(f"re-embedded {rep.total - len(rep.dropped)} shapes with {rep.model} (was {rep.model_before}) "
                    f"in {rep.seconds:.1f} s: {rep.encoded} now ({rep.from_cache} from cached views), "
                    f"{rep.resumed} by an earlier run; removed {len(rep.dropped)}")
    else:
        console.out(f"not swapped: the index stays on {rep.model_before}; {rep.encoded + rep.resumed} of "
                    f"{rep.total} shapes are encoded and kept for the next run")
    if rep.failed:
        raise typer.Exit(1)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*") if p.is_file())


def index_stats_cmd(home, as_json: bool) -> None:
    from ftspl.engine.index.library import Library
    from ftspl.engine.index.store import ShapeStore

    lib = Library(home)
    if not lib.exists():
        raise FtsplError(f"{lib.dir}: no index yet; run 'ftspl index add FOLDER' first")
    store = ShapeStore(lib.store_path, readonly=True)
    try:
        info = store.get_info()
        labels = store.labels()
        stats = {
            "count": store.count(),
            "model_id": info.get("model_id"),
            "active_model_id": lib.manifest.model_id,
            "embed_dim": info.get("embed_dim"),
            "render_spec_hash": info.get("render_spec_hash"),
            "bytes": _dir_bytes(lib.dir),
            "index_dir": str(lib.dir),
            "labels": labels,
        }
    finally:
        store.close()
    if as_json:
        console.print_json(stats)
        return
    console.print_table(
        "index",
        ["field", "value"],
        [[k, stats[k]] for k in ("count", "model_id", "embed_dim", "render_spec_hash", "bytes", "index_dir")],
    )
    if labels:
        console.print_table("labels", ["label", "shapes"], [[k or "-", v] for k, v in sorted(labels.items(), key=lambda kv: str(kv[0]))])


def index_verify_cmd(home, as_json: bool) -> None:
    from ftspl.engine.index.verify import verify_index

    problems, facts = verify_index(home)
    if as_json:
        console.print_json({"ok": not problems, "problems": problems, **facts})
    else:
        for p in problems:
            console.warn(p)
        console.out("index OK: " + ", ".join(f"{k} {v}" for k, v in facts.items()) if not problems else "index BROKEN")
    if problems:
        raise typer.Exit(1)


def query_cmd(photos, top: int, sheet, home, runtime, as_json: bool, max_pixels: int = MAX_IMAGE_PIXELS,
              max_file_bytes: int = MAX_FILE_BYTES, hnsw_ef: int | None = None, started: float | None = None,
              max_distance: float | None = None, min_score: float | None = None, fusion: str | None = None,
              rerank: tuple[str, float] | None = None) -> None:
    """Decode, embed and search; JSON keeps start-up (model, index) apart from the query itself."""
    from ftspl.engine.errors import ImageLoadError
    from ftspl.engine.index.library import Library
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.scoring.views import MatchConfig, view_fields, views_note

    if top < 1:
        raise UsageError("--top must be at least 1")
    match = MatchConfig() if rerank is None else MatchConfig(rerank=rerank[0], blend_weight=rerank[1])
    if fusion is not None and match.rerank != "none":
        raise UsageError(f"--rerank {match.rerank} works on single-photo answers; a --fuse list keeps its fused order")
    t_start = time.perf_counter() if started is None else started
    lib = Library(home, runtime)
    t_model = time.perf_counter()
    images, names, failed, decode_ms = [], [], [], {}
    for p in photos:  # decode each on its own: one bad photo must not sink the others
        t = time.perf_counter()
        try:
            images.append(load_photo(p, max_pixels=max_pixels, max_bytes=max_file_bytes,
                                     pixels_flag="--max-pixels", bytes_flag="--max-file-bytes"))
            names.append(str(p))
            decode_ms[str(p)] = (time.perf_counter() - t) * 1000
        except ImageLoadError as exc:
            failed.append((str(p), exc.reason))
    t_decoded = time.perf_counter()
    with lib.open_reader() as reader:
        if hnsw_ef is not None:
            reader.ann.ef_search = hnsw_ef
        lib.encoders.wait_warm()  # the photo encoder's session is built in the background: start-up too
        t_open = time.perf_counter()
        if fusion is None:
            results = reader.query_images(images, names, top, match)
        else:
            results = _fused_query(lib, reader, images, names, top, fusion)
        t_done = time.perf_counter()
        if sheet is not None and results:
            from ftspl.engine.rendering.sheet import rows_for, save_sheet

            names_only = [Path(res.photo).name if fusion is None else res.photo for res in results]
            # a fused answer is drawn beside its first photo
            rows = rows_for(reader.store, images[: len(results)], names_only, [None] * len(results), results)
            save_sheet(rows, sheet)
    cut, cut_from = _open_set_cut(lib, max_distance, min_score)
    note = views_note(lib.manifest.model_id, lib.encoders.has_view_output, results)
    startup_s = (t_model - t_start) + (t_open - t_decoded)  # the model, then the index and encoder session
    query_s = (t_decoded - t_model) + (t_done - t_open)  # decoding, embedding, searching
    for path, reason in failed:
        console.warn(f"{path}: {reason}")
    if as_json:
        console.print_json(
            {
                "model_id": lib.manifest.model_id,
                "startup_s": round(startup_s, 4),
                "query_s": round(query_s, 4),
                "ms": round((t_done - t_decoded) * 1000, 2),  # opening the index + the search (kept for scripts)
                "max_distance": None if cut is None else round(cut, 6),
                "max_distance_from": cut_from,
                "rerank": match.rerank if fusion is None else "none",
                "views_note": note,
                "results": [
                    {
                        "photo": r.photo,
                        "decode_ms": round(sum(decode_ms[n] for n in names) if fusion else decode_ms[r.photo], 2),
                        "match": cut is None or bool(r.hits and r.hits[0].distance <= cut),
                        "hits": [{"rank": h.rank, "path": h.path, "distance": round(h.distance, 6), "label": h.label,
                                  "match": cut is None or h.distance <= cut, **view_fields(h)} for h in r.hits],
                    }
                    for r in results
                ],
                "failed": [{"path": p, "reason": r} for p, r in failed],
            }
        )
    else:
        for r in results:
            title = f"{r.photo}"
            if cut is not None and not (r.hits and r.hits[0].distance <= cut):
                title += f": no match (every shape is farther than {cut:.4f}, {cut_from})"
            console.print_table(
                title, ["rank", "distance", "view (similarity)", "label", "path"],
                [[h.rank, f"{h.distance:.4f}" + ("" if cut is None or h.distance <= cut else " (no match)"),
                  "-" if h.view is None else f"{h.view} ({h.view_similarity:.3f})", h.label or "-", h.path]
                 for h in r.hits],
            )
        if note and results:
            console.info(note)
        if sheet is not None and results:
            console.out(f"contact sheet: {sheet}")
    if failed:
        raise typer.Exit(1)


def _fused_query(lib, reader, images: list, names: list[str], top: int, fusion: str) -> list:
    """One result for all the photos (``--fuse``), named after them."""
    import numpy as np

    from ftspl.engine.index.reader import QueryResult
    from ftspl.engine.model.preprocess import to_tensor
    from ftspl.engine.scoring.fusion import FUSIONS, fuse_embeddings, fused_search
    from ftspl.engine.scoring.views import MatchConfig, match_views

    if fusion not in FUSIONS:
        raise UsageError(f"--fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    if not images:
        return []
    emb = lib.encoders.embed_photos(np.stack([to_tensor(im, lib.encoders.preprocess) for im in images]))
    hits, gen = fused_search(reader, emb, top, fusion)
    hits = match_views(reader, fuse_embeddings(emb), [hits], top, MatchConfig(rerank="none"))[0]  # nearest the mean
    return [QueryResult(" + ".join(names), hits, gen)]


def _open_set_cut(lib, max_distance: float | None, min_score: float | None) -> tuple[float | None, str | None]:
    """The distance beyond which a hit is no match, and where it comes from (flag, calibration, none)."""
    from ftspl.engine.scoring.openset import distance_of, load_calibration

    if max_distance is not None and min_score is not None:
        raise UsageError("give --max-distance or --min-score, not both (they are one cut in two units)")
    if max_distance is not None:
        return max_distance, "--max-distance"
    if min_score is not None:
        return distance_of(min_score), "--min-score"
    cal = load_calibration(lib.dir, lib.manifest.model_hash)
    if cal is None:
        return None, None
    return cal.max_distance, f"calibrated on {cal.photos} at {cal.precision:.0%} precision"


def calibrate_cmd(queries: Path, home, runtime, precision: float, as_json: bool) -> None:
    from dataclasses import asdict

    from ftspl.engine.scoring.openset import calibrate_folder

    cal = calibrate_folder(queries, home, runtime, precision)
    if as_json:
        console.print_json(asdict(cal) | {"min_score": round(cal.min_score, 6)})
        return
    console.out(
        f"open-set threshold: distance {cal.max_distance:.4f} (score {cal.min_score:.4f}) keeps {cal.precision:.0%} "
        f"precision on {cal.known} known photos; accepts {cal.known_accepted:.0%} of them"
        + ("" if cal.unknown_rejected is None else
           f", rejects {cal.unknown_rejected:.0%} of {cal.unknown} unknown ones (AUROC {cal.auroc:.3f})")
    )


def eval_cmd(queries: Path, home, runtime, as_json: bool) -> None:
    from ftspl.engine.scoring.evaluate import evaluate_folder

    res = evaluate_folder(queries, home, runtime)
    if as_json:
        console.print_json(res)
        return
    console.print_table(
        f"{res['queries']} photos vs {res['gallery']} shapes",
        list(res["metrics"].keys()),
        [[f"{v:.4f}" for v in res["metrics"].values()]],
    )
    for path, reason in res["failed"]:
        console.warn(f"{path}: {reason}")
    if res["failed"]:
        raise typer.Exit(1)


def doctor_cmd(home, device: str, as_json: bool = False) -> None:
    from ftspl.engine.doctor import run_checks

    checks = run_checks(home, device)
    ok_all = all(ok for _, ok, _ in checks)
    if as_json:
        console.print_json({"ok": ok_all, "checks": [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks]})
    else:
        for name, ok, detail in checks:
            console.out(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok_all:
        raise typer.Exit(1)

