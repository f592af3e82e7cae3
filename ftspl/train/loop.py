"""The FTSPL training loop (paper Sec. III): L rounds of pseudo-label -> select -> statistics -> train.

Per round l of L:
1. embed every target shape and source photo (no grad);
2. pseudo-label the shapes (``--pseudo``: classifier, nearest source centroid,
   or SPL = centroid + k-means/Hungarian, Eqs. 6-10);
3. select a subset (``--selection``: class-wise top l/L per pseudo-class, global
   top l/L, or all);
4. estimate the class statistics: source centroids (Eq. 5), target centroids and
   covariances of the selected pseudo-labelled shapes (IDCA, ICAV) - refreshed
   at the start of every epoch from a no-grad pass (head mode) or once per
   round (full mode, where a pass over all shapes is expensive);
5. train: the transferable loss of Eq. 4 on source photos (plain cross-entropy
   when IDCA and ICAV are both off) plus cross-entropy on the selected
   pseudo-labelled shapes (unless ``--no-target-ce``).

Before round 1, ``warmup_epochs`` of source-only training give the classifier
something to pseudo-label with. Every round (the warm-up included) is scored
on validation photos that are never trained on (``--val``, or ``val_frac`` of
each class's source photos), beside the pretrained backbone's score on the same
photos; the best round so far is kept as ``best.pt``, which export uses
(:mod:`ftspl.train.validation`). Every round writes a checkpoint (state dicts,
``torch.save``; loaded back with ``weights_only=True``) and appends its metrics
to ``metrics.json``, so ``--resume`` continues a killed run at the next round
with the same result as an uninterrupted one (all randomness is derived from
``(seed, round, epoch)``).

With N processes (``torchrun --nproc-per-node N -m ftspl train`` or ``ftspl
train --nproc N``; :mod:`ftspl.train.distributed`) every rank runs this same
sequence: the shapes are rendered and the frozen backbone's features computed
one share per rank through the shared caches, the steps split each global
batch over the ranks, every embedding pass is gathered, and rank 0 alone writes
the run folder (its ``config.json`` records ``world_size``; ``--resume`` works
with any N).

This module sequences a run; :mod:`ftspl.train.prepare` loads its inputs and
builds its network and feed, :mod:`ftspl.train.trainer` holds the per-epoch and
per-round steps, :mod:`ftspl.train.runio` the run folder's files.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ftspl.engine.errors import FtsplError, UsageError
from ftspl.engine.home import Home
from ftspl.train.config import TrainConfig, validate
from ftspl.train.distributed import Dist, session
from ftspl.train.prepare import (
    Embeddings,
    ProgressFn,
    _build_net,
    _embeddings_of,
    _head_feed,
    _load_inputs,
    _torch_threads,
    render_spec_for,
)
from ftspl.train.runio import CHECKPOINT, CONFIG, METRICS, RUN_INFO, load_checkpoint
from ftspl.train.trainer import Trainer, embed_all, pick_device, served_all, trunk_all

RoundFn = Callable[[dict], None]


@dataclass
class RunResult:
    run_dir: Path
    rounds: list[dict]
    device: str
    seconds: float
    skipped: list[tuple[str, str]]  #: (path, reason) of target shapes and photos that could not be used
    #: with ``train(..., return_embeddings=True)``: the final network's embeddings (not L2-normalised)
    embeddings: Embeddings | None = None


def pretrained_embeddings(cfg: TrainConfig, progress: ProgressFn | None = None, home: Home | None = None) -> Embeddings:
    """The untrained baseline's embeddings (the paper's "CNN" row): pooled ImageNet features.

    The same cached features head-mode training starts from, so the "CNN" row of
    a study costs nothing extra; equal to what ``ftspl export --pretrained``
    serves (that model's embedding is the pooled backbone feature, L2-normalised).
    Caches live under ``home``'s cache folder (default: :meth:`Home.resolve`).
    """
    validate(cfg)
    cache = (home or Home.resolve()).cache
    device = pick_device(cfg.device)
    inp = _load_inputs(cfg, cache, progress)
    with _torch_threads():
        net = _build_net(cfg, len(inp.src.class_names), device)
        feed = _head_feed(cfg, net, inp, cache, device, progress)
    return _embeddings_of(inp, feed.src_clean, feed.tgt, feed.query)


def _run_rounds(cfg: TrainConfig, trainer: Trainer, start_round: int, rounds: list[dict], run_dir: Path,
                progress: ProgressFn | None, on_round: RoundFn | None) -> None:
    """Warm-up (round 0) and rounds ``start_round..L``; each finished round is saved before the next."""
    from ftspl.train.runio import save_round

    net, feed, dist = trainer.net, trainer.feed, trainer.dist
    # The pretrained baseline on validation: measured on the untouched backbone before round 0,
    # or read back from the finished rounds when resuming (the backbone may have moved since).
    if rounds and "val_baseline" in rounds[0]:
        trainer.val_baseline = rounds[0]["val_baseline"]
    elif start_round == 0:
        trainer.val_baseline = trainer.validate(pretrained=True)
    for r in range(start_round, cfg.rounds + 1):
        t0 = time.perf_counter()
        if r == 0:  # warm-up on source photos only
            losses: dict = {}
            for ep in range(cfg.warmup_epochs):
                losses = trainer.epoch(0, ep, None, np.zeros(0, np.int64), np.zeros(0, np.int64))
                if progress:
                    progress("warm-up epochs", ep + 1, cfg.warmup_epochs)
            labels = trainer.pseudo_label(0)[0]
            rec = trainer.report(0, labels, np.zeros(0, np.int64), losses, time.perf_counter() - t0)
        else:
            labels, _probs, selected, src_emb, tgt_emb = trainer.pseudo_label(r)
            losses = {}
            for ep in range(cfg.epochs):
                if ep > 0 and cfg.mode != "full":  # refresh the statistics from the current network
                    net.eval()
                    src_emb = embed_all(net, feed, "source", cfg.batch_size, dist)
                    tgt_emb = embed_all(net, feed, "target", cfg.batch_size, dist)
                stats = trainer.stats(src_emb, tgt_emb, selected, labels)
                losses = trainer.epoch(r, ep, stats, selected, labels)
                if progress:
                    progress(f"round {r}/{cfg.rounds} epochs", ep + 1, cfg.epochs)
            rec = trainer.report(r, labels, selected, losses, time.perf_counter() - t0)
        rec["world_size"] = dist.world
        rounds.append(rec)
        if dist.is_main:
            save_round(run_dir, trainer, r, rounds)
        dist.barrier()  # on every rank, on_round runs once the round is on disk
        if on_round:
            on_round(rec)


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None,
          on_round: RoundFn | None = None, return_embeddings: bool = False, home: Home | None = None) -> RunResult:
    """Run FTSPL as ``cfg`` says; returns the per-round records (also in the run folder).

    ``return_embeddings`` adds the exported network's (the round chosen on
    validation, else the last) source/target/query embeddings to the result
    (one extra no-grad pass), for in-process studies.
    Rendered views and backbone features are cached under ``home``'s cache
    folder (default: :meth:`Home.resolve`, i.e. ``--home``/``$FTSPL_HOME``/``./.ftspl``).
    Target files that cannot be used are skipped and listed in ``RunResult.skipped``.

    Under ``torchrun`` (or in a process group the caller formed) every process
    calls this with the same ``cfg``; see :mod:`ftspl.train.distributed`.
    ``progress`` is called on rank 0 only, ``on_round`` on every rank once the
    round's checkpoint is written.
    """
    validate(cfg)
    with session(cfg.device) as dist:
        return _train(cfg, dist, resume, progress if dist.is_main else None, on_round, return_embeddings, home)


def _train(cfg: TrainConfig, dist: Dist, resume: bool, progress: ProgressFn | None, on_round: RoundFn | None,
           return_embeddings: bool, home: Home | None) -> RunResult:
    from dataclasses import replace

    from ftspl.train.continuation import run_info_extra
    from ftspl.train.full_feed import FullFeed
    from ftspl.train.runio import resume_into, saved_config, write_start

    t_start = time.perf_counter()
    cache = (home or Home.resolve()).cache
    run_dir = Path(cfg.out)
    if (run_dir / CHECKPOINT).exists() and not resume:
        raise UsageError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        cfg = saved_config(run_dir) or cfg  # the run continues with the settings it started with
    fresh = not (resume and (run_dir / CHECKPOINT).exists())
    dist.barrier()  # every rank has looked at the run folder before rank 0 writes to it
    torch.manual_seed(cfg.seed)
    device = dist.device
    if cfg.mode == "partial":  # a --train-blocks the backbone cannot honour fails before any rendering
        from ftspl.train.partial import check_blocks

        check_blocks(cfg)
    inp = _load_inputs(cfg, cache, progress, dist)
    src, tgt, views, photos, queries = inp.src, inp.tgt, inp.views, inp.photos, inp.queries

    with _torch_threads(dist.threads()):
        net = _build_net(cfg, len(src.class_names), device)
        if cfg.mode == "head":
            feed = _head_feed(cfg, net, inp, cache, device, progress, dist)
        elif cfg.mode == "partial":
            from ftspl.train.partial import partial_feed

            feed = partial_feed(cfg, net, inp, cache, device, progress, dist)
        else:
            feed = FullFeed(inp.pre, photos, views, device, queries, val=inp.val, val_shapes=inp.val_shapes,
                            query_shapes=inp.queries_shapes)
        target_labels = [tgt.labels[i] if tgt.labels else None for i in views.index]
        trainer = Trainer(cfg, net, feed, src.class_names, target_labels, device, run_dir, dist)
        if cfg.mode == "head" and device.type == "cpu":
            # The head is a (B x 1280) @ (1280 x 256) matmul: far too small to split over
            # threads. On a busy CPU the OpenMP workers spin-wait for each other: a step takes
            # 230 ms on 2 threads vs 15 ms on one (2 shared cores); the backbone passes above
            # still use every core.
            torch.set_num_threads(1)

        if cfg.keep_pretrained > 0:  # the served embedding keeps the pretrained features (ftspl.train.keep)
            from ftspl.train.keep import attach

            keep = attach(net, cfg.keep_pretrained, cfg.keep_pretrained_dims)
            if fresh and not cfg.init_from:  # else the checkpoint's (or the continued run's) buffers load below
                net.eval()
                keep.fit(trunk_all(net, feed, "target", cfg.batch_size, dist))
        rounds: list[dict] = []
        start_round = 0
        if fresh and cfg.init_from:  # ftspl train --continue: the network starts as that run exported it
            from ftspl.train.continuation import start_weights

            net.load_state_dict(start_weights(cfg, device))
        if not fresh:
            start_round, rounds = resume_into(run_dir, trainer, device)
        elif dist.is_main:
            write_start(run_dir, replace(cfg, world_size=dist.world), {
                "class_names": src.class_names, "backbone": cfg.backbone, "embed_dim": cfg.embed_dim,
                "preprocess": inp.pre.to_dict(), "render_spec": inp.spec.to_dict(), "weights": cfg.weights,
                "n_source": feed.n_source, "n_target": feed.n_target, **run_info_extra(cfg, src),
            })
        try:
            _run_rounds(cfg, trainer, start_round, rounds, run_dir, progress, on_round)
            emb = None
            if return_embeddings:
                from ftspl.train.runio import BEST, load_best

                if (run_dir / BEST).exists():  # the round chosen on validation: what export serves
                    net.load_state_dict(load_best(run_dir, map_location=device)["net"])
                net.eval()
                bs = cfg.batch_size
                emb = _embeddings_of(
                    inp, served_all(net, feed, "source", bs, dist), served_all(net, feed, "target", bs, dist),
                    served_all(net, feed, "query", bs, dist) if queries is not None and len(queries) else None,
                )
        except torch.cuda.OutOfMemoryError:
            raise FtsplError(
                f"out of GPU memory at batch size {cfg.batch_size}; try --batch-size {max(2, cfg.batch_size // 2)} "
                "or --mode head"
            ) from None
    return RunResult(run_dir, rounds, str(device), time.perf_counter() - t_start, views.failed + photos.failed, emb)


__all__ = [
    "CHECKPOINT", "CONFIG", "METRICS", "RUN_INFO", "Embeddings", "RunResult", "load_checkpoint", "pick_device",
    "pretrained_embeddings", "render_spec_for", "train",
]
