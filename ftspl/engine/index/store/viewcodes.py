"""Each shape's per-view embeddings, stored compactly beside it, and a strip of its views.

Why: a hit is easier to trust when the answer says *which* of its rendered
views looks like the photo. The multi-view graph of a model exported with
per-view output (``ftspl export`` since issue 17) returns each view's embedding
in the photos' space; the add pipeline hands them over with the shape's record
and :meth:`ShapeStore.upsert_batch` writes them here in the same transaction.

Layout: a side table, so stores made before it still open (read-only readers
simply find no codes) and nothing in ``shapes`` changes::

    view_codes(id -> shapes.id ON DELETE CASCADE, views, dim, scale, codes, strip)

* ``codes``: the (V, D) float embeddings as int8, symmetric, one scale per
  shape (``scale = max |x| / 127``): V*D bytes + 4 (3,076 B for 12 x 256),
  about a quarter of float32. Rounding moves a cosine by well under 0.01;
  similarities are computed on the dequantised rows, renormalised.
* ``strip``: the V views side by side, ``STRIP_PX`` pixels each, as WebP
  (about 3.9 KB for 12 SH3D views at 64 px), so the matched view can be shown
  without the mesh or a renderer (the stored preview holds only 4 of the 12).
"""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

TABLE = "view_codes"
STRIP_PX = 64  #: side of one view in the strip
STRIP_QUALITY = 80  #: WebP quality of the strip
#: WebP effort 2 and area (BOX) downsampling: 4 ms per 12-view shape here, against 17 ms for
#: bicubic at effort 4, for about 7% more bytes (index add spends ~200 ms per shape)
STRIP_METHOD = 2

DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY REFERENCES shapes (id) ON DELETE CASCADE,
    views INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    scale REAL NOT NULL,
    codes BLOB NOT NULL,
    strip BLOB
)"""


def quantize(views: np.ndarray) -> tuple[float, bytes]:
    """(V, D) float embeddings -> (scale, int8 bytes): symmetric, one scale for the whole shape."""
    x = np.asarray(views, np.float32)
    if x.ndim != 2 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"per-view embeddings must be a finite (views, dim) matrix, got shape {x.shape}")
    peak = float(np.abs(x).max())
    scale = peak / 127.0 if peak > 0 else 1.0
    return scale, np.clip(np.rint(x / scale), -127, 127).astype(np.int8).tobytes()


def dequantize(scale: float, codes: bytes, views: int, dim: int) -> np.ndarray:
    """int8 codes -> (V, D) float32 rows, each renormalised to unit length (zero rows stay zero)."""
    x = np.frombuffer(codes, np.int8).astype(np.float32)
    if x.size != views * dim:
        raise ValueError(f"view codes hold {x.size} values, expected {views} x {dim}")
    x = x.reshape(views, dim) * np.float32(scale)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def strip_tiles(views: np.ndarray, px: int = STRIP_PX) -> list:
    """Each of the (V, S, S, 3) uint8 views as a ``px`` x ``px`` PIL image (area, i.e. BOX, downsampling).

    The strip is made of them, and the stored preview takes four of them
    (:func:`~ftspl.engine.rendering.renderer.make_preview`), so ``index add``
    resizes each view once for both.
    """
    from PIL import Image

    views = np.asarray(views)
    if views.ndim != 4 or views.shape[-1] != 3 or views.dtype != np.uint8 or len(views) == 0:
        raise ValueError(f"views must be uint8 (V, S, S, 3), got {views.dtype} {views.shape}")
    return [Image.fromarray(v).resize((px, px), Image.Resampling.BOX) for v in views]


def make_strip(views: np.ndarray, px: int = STRIP_PX, tiles: list | None = None) -> bytes:
    """WebP bytes of the (V, S, S, 3) uint8 views side by side, ``px`` pixels each, view 0 on the left.

    ``tiles``: the views' :func:`strip_tiles` when the caller has them already.
    """
    from PIL import Image

    tiles = strip_tiles(views, px) if tiles is None else tiles
    strip = Image.new("RGB", (px * len(tiles), px), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * px, 0))
    buf = io.BytesIO()
    strip.save(buf, format="WEBP", quality=STRIP_QUALITY, method=STRIP_METHOD)
    return buf.getvalue()


def crop_view(strip: bytes, index: int, views: int):
    """View ``index`` of a strip of ``views`` views, as a PIL image (IndexError when out of range)."""
    from PIL import Image

    if not 0 <= index < views:
        raise IndexError(f"view {index} out of range (the shape has {views} views)")
    img = Image.open(io.BytesIO(strip))
    px = img.width // views
    return img.convert("RGB").crop((index * px, 0, (index + 1) * px, img.height))


def view_png(strip: bytes, index: int, views: int) -> bytes:
    """PNG bytes of view ``index`` of a strip (for the HTTP API and contact sheets)."""
    buf = io.BytesIO()
    crop_view(strip, index, views).save(buf, format="PNG")
    return buf.getvalue()


# -- SQL: called by ShapeStore inside its own transactions ------------------------------------
def has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)).fetchone() is not None


def write(conn: sqlite3.Connection, ids: Sequence[int], records: Sequence) -> None:
    """Store (or clear) the codes of ``records`` under ``ids``; runs inside the caller's write transaction.

    A record without per-view embeddings (a model without that output) clears
    any codes its row had, so codes never outlive the embedding they came from.
    """
    with_views = [(i, r) for i, r in zip(ids, records) if getattr(r, "view_embeddings", None) is not None]
    if not with_views and not has_table(conn):
        return  # an older model's add leaves an older store as it is
    conn.execute(DDL)
    rows = []
    for i, r in with_views:
        v = np.asarray(r.view_embeddings, np.float32)
        scale, codes = quantize(v)
        strip = None if r.view_strip is None else bytes(r.view_strip)
        rows.append((int(i), int(v.shape[0]), int(v.shape[1]), scale, codes, strip))
    conn.executemany(f"INSERT OR REPLACE INTO {TABLE} (id, views, dim, scale, codes, strip) VALUES (?, ?, ?, ?, ?, ?)",
                     rows)
    cleared = [(int(i),) for i, r in zip(ids, records) if getattr(r, "view_embeddings", None) is None]
    conn.executemany(f"DELETE FROM {TABLE} WHERE id = ?", cleared)


def read(conn: sqlite3.Connection, ids: Iterable[int]) -> dict[int, np.ndarray]:
    """``id -> (V, D)`` unit per-view embeddings for the ids that have codes (none in an older store)."""
    wanted = sorted({int(i) for i in ids})
    if not wanted or not has_table(conn):
        return {}
    out: dict[int, np.ndarray] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for i, views, dim, scale, codes in conn.execute(
                f"SELECT id, views, dim, scale, codes FROM {TABLE} WHERE id IN ({marks})", chunk):
            out[int(i)] = dequantize(float(scale), codes, int(views), int(dim))
    return out


def read_strip(conn: sqlite3.Connection, shape_id: int) -> tuple[bytes, int] | None:
    """``(strip, views)`` of one shape, or None (no codes, or stored without a strip)."""
    if not has_table(conn):
        return None
    row = conn.execute(f"SELECT strip, views FROM {TABLE} WHERE id = ?", (int(shape_id),)).fetchone()
    return None if row is None or row[0] is None else (bytes(row[0]), int(row[1]))


def stored_bytes(conn: sqlite3.Connection) -> tuple[int, int, int]:
    """``(rows, code bytes, strip bytes)`` over the table (what the codes cost per shape)."""
    if not has_table(conn):
        return 0, 0, 0
    n, c, s = conn.execute(f"SELECT count(*), coalesce(sum(length(codes)), 0) + 4 * count(*), "
                           f"coalesce(sum(length(strip)), 0) FROM {TABLE}").fetchone()
    return int(n), int(c), int(s)
