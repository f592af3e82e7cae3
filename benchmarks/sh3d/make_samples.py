"""Draw benchmarks/sh3d/samples.png from a built SH3D benchmark.

    python benchmarks/sh3d/make_samples.py BENCH_DIR [--out benchmarks/sh3d/samples.png]

Each group of four tiles is one class: two photo-domain renders and the
catalogue icon of a source model, then the first grey gallery view (what the
engine indexes) of a target model of the same class.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

TILE = 128


def _tile(img: Image.Image, caption: str) -> Image.Image:
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, "white")
        img.alpha_composite(rgba)
    img = img.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS)
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, TILE - 13, TILE, TILE), fill=(0, 0, 0))
    draw.text((3, TILE - 12), caption, fill=(255, 255, 255))
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("samples.png"))
    ap.add_argument("--classes", default="chair,sofa,table,lamp,car,tree,bed,door,flower_pot,person,desk,window")
    args = ap.parse_args()

    from ftspl.engine.constants import RenderSpec
    from ftspl.engine.loading.meshes import load_mesh, normalize
    from ftspl.engine.rendering.renderer import Renderer

    manifest = json.loads((args.bench / "manifest.json").read_text())
    tiles = []
    spec = RenderSpec()
    with Renderer(spec) as renderer:
        for c in args.classes.split(","):
            src = manifest["groups"]["source"].get(c)
            tgt = manifest["groups"]["target"].get(c)
            if not src or not tgt:
                sys.exit(f"{c}: not in the benchmark")
            folder = args.bench / "source" / c
            renders = sorted(folder.glob(f"{src[0]}__r*.jpg"))[:2]
            for p in renders:
                tiles.append(_tile(Image.open(p), f"{c} photo"))
            tiles.append(_tile(Image.open(folder / f"{src[0]}__icon.png"), f"{c} icon"))
            obj = next((args.bench / "target" / c / tgt[0]).glob("*.obj"))
            view = renderer.render(normalize(load_mesh(obj), spec.up, spec.normalize_radius))[1]
            tiles.append(_tile(Image.fromarray(view), f"{c} gallery"))
    cols = 8
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * TILE + (cols // 4 - 1) * 6, rows * TILE), "white")
    for i, t in enumerate(tiles):
        col = i % cols
        grid.paste(t, (col * TILE + (col // 4) * 6, (i // cols) * TILE))
    grid.quantize(colors=256, dither=Image.Dither.FLOYDSTEINBERG).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
