"""``ftspl demo``: FTSPL end to end on real meshes, on a CPU, in minutes.

It only chains the stages a user runs by hand, each handing over through a
folder:

1. ``ftspl data sh3d --small``  -> ``OUT/data`` (photo renders, val photos, query photos, mesh gallery);
2. ``ftspl train --preset FTSPL --mode head`` -> ``OUT/run`` (validated on ``data/val``, never on the queries);
3. ``ftspl export OUT/run`` -> ``OUT/.ftspl/models`` (ONNX encoders, now the active model);
4. ``ftspl index add data/target`` -> ``OUT/.ftspl`` (the gallery);
5. ``ftspl query`` a few held-out photos -> a table and ``OUT/contact_sheet.png``;
6. ``ftspl eval data/queries`` -> the paper's metrics on every held-out photo.

Re-running reuses the data (same config) and a finished training run with the
same settings; the index is rebuilt for the exported model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ftspl.cli import console


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds and shows; it trains with :class:`TrainConfig`'s default budget (head mode, CPU)."""

    bench: str = "small"  #: ftspl.data.bench preset
    seed: int = 0
    n_queries: int = 6  #: held-out photos shown in the table / contact sheet (one per class)
    top: int = 5


#: the training settings the demo reports beside its own config
_BUDGET = ("rounds", "epochs", "warmup_epochs", "lam", "augment_copies", "mode")


def _train_config(data, run: Path, cfg: DemoConfig):
    """FTSPL with TrainConfig's defaults, validated on ``data/val`` (never on the queries), on the CPU."""
    from ftspl.train.config import TrainConfig, apply_preset

    base = TrainConfig(source=str(data.source), target=str(data.target), queries=str(data.val), out=str(run),
                       seed=cfg.seed, device="cpu")
    return apply_preset(base, "FTSPL")


def _finished_run(run: Path, tcfg) -> bool:
    """A complete earlier run with exactly these settings (then training is skipped)."""
    from ftspl.train.runio import CONFIG, METRICS

    try:
        same = json.loads((run / CONFIG).read_text()) == json.loads(tcfg.to_json())
        rounds = json.loads((run / METRICS).read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return False
    return same and len(rounds) == tcfg.rounds + 1


def _pick_queries(photos: list[tuple[Path, str]], n: int) -> list[tuple[Path, str]]:
    """One photo render per class (the first ``n`` classes), so the table shows different things."""
    chosen: dict[str, tuple[Path, str]] = {}
    for p, label in photos:
        if label not in chosen and "__r" in p.stem:
            chosen[label] = (p, label)
    for p, label in photos:  # classes with icons only
        chosen.setdefault(label, (p, label))
    return list(chosen.values())[:n]


def demo_cmd(out: Path, as_json: bool, cfg: DemoConfig = DemoConfig()) -> None:
    import importlib

    # OpenMP workers that spin-wait steal shared cores from each other; set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Triton's LLVM (torch._dynamo: the optimiser and the ONNX exporter) must load
    # before Mesa's, i.e. before the photo renderer's EGL context; the other order
    # segfaults (see ftspl.engine.rendering.renderer._load_torch_llvm_first).
    importlib.import_module("torch._dynamo")
    from ftspl.data.bench import build_sh3d_benchmark, preset_config
    from ftspl.engine.home import Home

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    # The demo's own home: its model and index never replace the user's; its cache holds the
    # Debian packages and the trainer's views and features, so a rerun reuses them.
    home = Home(out / ".ftspl")
    timings: dict[str, float] = {}
    show = not as_json
    t_all = time.perf_counter()

    # 1. data ------------------------------------------------------------------------------
    t = time.perf_counter()
    with console.progress(show) as update:
        data = build_sh3d_benchmark(out / "data", home.debian_cache, preset_config(cfg.bench, cfg.seed),
                                    progress=update)
    timings["data_s"] = time.perf_counter() - t
    console.warn(
        f"[1/6] data: {len(data.classes)} classes; models {data.counts}; photos {data.photos} "
        f"({time.perf_counter() - t:.0f} s; credits in {data.notice})"
    )

    # 2. train -----------------------------------------------------------------------------
    from ftspl.train.loop import train

    run = out / "run"
    tcfg = _train_config(data, run, cfg)
    t = time.perf_counter()
    if _finished_run(run, tcfg):
        rounds = json.loads((run / "metrics.json").read_text())["rounds"]
        console.warn(f"[2/6] train: reusing the finished run {run}")
    else:
        if run.exists():
            shutil.rmtree(run)  # an interrupted or differently configured demo run of ours

        def on_round(rec: dict) -> None:
            m = rec.get("metrics", {})
            if show and m:
                console.warn(
                    f"      round {rec['round']}: pseudo-label acc {rec.get('pseudo_acc', float('nan')):.3f}, "
                    f"val NN {m['NN']:.3f} FT {m['FT']:.3f} ANMRR {m['ANMRR']:.3f}"
                )

        with console.progress(show) as update:
            result = train(tcfg, progress=update, on_round=on_round, home=home)
        rounds = result.rounds
        for path, reason in result.skipped:
            console.warn(f"{path}: {reason}")
        console.warn(f"[2/6] train: FTSPL, {tcfg.mode} mode, {tcfg.rounds} rounds ({time.perf_counter() - t:.0f} s)")
    timings["train_s"] = time.perf_counter() - t

    # 3. export ----------------------------------------------------------------------------
    from ftspl.export.from_run import run_model
    from ftspl.export.onnx_export import ExportConfig, export_encoders

    t = time.perf_counter()
    img, mv, meta = run_model(run)
    _, man = export_encoders(img, mv, meta, home, ExportConfig())
    timings["export_s"] = time.perf_counter() - t
    console.warn(f"[3/6] export: {man.model_id} (onnxruntime vs torch {man.parity_max_abs_diff:.1e}; "
                 f"{time.perf_counter() - t:.0f} s)")

    # 4. index -----------------------------------------------------------------------------
    from ftspl.engine.index.library import IndexConfig, Library

    lib = Library(home)
    t = time.perf_counter()
    with console.progress(show) as update:
        report = lib.add(data.target, IndexConfig(label_from="top", rebuild=True), progress=update)
    timings["index_s"] = time.perf_counter() - t
    console.warn(f"[4/6] index: +{report.added} shapes ({len(report.failed)} failed; {time.perf_counter() - t:.0f} s)")

    # 5. query -----------------------------------------------------------------------------
    from ftspl.engine.loading.photos import load_photo
    from ftspl.engine.rendering.sheet import rows_for, save_sheet
    from ftspl.engine.scoring.evaluate import evaluate_folder, labelled_photos

    photos = _pick_queries(labelled_photos(data.queries), cfg.n_queries)
    t = time.perf_counter()
    with lib.open_reader() as reader:
        images = [load_photo(p) for p, _ in photos]
        results = reader.query_images(images, [str(p) for p, _ in photos], cfg.top)
        rows = rows_for(reader.store, images, [p.stem[:22] for p, _ in photos], [lab for _, lab in photos], results)
    sheet = save_sheet(rows, out / "contact_sheet.png")
    timings["query_s"] = time.perf_counter() - t
    table = []
    for (p, label), res in zip(photos, results):
        top = [h.label or "-" for h in res.hits]
        table.append([p.name[:40], label, " ".join(top), "yes" if top and top[0] == label else "no"])

    # 6. metrics ---------------------------------------------------------------------------
    t = time.perf_counter()
    ev = evaluate_folder(data.queries, home)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all
    metrics = ev["metrics"]
    val = rounds[-1].get("metrics", {}) if rounds else {}

    summary = {
        "model_id": man.model_id,
        "classes": data.classes,
        "models": data.counts,
        "photos": data.photos,
        "queries_scored": ev["queries"],
        "gallery": ev["gallery"],
        "metrics": metrics,
        "val_metrics_last_round": val,
        "pseudo_label_acc": [r.get("pseudo_acc") for r in rounds],
        "config": {**asdict(cfg), **{k: getattr(tcfg, k) for k in _BUDGET}},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "contact_sheet": str(sheet),
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    if as_json:
        console.print_json(summary)
        return
    console.print_table(f"[5/6] held-out photos -> top-{cfg.top} shapes", ["photo", "label", f"top-{cfg.top} labels",
                        "top-1 ok"], table)
    console.print_table(f"[6/6] retrieval metrics: {ev['queries']} held-out photos vs {ev['gallery']} shapes (FTSPL)",
                        list(metrics), [[f"{v:.3f}" for v in metrics.values()]])
    console.out(f"contact sheet: {sheet}\nresults: {out / 'results.json'}\n"
                f"total {timings['total_s'] / 60:.1f} min (" + ", ".join(
                    f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s") + ")")
