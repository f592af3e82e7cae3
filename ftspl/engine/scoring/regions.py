"""Regional search: a photo is searched in several regions, not only as a whole, and fused per shape.

A photo of a room shows the chair among a table, a lamp and a plant; the whole
frame's embedding mixes them. Regional search embeds windows of the photo as
well and ranks each shape by how well its best regions match.

Modes (``--regions``, the API's ``regions``; a registry):

* ``none``: the whole photo, one embedding (the paper's);
* ``crops``: the whole photo plus windows of it (:func:`window_boxes`), each
  cut out and embedded like a photo, all in one batched encoder call;
* ``rmac``: the image encoder's regional output: the last feature map of the
  backbone average-pooled over the same windows snapped to its cells, each
  through the embedding head (R-MAC-like regional pooling, Tolias et al. 2016),
  in the one forward pass the whole photo already costs. Models exported before
  the output existed have none; :func:`resolve` says so.

Windows at scale ``s`` (a fraction of the width and of the height) lie on an
``n x n`` grid, ``n = ceil(1 / s)``, spread evenly from one edge to the other,
plus the centre window when ``n`` is even; the whole photo is region 0.

Fusion per shape (``region_fusion``; a registry) over the regions' distances:

* ``max``: the best region's distance (one region showing the object is enough);
* ``mean``: the mean cosine over every region, as the distance ``sqrt(2 - 2 mean)``;
* ``top3``: the mean cosine of the shape's three best regions.

Candidates are the union of each region's ``max(5k, 50)`` nearest shapes and
those of the regions' mean vector; their distances to every region are exact
(the stored embeddings), so on an index no larger than that the fused ranking
is the brute-force one. A hit's ``region`` is the region nearest to it, and its
matched view is the view nearest to that region.

The defaults (:data:`DEFAULT_REGIONS`, :data:`DEFAULT_REGION_FUSION`,
:data:`DEFAULT_SCALES`) are chosen on the validation splits by
``benchmarks/regions.py`` (docs/QUALITY.md, "Photos of real rooms").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from ftspl.engine.errors import UnknownKeyError, UsageError

#: what each mode searches (the registry's values say it in words)
REGION_MODES: dict[str, str] = {
    "none": "the whole photo",
    "crops": "the whole photo and windows cut from it, one batched encoder call",
    "rmac": "the whole photo and windows pooled from the encoder's last feature map (one forward pass)",
}
#: chosen by benchmarks/regions.py on the tuning seeds 0-4 (val and scene val photos together; results/regions.json)
DEFAULT_REGIONS = "crops"
#: window scales (fractions of width and height); 0.6: 5 windows, 0.4: 9 windows
DEFAULT_SCALES: tuple[float, ...] = (0.6,)
#: the window scales an exported photo graph pools (``rmac``): every scale a query may ask for
GRAPH_SCALES: tuple[float, ...] = (0.6, 0.4)
DEFAULT_REGION_FUSION = "top3"
TOP_M = 3  #: regions averaged by the ``top3`` rule


def _cosines(dist: np.ndarray) -> np.ndarray:
    return 1.0 - np.square(dist) / 2.0


def _as_distance(cos: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))


def _max(dist: np.ndarray) -> np.ndarray:
    return dist.min(axis=0)


def _mean(dist: np.ndarray) -> np.ndarray:
    return _as_distance(_cosines(dist).mean(axis=0))


def _top(dist: np.ndarray) -> np.ndarray:
    m = min(TOP_M, dist.shape[0])
    best = np.sort(dist, axis=0)[:m]
    return _as_distance(_cosines(best).mean(axis=0))


#: Region fusion rules by name: (regions x shapes) distances -> one distance per shape.
REGION_FUSIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"max": _max, "mean": _mean, "top3": _top}


@dataclass(frozen=True)
class RegionConfig:
    """How a query searches a photo's regions: the mode, the fusion rule and the window scales."""

    mode: str = DEFAULT_REGIONS
    fusion: str = DEFAULT_REGION_FUSION
    scales: tuple[float, ...] = DEFAULT_SCALES

    def __post_init__(self) -> None:
        if self.mode not in REGION_MODES:
            raise UnknownKeyError("regions", self.mode, REGION_MODES)
        if self.fusion not in REGION_FUSIONS:
            raise UnknownKeyError("region fusion", self.fusion, REGION_FUSIONS)
        if not self.scales or not all(0.0 < float(s) < 1.0 for s in self.scales):
            raise UsageError(f"region scales must be fractions between 0 and 1, got {tuple(self.scales)}")


# -- where the regions are ------------------------------------------------------------------------
def _grid(scale: float) -> list[tuple[float, float]]:
    """Top-left corners of the windows at ``scale``: an ``n x n`` grid, plus the centre when ``n`` is even."""
    n = max(1, math.ceil(1.0 / scale - 1e-9))
    pos = [float(p) for p in np.linspace(0.0, 1.0 - scale, n)] if n > 1 else [(1.0 - scale) / 2]
    corners = [(x, y) for y in pos for x in pos]
    if n % 2 == 0:
        corners.append(((1.0 - scale) / 2, (1.0 - scale) / 2))
    return corners


def window_boxes(scales: Sequence[float] = DEFAULT_SCALES) -> list[tuple[float, float, float, float]]:
    """The regions as fractions ``(x0, y0, x1, y1)`` of the photo: the whole photo, then each scale's windows."""
    boxes = [(0.0, 0.0, 1.0, 1.0)]
    for s in scales:
        boxes += [(x, y, x + float(s), y + float(s)) for x, y in _grid(float(s))]
    return boxes


def photo_boxes(width: int, height: int, scales: Sequence[float] = DEFAULT_SCALES) -> list[tuple[int, int, int, int]]:
    """:func:`window_boxes` in pixels of a ``width`` x ``height`` photo (each at least one pixel)."""
    out = []
    for x0, y0, x1, y1 in window_boxes(scales):
        a, b = min(width - 1, int(round(x0 * width))), min(height - 1, int(round(y0 * height)))
        c, d = max(a + 1, int(round(x1 * width))), max(b + 1, int(round(y1 * height)))
        out.append((a, b, min(c, width), min(d, height)))
    return out


def grid_cells(scales: Sequence[float], cells_x: int, cells_y: int) -> list[tuple[tuple[int, int, int, int], float]]:
    """The windows of ``scales`` (whole map excluded) snapped to a ``cells_x`` x ``cells_y`` feature map:
    ``((x0, y0, x1, y1) in cells, scale)``, duplicates dropped. Export pools the map over these."""
    out: list[tuple[tuple[int, int, int, int], float]] = []
    seen = set()
    for s in scales:
        wx, wy = max(1, round(s * cells_x)), max(1, round(s * cells_y))
        for x0, y0, _, _ in window_boxes([s])[1:]:
            cx, cy = round(x0 / (1.0 - s) * (cells_x - wx)), round(y0 / (1.0 - s) * (cells_y - wy))
            cell = (cx, cy, cx + wx, cy + wy)
            if cell not in seen and cell != (0, 0, cells_x, cells_y):
                seen.add(cell)
                out.append((cell, float(s)))
    return out


def input_to_photo(box: Sequence[float], width: int, height: int, pre) -> tuple[int, int, int, int]:
    """A box in fractions of the encoder's input square, in pixels of the ``width`` x ``height`` photo it came from.

    Inverts :func:`ftspl.engine.model.preprocess.resize_crop` (shorter side to
    ``size / crop_pct``, centre crop ``size``), so it names the pixels the
    feature-map window saw.
    """
    size = pre.image_size
    short = max(size, round(size / pre.crop_pct))
    scale = short / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    fx, fy = width / nw, height / nh
    x0, y0, x1, y1 = ((left + box[0] * size) * fx, (top + box[1] * size) * fy,
                      (left + box[2] * size) * fx, (top + box[3] * size) * fy)
    a, b = max(0, int(round(x0))), max(0, int(round(y0)))
    return a, b, max(a + 1, min(width, int(round(x1)))), max(b + 1, min(height, int(round(y1))))


# -- choosing the mode ------------------------------------------------------------------------------
def resolve(regions: str | None, fusion: str | None, *, fuse: bool, rerank: str, has_output: bool,
            model_id: str) -> RegionConfig:
    """The regions a query searches: ``regions`` (None: the default) checked against the other options.

    An explicit mode that cannot apply is a one-line :class:`UsageError`;
    the default quietly falls back to ``none`` where it cannot apply (several
    photos fused, a re-ranked list, an ``rmac`` default on a model without the
    regional output), and the answer's ``regions`` field says which ran.
    """
    explicit = regions is not None
    cfg = RegionConfig(mode=DEFAULT_REGIONS if regions is None else regions,
                       fusion=DEFAULT_REGION_FUSION if fusion is None else fusion)
    if cfg.mode == "none":
        return cfg
    clash = ("--fuse ranks several photos of one object as one list" if fuse else
             f"--rerank {rerank} re-ranks whole-photo lists" if rerank != "none" else None)
    if clash is not None:
        if explicit:
            raise UsageError(f"--regions {cfg.mode} searches each photo's regions but {clash}; "
                             "use --regions none with it, or leave it out")
        return replace(cfg, mode="none")
    if cfg.mode == "rmac" and not has_output:
        if explicit:
            raise UsageError(f"--regions rmac: model {model_id} was exported without regional embeddings; "
                             "export it again (ftspl export) or use --regions crops")
        return replace(cfg, mode="none")
    return cfg


# -- embedding the regions --------------------------------------------------------------------------
def embed_regions(encoders, images: list, cfg: RegionConfig) -> list[tuple[np.ndarray, list]]:
    """Per photo: ``(R x D unit embeddings, R pixel boxes)``; row 0 is the whole photo (its box None).

    ``crops`` embeds every window of every photo in one batch; ``rmac`` runs
    the photos once and keeps the graph's windows whose scale is in ``cfg.scales``.
    """
    from ftspl.engine.model.preprocess import to_tensor

    pre = encoders.preprocess
    out: list[tuple[np.ndarray, list]] = []
    if cfg.mode == "crops":
        boxes = [photo_boxes(*im.size, cfg.scales) for im in images]
        tensors = [to_tensor(im if i == 0 else im.crop(b), pre) for im, bs in zip(images, boxes)
                   for i, b in enumerate(bs)]
        emb = encoders.embed_photos(np.stack(tensors))
        start = 0
        for bs in boxes:
            out.append((emb[start:start + len(bs)], [None, *bs[1:]]))
            start += len(bs)
        return out
    if cfg.mode != "rmac":
        raise ValueError(f"embed_regions: mode {cfg.mode!r} has no regions")
    full, regional = encoders.embed_photos_regions(np.stack([to_tensor(im, pre) for im in images]))
    wanted = {round(float(s), 6) for s in cfg.scales}
    keep = [j for j, r in enumerate(encoders.regions) if round(float(r["scale"]), 6) in wanted]
    for im, f, reg in zip(images, full, regional):
        boxes = [None, *(input_to_photo(encoders.regions[j]["box"], *im.size, pre) for j in keep)]
        out.append((np.vstack([f[None, :], reg[keep]]), boxes))
    return out


# -- searching them ---------------------------------------------------------------------------------
def unit_distances(queries: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Euclidean distances of unit vectors, ``sqrt(2 - 2 cos)`` (queries x vectors)."""
    cos = np.asarray(queries, np.float64) @ np.asarray(vectors, np.float64).T
    return np.sqrt(np.clip(2.0 - 2.0 * cos, 0.0, 4.0))


def fuse_regions(dist: np.ndarray, how: str = DEFAULT_REGION_FUSION) -> np.ndarray:
    """One distance per shape from the (regions x shapes) distances, by rule ``how``."""
    if how not in REGION_FUSIONS:
        raise UnknownKeyError("region fusion", how, REGION_FUSIONS)
    return REGION_FUSIONS[how](np.asarray(dist, np.float64))


def region_search(reader, emb: np.ndarray, k: int, how: str = DEFAULT_REGION_FUSION) -> tuple[list, list[int], int]:
    """The top ``k`` shapes for one photo's region embeddings (rows; row 0 the whole photo) fused by ``how``.

    Returns ``(hits, region index of each hit, store generation)``; each hit's
    ``distance`` is its fused distance, ranks renumbered.
    """
    emb = np.asarray(emb, np.float32)
    mean = emb.mean(axis=0)
    rows = np.vstack([emb, (mean / max(float(np.linalg.norm(mean)), 1e-12))[None, :]])
    per, gen = reader.search_at(rows, max(5 * k, 50))
    by_id = {h.id: h for hits in per for h in hits}
    vecs = reader.embeddings(sorted(by_id))
    ids = [i for i in sorted(by_id) if i in vecs]
    if not ids:
        return [], [], gen
    dist = unit_distances(emb, np.stack([vecs[i] for i in ids]))
    fused = fuse_regions(dist, how)
    order = np.argsort(fused, kind="stable")[:k]
    hits = [replace(by_id[ids[j]], rank=r + 1, distance=float(fused[j])) for r, j in enumerate(order)]
    return hits, [int(np.argmin(dist[:, j])) for j in order], gen


def with_views(reader, emb: np.ndarray, hits: list, regions: list[int]) -> list:
    """The hits with their matched view: the stored view nearest to the region each hit matched."""
    from ftspl.engine.scoring.views import best_views

    if not hits or not reader.lib.encoders.has_view_output:
        return hits
    codes = reader.view_embeddings([h.id for h in hits])
    out = []
    for h, r in zip(hits, regions):
        v = codes.get(h.id)
        if v is not None:
            i, s = best_views(np.asarray(emb[r], np.float32), v)
            h = replace(h, view=i, view_similarity=s)
        out.append(h)
    return out


__all__ = ["DEFAULT_REGIONS", "DEFAULT_REGION_FUSION", "DEFAULT_SCALES", "REGION_FUSIONS", "REGION_MODES",
           "RegionConfig", "embed_regions", "fuse_regions", "grid_cells", "input_to_photo", "photo_boxes",
           "region_search", "resolve", "unit_distances", "window_boxes", "with_views"]
