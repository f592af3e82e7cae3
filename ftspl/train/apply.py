"""A finished run's network applied to other labelled photos and shapes, in process.

A study scores a run on data the run never trained on: the tuning protocol
(:mod:`ftspl.data.protocol`) ranks the benchmark's val photos against its
val gallery, while the run itself trained on the source photos and the target
shapes. :func:`embed_run` gives the served embeddings (bottleneck plus the kept
pretrained branch, the round that ``ftspl export`` would serve) of those
inputs, through the same feeds, caches and network code as training, so the
numbers equal what ``export`` + ``index add`` + ``eval`` would give.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ftspl.engine.errors import UsageError
from ftspl.engine.home import Home
from ftspl.train.prepare import Embeddings, _build_net, _embeddings_of, _head_feed, _load_inputs, _torch_threads
from ftspl.train.runio import load_best, saved_config
from ftspl.train.trainer import pick_device, served_all


def embed_run(run_dir: Path, photos: str | Path, shapes: str | Path, home: Home | None = None) -> Embeddings:
    """Served embeddings of ``photos`` (as ``query``) and ``shapes`` (as ``target``) under ``run_dir``'s network.

    ``photos``: label folders of photos of the run's classes; ``shapes``: a mesh
    folder (label folders give ``target_labels``). The run's own config decides
    the backbone, mode, render spec and the kept pretrained branch; its
    ``best.pt`` (else the last checkpoint) gives the weights.
    """
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir)
    if cfg is None:
        raise UsageError(f"{run_dir}: no config.json; is it a training run folder?")
    cfg = replace(cfg, target=str(shapes), queries=str(photos), queries_shapes=None)
    cache = (home or Home.resolve()).cache
    device = pick_device("auto")  # this machine's, whatever the run trained on
    inp = _load_inputs(cfg, cache, None)
    with _torch_threads():
        net = _build_net(cfg, len(inp.src.class_names), device)
        if cfg.keep_pretrained > 0:
            from ftspl.train.keep import attach

            attach(net, cfg.keep_pretrained, cfg.keep_pretrained_dims)
        net.load_state_dict(load_best(run_dir, map_location=device)["net"])
        net.eval()
        if cfg.mode == "head":
            feed = _head_feed(cfg, net, inp, cache, device, None)
        elif cfg.mode == "partial":
            from ftspl.train.partial import partial_feed

            feed = partial_feed(cfg, net, inp, cache, device, None)
        else:
            from ftspl.train.full_feed import FullFeed

            feed = FullFeed(inp.pre, inp.photos, inp.views, device, inp.queries)
        bs = cfg.batch_size
        with torch.no_grad():
            return _embeddings_of(inp, served_all(net, feed, "source", bs), served_all(net, feed, "target", bs),
                                  served_all(net, feed, "query", bs))


__all__ = ["embed_run"]
