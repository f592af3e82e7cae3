"""``ftspl data``: build benchmark data sets from Debian packages.

Registered by the main app as ``app.add_typer(data_app, name="data")``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ftspl.cli import console
from ftspl.engine.errors import FtsplError

data_app = typer.Typer(help="Build benchmark data sets (fetched with apt-get, cached).", no_args_is_help=True)


@data_app.callback()
def _data() -> None:
    """Build benchmark data sets (a group even with one command, so ``data sh3d`` stays the path)."""


_OUT = typer.Option(..., "--out", help="Folder for source/, val/, val_gallery/, queries/, target/ (val_scenes/), "
                    "manifest.json, NOTICE.txt.")
_SEED = typer.Option(0, "--seed", help="Split and render seed (same seed, same files).")
_RENDERS = typer.Option(None, "--renders", min=0, help="Photo renders per photo model (default: the preset's).")
_SMALL = typer.Option(False, "--small", help="The small preset: 8 models per class, 2 renders (about a minute).")
_VARIETY = typer.Option(
    None, "--variety",
    help="Widen the source (training) photos with a ftspl.data.variety preset: base, clutter, materials, camera, "
         "more_renders, all, scenes (the model in furnished rooms). val/ and queries/ keep the base photos. "
         "Default: the preset's (ftspl.data.variety.DEFAULT_VARIETY: more_renders for the full build, base for --small).",
)
_SCENES = typer.Option(
    False, "--scenes",
    help="Also write val_scenes/: scene photos of the val models in furnished rooms among source models "
         "(a tuning split ranking val_gallery/, like val/).",
)
_CACHE = typer.Option(None, "--cache", help="Debian package cache (default: <home>/cache/debian).")
_HOME = typer.Option(None, "--home", help="Home folder whose cache holds the packages (default: $FTSPL_HOME or ./.ftspl).")
_JSON = typer.Option(False, "--json", help="Print machine-readable JSON.")


@data_app.command("sh3d")
def sh3d(
    out: Path = _OUT,
    seed: int = _SEED,
    renders: int | None = _RENDERS,
    small: bool = _SMALL,
    variety: str | None = _VARIETY,
    scenes: bool = _SCENES,
    cache: Path | None = _CACHE,
    home: Path | None = _HOME,
    as_json: bool = _JSON,
) -> None:
    """The SH3D benchmark: photo-domain renders + icons (source/val/queries) and a mesh gallery (target)."""
    from ftspl.data.bench import build_sh3d_benchmark, preset_config
    from ftspl.data.protocol import SPLITS, seed_role
    from ftspl.data.scene_build import SCENE_FOLDER
    from ftspl.data.variety import DEFAULT_VARIETY, PHOTO_VARIETY
    from ftspl.engine.home import Home

    preset = "small" if small else "full"
    variety = variety or DEFAULT_VARIETY[preset]
    try:
        cfg = preset_config(preset, seed, variety)
        cfg = replace(cfg, **({"renders": renders} if renders is not None else {}))
        if scenes:
            cfg = replace(cfg, val_scenes=int(PHOTO_VARIETY["scenes"]["scenes"]))
        with console.progress(not as_json) as update:
            split = build_sh3d_benchmark(out, cache or Home.resolve(home).debian_cache, cfg, progress=update)
    except FtsplError as exc:
        console.error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    summary = {
        "out": str(split.root),
        "seed": seed,
        "preset": preset,
        "variety": variety,
        "scenes": scenes,
        "classes": split.classes,
        "models": split.counts,
        "photos": split.photos,
        "failed": split.failed,
        "seed_role": seed_role(seed),
        "splits": {k: v["role"] for k, v in SPLITS.items() if k != SCENE_FOLDER or scenes},
        "manifest": str(split.manifest),
        "notice": str(split.notice),
        "seconds": round(split.seconds, 1),
    }
    if as_json:
        console.print_json(summary)
        return
    rows = [
        [c, *(len(split.groups[g].get(c, [])) for g in ("source", "val", "queries", "target"))]
        for c in split.classes
    ]
    rows.append(["total", *(split.counts[g] for g in ("source", "val", "queries", "target"))])
    console.print_table(
        f"SH3D benchmark (seed {seed}): models per group", ["class", "source", "val", "queries", "target"], rows
    )
    console.out(
        f"photos: {split.photos['source']} source, {split.photos['val']} val, {split.photos['queries']} queries"
        f"{f', {split.photos.get(SCENE_FOLDER, 0)} val scenes' if scenes else ''} "
        f"({cfg.photo_for('source')[1]} / {cfg.renders} renders per source / other model"
        f"{' + icon' if cfg.icons else ''}"
        f"{f' + {cfg.source_scenes} scenes per source model' if cfg.source_scenes else ''}, variety {variety}) "
        f"in {split.seconds:.1f}s"
    )
    console.out(
        f"seed {seed} is a {seed_role(seed)} seed (ftspl.data.protocol): tune on val/"
        f"{' and val_scenes/' if scenes else ''} ranking val_gallery/ "
        "(the source models' meshes), report queries/ ranking target/"
    )
    for key, reason in split.failed.items():
        console.warn(f"{key}: no renders ({reason})")
    head = split.notice.read_text().splitlines()[:5]
    console.out("\n".join(head))
    console.out(f"Credits for every model and background (CC-BY): {split.notice}\nmanifest: {split.manifest}")
