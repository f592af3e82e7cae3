"""``ftspl demo``: the pretrained baseline end to end on real meshes.

It only chains the stages a user runs by hand (export -> index add -> query ->
eval), each handing over through the home folder, and prints what they made.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ftspl.cli import console


def demo_cmd(out: Path, as_json: bool) -> None:
    from ftspl.data.demo_set import build_demo_set
    from ftspl.engine.errors import ModelError
    from ftspl.engine.home import Home

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    home = Home(out / ".ftspl")
    cache = Path(os.environ.get("FTSPL_CACHE", Path.cwd() / ".cache")) / "debian"
    timings: dict[str, float] = {}

    t = time.perf_counter()
    ds = build_demo_set(out, cache)
    timings["data_s"] = time.perf_counter() - t
    console.warn(f"[1/4] data: {ds.n_gallery} gallery meshes, {ds.n_photos} query photos, {len(ds.classes)} classes ({ds.notice})")

    t = time.perf_counter()
    try:
        model_dir = home.active_model_dir()
        console.warn(f"[2/4] model: reusing {model_dir.name}")
    except ModelError:  # none yet, or a broken one: export a fresh model
        from ftspl.export.onnx_export import ExportConfig, export_encoders
        from ftspl.export.pretrained import pretrained_model

        img, mv, meta = pretrained_model("efficientnet_lite0")
        model_dir, man = export_encoders(img, mv, meta, home, ExportConfig())
        console.warn(f"[2/4] model: exported {man.model_id} (parity {man.parity_max_abs_diff:.1e})")
    timings["export_s"] = time.perf_counter() - t

    from ftspl.engine.library import IndexConfig, Library

    lib = Library(home)
    t = time.perf_counter()
    with console.progress(True) as update:
        report = lib.add(ds.gallery, IndexConfig(label_from="top"), progress=update)
    timings["index_s"] = time.perf_counter() - t
    rate = report.processed / report.seconds if report.seconds else 0.0
    console.warn(
        f"[3/4] index: +{report.added} shapes ({report.unchanged} unchanged, {len(report.failed)} failed), "
        f"{rate:.2f} shapes/s"
    )

    from ftspl.engine.evaluate import evaluate_folder, labelled_photos
    from ftspl.engine.photos import load_photo
    from ftspl.engine.sheet import rows_for, save_sheet

    photos = labelled_photos(ds.photos)
    t = time.perf_counter()
    with lib.open_reader() as reader:
        images = [load_photo(p) for p, _ in photos]  # decoded once: for the query and the sheet
        results = reader.query_images(images, [str(p) for p, _ in photos], 5)
        rows = rows_for(reader.store, images, [p.stem[:22] for p, _ in photos], [lab for _, lab in photos], results)
    timings["query_s"] = time.perf_counter() - t
    table = []
    for (p, label), res in zip(photos, results):
        top = [h.label or "-" for h in res.hits]
        table.append([p.name[:34], label, " ".join(top), "yes" if top and top[0] == label else "no"])
    sheet = save_sheet(rows, out / "contact_sheet.png")
    metrics = evaluate_folder(ds.photos, home)["metrics"]

    summary = {
        "model_id": lib.manifest.model_id,
        "gallery": ds.n_gallery,
        "photos": ds.n_photos,
        "classes": ds.classes,
        "metrics": metrics,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "contact_sheet": str(sheet),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        console.print_json(summary)
        return
    console.print_table("[4/4] query photos (catalogue icons) -> top-5 shapes", ["photo", "label", "top-5 labels", "top-1 ok"], table)
    console.print_table("retrieval metrics (pretrained baseline)", list(metrics), [[f"{v:.3f}" for v in metrics.values()]])
    console.out(f"contact sheet: {sheet}\nresults: {out / 'results.json'}")
