"""What a run is built from: its inputs, its network and head-mode feed, and the embeddings it hands back.

Training (:mod:`ftspl.train.loop`), the pretrained baseline and applying a
finished run to other data (:mod:`ftspl.train.apply`) all start the same way:
the source photos, the target shapes rendered into the view cache and the
optional validation photos, validation shapes and queries
(:func:`_load_inputs`); the backbone with its bottleneck and classifier
(:func:`_build_net`); in head mode the feed of cached backbone features
(:func:`_head_feed`). Sharing these keeps an applied run's numbers equal to
what training measured. :class:`Embeddings` is what they hand back for a study
to score; :class:`_torch_threads` sets torch's thread count around the work.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import UsageError
from ftspl.train.config import TrainConfig
from ftspl.train.distributed import Dist

#: the logger these messages had inside ftspl.train.loop (the CLI prints the name)
log = logging.getLogger("ftspl.train.loop")

ProgressFn = Callable[[str, int, int], None]


@dataclass
class Embeddings:
    """Embeddings of one run's inputs with their labels (class names; ``None`` = unknown).

    What the study scores and plots in-process: queries against target shapes
    is exactly what ``ftspl eval`` ranks after ``export`` + ``index add``
    (both L2-normalise, then Euclidean distance).
    """

    source: np.ndarray
    source_labels: list[str]
    target: np.ndarray
    target_labels: list[str | None]
    target_paths: list[str]
    query: np.ndarray | None = None
    query_labels: list[str] | None = None
    query_paths: list[str] | None = None



@dataclass
class _Inputs:
    src: object
    tgt: object
    views: object
    photos: object
    queries: object
    pre: Preprocess
    spec: RenderSpec
    val: object = None  #: validation PhotoList (``--val`` or carved from the source), or None
    val_shapes: object = None  #: (CachedViews, class ids) of ``--val-shapes``, or None
    queries_shapes: object = None  #: (CachedViews, class ids) of ``queries_shapes``, or None


def render_spec_for(cfg: TrainConfig) -> RenderSpec:
    """The render spec of ``cfg``'s target shapes: the default one in ``cfg.look``, turned to ``cfg.up``.

    The look enters the spec's digest (unless grey), so the view cache, the feature
    cache and the exported manifest keep grey and coloured views apart.
    """
    spec = RenderSpec().with_look(cfg.look)
    return spec.with_up(cfg.up) if cfg.up is not None else spec


def _load_inputs(cfg: TrainConfig, cache: Path, progress: ProgressFn | None, dist: Dist | None = None) -> _Inputs:
    """Photos, shapes (rendered once into the view cache under ``cache``) and optional queries of ``cfg``.

    With N processes each renders a share of the shapes, and all of them must
    end up with the same inputs (checked).
    """
    from ftspl.train.backbone_registry import get_spec
    from ftspl.train.data import load_source, load_target
    from ftspl.train.feeds import PhotoList
    from ftspl.train.viewcache import cache_views_split

    dist = dist if dist is not None else Dist()
    pre = get_spec(cfg.backbone).preprocess  # an unknown backbone fails before any rendering
    src = load_source(cfg.source)
    tgt = load_target(cfg.target, cfg.label_from)
    unknown = sorted({lab for lab in tgt.labels if lab is not None} - set(src.class_names))
    if tgt.has_labels and unknown:
        log.warning("target classes without source photos (reported, not trained): %s", ", ".join(unknown))
    spec = render_spec_for(cfg)
    views = cache_views_split(tgt.paths, tgt.kinds, spec, cache / "views", progress, dist)
    if len(views.keys) < 2:
        raise UsageError(f"{cfg.target}: fewer than 2 usable shapes ({len(views.failed)} failed)")
    val = None
    if cfg.val:
        vs = load_source(cfg.val, class_names=src.class_names)
        val = PhotoList(vs.paths, vs.labels)
        train_idx = list(range(len(src.paths)))
    else:
        from ftspl.train.validation import carve

        train_idx, val_idx = carve(src.labels, src.paths, cfg.val_frac, cfg.seed)
        if val_idx:
            val = PhotoList([src.paths[i] for i in val_idx], [src.labels[i] for i in val_idx])
    photos = PhotoList([src.paths[i] for i in train_idx], [src.labels[i] for i in train_idx])
    if len(set(photos.labels)) < len(src.class_names):
        raise UsageError(f"{cfg.source}: a class has no readable photos")
    if val is not None and not len(val):
        val = None
    val_shapes = _load_val_shapes(cfg, src.class_names, spec, cache, progress, dist) if cfg.val_shapes else None
    if val_shapes is not None and val is None:
        raise UsageError(f"{cfg.val_shapes}: --val-shapes needs validation photos (--val, or --val-frac > 0)")
    queries = None
    if cfg.queries:
        qs = load_source(cfg.queries, class_names=src.class_names, every_class=False)
        queries = PhotoList(qs.paths, qs.labels)
    queries_shapes = (_load_val_shapes(cfg, src.class_names, spec, cache, progress, dist, cfg.queries_shapes,
                                       "queries_shapes") if cfg.queries_shapes else None)
    if dist.world > 1:
        seen = [views.keys, [str(p) for p in photos.paths], photos.labels,
                [str(p) for p in queries.paths] if queries else [], [str(p) for p in val.paths] if val else []]
        dist.check_same("inputs (photos, usable shapes, queries)", json.dumps(seen))
    return _Inputs(src, tgt, views, photos, queries, pre, spec, val, val_shapes, queries_shapes)


def _load_val_shapes(cfg: TrainConfig, class_names: list[str], spec: RenderSpec, cache: Path,
                     progress: ProgressFn | None, dist: Dist, folder: str | None = None, option: str = "--val-shapes"):
    """Labelled meshes of the source classes (``--val-shapes``, or ``option``'s ``folder``), via the view cache."""
    from ftspl.train.data import load_target
    from ftspl.train.viewcache import cache_views_split

    folder = folder or cfg.val_shapes
    vt = load_target(folder, cfg.label_from)
    if not vt.has_labels:
        raise UsageError(f"{folder}: {option} needs label folders (<folder>/<class>/<mesh>)")
    views = cache_views_split(vt.paths, vt.kinds, spec, cache / "views", progress, dist)
    index = {n: k for k, n in enumerate(class_names)}
    labels = [index.get(vt.labels[i], -1) for i in views.index]
    if not any(k >= 0 for k in labels):
        raise UsageError(f"{folder}: no {option} shape belongs to a --source class ({', '.join(class_names)})")
    return views, labels


def _head_feed(cfg: TrainConfig, net, inp: _Inputs, cache: Path, device: torch.device, progress: ProgressFn | None,
               dist: Dist | None = None):
    from ftspl.train.featcache import FeatureCache, backbone_id
    from ftspl.train.feeds import HeadFeed

    features = FeatureCache(cache / "features", backbone_id(cfg.backbone, cfg.weights), inp.pre)
    return HeadFeed(net, inp.pre, inp.photos, inp.views, cfg.augment_copies, cfg.seed, device, inp.queries,
                    cfg.batch_size, progress, features, dist, val=inp.val, val_shapes=inp.val_shapes,
                    query_shapes=inp.queries_shapes)


def _build_net(cfg: TrainConfig, n_classes: int, device: torch.device):
    from ftspl.train.backbone_registry import build_backbone
    from ftspl.train.net import FTSPLNet

    backbone = build_backbone(cfg.backbone, pretrained=True, weights_path=Path(cfg.weights) if cfg.weights else None)
    if cfg.mode == "partial":  # the same parameters; its trunk methods run the last K blocks on activations
        from ftspl.train.partial import PartialNet

        return PartialNet(backbone, n_classes, cfg.embed_dim, cfg.train_blocks, cfg.tail_bn).to(device)
    return FTSPLNet(backbone, n_classes, cfg.embed_dim).to(device)


def _embeddings_of(inp: _Inputs, src: torch.Tensor, tgt: torch.Tensor, query: torch.Tensor | None) -> Embeddings:
    names = inp.src.class_names
    views = inp.views
    tl = [inp.tgt.labels[i] if inp.tgt.labels else None for i in views.index]
    out = Embeddings(
        source=src.cpu().numpy(), source_labels=[names[k] for k in inp.photos.labels],
        target=tgt.cpu().numpy(), target_labels=tl, target_paths=[str(inp.tgt.paths[i]) for i in views.index],
    )
    if query is not None and inp.queries is not None:
        out.query = query.cpu().numpy()
        out.query_labels = [names[k] for k in inp.queries.labels]
        out.query_paths = [str(p) for p in inp.queries.paths]
    return out


class _torch_threads:
    """Use ``n`` threads (default: every core) for torch's intra-op work; the count is restored afterwards."""

    def __init__(self, n: int | None = None) -> None:
        self.n = n if n is not None else max(1, os.cpu_count() or 1)

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)
