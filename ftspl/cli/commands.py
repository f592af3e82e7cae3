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
from ftspl.engine.errors import FtsplError


def index_add_cmd(root: Path, options: dict, home, runtime, as_json: bool) -> None:
    """``ftspl index add``: :meth:`ftspl.api.Library.add` with a progress bar; exit 1 when a file failed."""
    from ftspl.api import Library

    lib = Library(home, device=runtime.device, threads=runtime.intra_op_threads)
    with console.progress(not as_json) as update:
        report = lib.add(root, progress=update, **options)
    finish_add(report, report.to_dict(), as_json,
               f"added {report.added}, updated {report.updated}, unchanged {report.unchanged}, "
               f"failed {len(report.failures)} in {report.seconds:.1f} s ({report.shapes_per_s:.2f} shapes/s)")


def finish_add(report, summary: dict, as_json: bool, line: str) -> None:
    """One line per failed file, then the summary (JSON or one line); exit 1 when a file failed."""
    failures = summary["failures"]
    for f in failures:
        console.warn(f"{f['path']}: {f['reason']}")
    if as_json:
        console.print_json(summary)
    else:
        console.out(line)
    if failures:
        raise typer.Exit(1)


def index_remove_cmd(paths, wait: bool, home, as_json: bool) -> None:
    from ftspl.api import Library

    removed = Library(home).remove(list(paths), wait=wait)
    if as_json:
        console.print_json({"removed": removed})
    else:
        console.out(f"removed {len(removed)} shape(s)")
    if not removed:
        raise FtsplError(f"{', '.join(str(p) for p in paths)}: not in the index; see 'ftspl index stats'")


def index_reembed_cmd(options: dict, home, runtime, as_json: bool) -> None:
    """One line per shape that could not be re-encoded, then the summary; exit 1 when one failed."""
    from dataclasses import asdict

    from ftspl.api import Library

    lib = Library(home, device=runtime.device, threads=runtime.intra_op_threads)
    with console.progress(not as_json) as update:
        rep = lib.reembed(progress=update, **options)
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


def index_stats_cmd(home, as_json: bool) -> None:
    from ftspl.api import Library

    stats = Library(home).stats()
    if as_json:
        console.print_json(stats.to_dict())
        return
    console.print_table(
        "index",
        ["field", "value"],
        [[k, getattr(stats, k)] for k in ("count", "model_id", "embed_dim", "render_spec_hash", "bytes", "index_dir")],
    )
    if stats.labels:
        console.print_table("labels", ["label", "shapes"],
                            [[k or "-", v] for k, v in sorted(stats.labels.items(), key=lambda kv: str(kv[0]))])


def index_verify_cmd(home, as_json: bool) -> None:
    from ftspl.api import Library

    report = Library(home).verify()
    if as_json:
        console.print_json(report.to_dict())
    else:
        for p in report.problems:
            console.warn(p)
        console.out("index OK: " + ", ".join(f"{k} {v}" for k, v in report.facts.items()) if report.ok
                    else "index BROKEN")
    if not report.ok:
        raise typer.Exit(1)


def query_cmd(photos, top: int, sheet, home, runtime, as_json: bool, max_pixels: int = MAX_IMAGE_PIXELS,
              max_file_bytes: int = MAX_FILE_BYTES, hnsw_ef: int | None = None, started: float | None = None,
              max_distance: float | None = None, min_score: float | None = None, fusion: str | None = None,
              rerank: tuple[str, float] | None = None, box: str | None = None,
              regions: tuple[str | None, str | None] = (None, None)) -> None:
    """``ftspl query``: :meth:`ftspl.api.Library.query`; JSON keeps start-up (model, index) apart from the query."""
    from ftspl.api import Library

    t_start = time.perf_counter() if started is None else started
    lib = Library(home, device=runtime.device, threads=runtime.intra_op_threads, follow=False)
    if box is not None:
        from ftspl.photo_input import parse_box

        box = parse_box(box)
    t_call = time.perf_counter()
    try:
        answer = lib.query([str(p) for p in photos], top, box=box, fuse=fusion is not None, fusion=fusion,
                           rerank=None if rerank is None else rerank[0],
                           rerank_weight=None if rerank is None else rerank[1], max_distance=max_distance,
                           min_score=min_score, hnsw_ef=hnsw_ef, skip_bad=True, max_pixels=max_pixels,
                           max_file_bytes=max_file_bytes, regions=regions[0], region_fusion=regions[1])
        if sheet is not None and answer.results:
            lib.contact_sheet(answer, sheet)
    finally:
        lib.close()
    results, cut, cut_from = answer.results, answer.max_distance, answer.max_distance_from
    for f in answer.failed:
        console.warn(f"{f.path}: {f.reason}")
    if as_json:
        console.print_json({
            "startup_s": round((t_call - t_start) + answer.open_s, 4),  # the model, the index, the encoder session
            "query_s": round(answer.decode_s + answer.search_s, 4),  # decoding, embedding, searching
            "ms": round(answer.search_s * 1000, 2),  # the search alone (kept for scripts)
            **answer.to_dict(),
        })
    else:
        for r in results:
            title = f"{r.photo}"
            if cut is not None and not r.match:
                title += f": no match (every shape is farther than {cut:.4f}, {cut_from})"
            where = answer.regions != "none"  # which window of the photo each hit matched
            console.print_table(
                title, ["rank", "distance", "view (similarity)", *(["region"] if where else []), "label", "path"],
                [[h.rank, f"{h.distance:.4f}" + ("" if h.match else " (no match)"),
                  "-" if h.view is None else f"{h.view} ({h.view_similarity:.3f})",
                  *([_region_text(h.region)] if where else []), h.label or "-", h.path]
                 for h in r.hits],
            )
        if answer.views_note and results:
            console.info(answer.views_note)
        if sheet is not None and results:
            console.out(f"contact sheet: {sheet}")
    if answer.failed:
        raise typer.Exit(1)


def _region_text(region) -> str:
    return "whole photo" if region is None else f"{region.x0},{region.y0},{region.x1},{region.y1}"


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

