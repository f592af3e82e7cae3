"""Contact sheets: the query photo, then its top-K shapes (preview, label, distance).

When a hit's matched view is known (models with per-view output), its cell
shows that view, with the 2x2 preview as a small inset, and the caption gives
the view's index and similarity.

PIL only (matplotlib costs ~0.5 s of import that a query should not pay).
Wrong hits are framed red when the photo's label is known.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ftspl.engine.files import atomic_write_bytes

CELL = 128
CAPTION = 30
PAD = 6


@dataclass
class SheetRow:
    photo: Image.Image
    photo_caption: str
    photo_label: str | None
    hits: list[tuple[bytes | None, str | None, float]]  #: (preview PNG, label, distance)
    #: per hit: (matched view image, view index, similarity), or None where unknown
    views: list[tuple[Image.Image, int, float] | None] | None = None
    #: per hit: the window of ``photo`` it matched (``x0, y0, x1, y1`` pixels; regional search), or None
    regions: list[tuple[int, int, int, int] | None] | None = None


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _cell(img: Image.Image | None, lines: list[str], frame: tuple[int, int, int] | None,
          inset: Image.Image | None = None) -> Image.Image:
    tile = Image.new("RGB", (CELL, CELL + CAPTION), "white")
    if img is not None:
        thumb = ImageOps.contain(img.convert("RGB"), (CELL - 4, CELL - 4))
        tile.paste(thumb, ((CELL - thumb.width) // 2, (CELL - thumb.height) // 2))
    if inset is not None:  # the whole shape's preview, top right, over the matched view
        small = ImageOps.contain(inset.convert("RGB"), (CELL // 3, CELL // 3))
        tile.paste(small, (CELL - small.width - 4, 4))
    draw = ImageDraw.Draw(tile)
    if frame is not None:
        draw.rectangle([0, 0, CELL - 1, CELL - 1], outline=frame, width=3)
    font = _font()
    for i, line in enumerate(lines[:2]):
        draw.text((3, CELL + 2 + i * 13), line[:22], fill=(0, 0, 0), font=font)
    return tile


REGION_COLOUR = (255, 140, 0)


def _framed(photo: Image.Image, box: tuple[int, int, int, int] | None) -> Image.Image:
    """The photo with ``box`` outlined (the first hit's region), thick enough to survive the thumbnail."""
    if box is None:
        return photo
    out = photo.convert("RGB").copy()
    width = max(2, round(max(out.size) / CELL * 2))
    ImageDraw.Draw(out).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=REGION_COLOUR, width=width)
    return out


def _region_inset(tile: Image.Image, photo: Image.Image, box: tuple[int, int, int, int]) -> None:
    """The matched window of the photo, small, top left of a hit's tile, framed in the region colour."""
    small = ImageOps.contain(photo.convert("RGB").crop(box), (CELL // 3, CELL // 3))
    tile.paste(small, (4, 4))
    ImageDraw.Draw(tile).rectangle([3, 3, 4 + small.width, 4 + small.height], outline=REGION_COLOUR, width=1)


def render_sheet(rows: list[SheetRow]) -> Image.Image:
    """One row per photo: the photo, then its hits left to right."""
    ncols = 1 + max((len(r.hits) for r in rows), default=0)
    w = PAD + ncols * (CELL + PAD)
    h = PAD + len(rows) * (CELL + CAPTION + PAD)
    sheet = Image.new("RGB", (w, max(h, CELL)), (235, 235, 235))
    for r, row in enumerate(rows):
        y = PAD + r * (CELL + CAPTION + PAD)
        regions = row.regions or [None] * len(row.hits)
        photo = _framed(row.photo, regions[0] if regions else None)
        sheet.paste(_cell(photo, [row.photo_caption, f"label: {row.photo_label or '?'}"], (40, 90, 200)), (PAD, y))
        for c, (png, label, dist) in enumerate(row.hits, start=1):
            img = Image.open(io.BytesIO(png)) if png else None
            frame = None
            if row.photo_label is not None and label is not None:
                frame = (30, 160, 60) if label == row.photo_label else (210, 30, 30)
            matched = row.views[c - 1] if row.views else None
            if matched is None:
                tile = _cell(img, [f"#{c} {label or '-'}", f"d={dist:.3f}"], frame)
            else:
                view, i, sim = matched
                tile = _cell(view, [f"#{c} {label or '-'}", f"d={dist:.3f} v{i} s={sim:.2f}"], frame, inset=img)
            if regions[c - 1] is not None:
                _region_inset(tile, row.photo, regions[c - 1])
            sheet.paste(tile, (PAD + c * (CELL + PAD), y))
    return sheet


def rows_for(store, photos: list[Image.Image], captions: list[str], labels: list[str | None], results,
             origins: list[tuple[int, int]] | None = None) -> list[SheetRow]:
    """Sheet rows for query results, fetching the hits' previews from the store in one call.

    A hit's ``region`` (photo pixels) is drawn on the photo shown, whose top
    left corner lies at ``origins[i]`` in the photo (a ``box`` crop; default 0, 0).
    """
    from ftspl.engine.index.store.viewcodes import crop_view

    ids = [h.id for res in results for h in res.hits]
    previews = {r.id: r.preview for r in store.get(ids, previews=True)}
    strips = {h.id: store.view_strip(h.id) for res in results for h in res.hits if getattr(h, "view", None) is not None}

    def matched(h) -> tuple[Image.Image, int, float] | None:
        got = strips.get(h.id)
        return None if got is None else (crop_view(got[0], h.view, got[1]), h.view, h.view_similarity)

    def window(h, origin: tuple[int, int], img: Image.Image) -> tuple[int, int, int, int] | None:
        r = getattr(h, "region", None)
        if r is None:
            return None
        box = (r.x0 - origin[0], r.y0 - origin[1], r.x1 - origin[0], r.y1 - origin[1])
        whole = box == (0, 0, *img.size)
        return None if whole or box[0] < 0 or box[1] < 0 else box

    origins = origins or [(0, 0)] * len(photos)
    return [
        SheetRow(img, cap, lab, [(previews.get(h.id), h.label, h.distance) for h in res.hits],
                 [matched(h) for h in res.hits], [window(h, o, img) for h in res.hits])
        for img, cap, lab, res, o in zip(photos, captions, labels, results, origins)
    ]


def save_sheet(rows: list[SheetRow], path: str | Path) -> Path:
    buf = io.BytesIO()
    render_sheet(rows).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
