"""One FTSPL run's network, optimiser and the per-epoch / per-round steps.

:class:`Trainer` holds what a run updates (network, SGD optimiser, AMP scaler,
epoch counter) and offers the steps :func:`ftspl.train.loop.train` sequences:
``pseudo_label`` (embed, pseudo-label, select), ``stats`` (class statistics of
Eq. 5 and of the selected shapes), ``epoch`` (the transferable loss of Eq. 4
plus cross-entropy on selected shapes) and ``report`` (pseudo-label accuracy
and retrieval metrics). All randomness of an epoch derives from
``(seed, round, epoch)``, so a resumed run matches an uninterrupted one.

With N processes (:class:`~ftspl.train.distributed.Dist`) the step runs
through the DistributedDataParallel wrapper's ``forward`` on this rank's share
of each global batch, and every embedding pass is gathered from all ranks, so
pseudo-labels, selection and statistics are the same numbers on every rank.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftspl.engine.errors import FtsplError
from ftspl.train.config import TrainConfig
from ftspl.train.distributed import Dist, pick_device

__all__ = ["Trainer", "embed_all", "pick_device", "served_all", "trunk_all"]


def embed_all(net, feed, which: str, batch: int, dist: Dist | None = None) -> torch.Tensor:
    """Bottleneck embeddings of all sources / targets / queries (eval mode, no grad).

    With N processes each rank embeds a block of whole batches and the blocks
    are gathered, so every rank returns all embeddings, in item order.
    """
    return _pass_all(net, feed, which, batch, dist, head=True)


def served_all(net, feed, which: str, batch: int, dist: Dist | None = None) -> torch.Tensor:
    """The embeddings export serves (bottleneck, plus the kept pretrained branch when there is one)."""
    return _pass_all(net, feed, which, batch, dist, head=True, served=True)


def trunk_all(net, feed, which: str, batch: int, dist: Dist | None = None) -> torch.Tensor:
    """Pooled backbone features (no bottleneck) of all items of ``which``: the pretrained baseline's embedding."""
    return _pass_all(net, feed, which, batch, dist, head=False)


def _pass_all(net, feed, which: str, batch: int, dist: Dist | None, head: bool, served: bool = False) -> torch.Tensor:
    dist = dist if dist is not None else Dist()
    n = {"source": feed.n_source, "target": feed.n_target, "query": feed.n_query, "val": feed.n_val,
         "val_shapes": feed.n_val_shapes, "query_shapes": feed.n_query_shapes}[which]
    start, stop = dist.block(n, feed.eval_step(which, batch))
    it = {"source": feed.source_eval, "target": feed.target_eval, "query": feed.query_eval,
          "val": feed.val_eval, "val_shapes": feed.val_shapes_eval, "query_shapes": feed.query_shapes_eval,
          }[which](batch, start, stop)
    trunk = feed.shape_trunk if which in ("target", "val_shapes", "query_shapes") else feed.photo_trunk
    out = []
    with torch.no_grad():
        for x in it:
            f = trunk(net, x)
            out.append((net.serve_embed(f) if served else net.embed(f) if head else f).float())
    width = net.served_dim if served else net.bottleneck.out_dim if head else net.backbone.feat_dim
    mine = torch.cat(out) if out else torch.zeros(0, width, device=feed.device)
    return dist.gather_rows(mine)


def _retrieval(q_emb: torch.Tensor, q_labels: list[str], t_emb: torch.Tensor, t_labels: list[str]) -> dict:
    from ftspl.engine.scoring.metrics import (
        format_metrics,
        pairwise_euclidean,
        retrieval_metrics,
    )

    d = pairwise_euclidean(F.normalize(q_emb, dim=1).cpu().numpy(), F.normalize(t_emb, dim=1).cpu().numpy())
    return format_metrics(retrieval_metrics(d, np.asarray(q_labels, dtype=object), np.asarray(t_labels, dtype=object)))


class Trainer:
    """Holds the network, the feed and the optimiser of one run."""

    def __init__(self, cfg: TrainConfig, net, feed, class_names: list[str], target_labels: list[str | None],
                 device: torch.device, run_dir: Path, dist: Dist | None = None) -> None:
        self.cfg, self.net, self.feed, self.device, self.run_dir = cfg, net, feed, device, run_dir
        self.dist = dist if dist is not None else Dist()
        self.class_names = class_names
        self.K = len(class_names)
        self.target_labels = target_labels
        if feed.trainable_backbone:
            for p in net.backbone.classifier_parameters():  # ImageNet classifier: never in features()
                p.requires_grad_(False)
        self.dist.prepare(self._trained_modules())
        params = [
            {"params": list(net.bottleneck.parameters()) + list(net.classifier.parameters()), "lr": cfg.lr},
        ]
        if feed.trainable_backbone:
            params.append({"params": list(net.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult})
        else:
            for p in net.backbone.parameters():
                p.requires_grad_(False)
        #: DANN's domain classifier (trained beside the network, never exported)
        self.disc = None
        if cfg.align == "dann":
            from ftspl.engine.errors import UsageError
            from ftspl.train.align import DomainDiscriminator

            if self.dist.world > 1:
                raise UsageError("the DANN preset trains with one process (its domain classifier is not "
                                 "synchronised); drop --nproc")
            self.disc = DomainDiscriminator(net.bottleneck.out_dim).to(device)
            params.append({"params": list(self.disc.parameters()), "lr": cfg.lr})
        self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.use_amp = device.type == "cuda" and feed.trainable_backbone
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.total_epochs = cfg.warmup_epochs + cfg.rounds * cfg.epochs
        self.epochs_done = 0
        #: what the training step calls: ``net``, or its DistributedDataParallel wrapper
        self.model = self.dist.wrap(net)
        #: the criterion on the pretrained backbone's features (set by the loop before training)
        self.val_baseline: dict | None = None

    def _trained_modules(self) -> list:
        net = self.net
        return [net.bottleneck, net.classifier] + ([net.backbone] if self.feed.trainable_backbone else [])

    # -- one epoch --------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        if self.disc is not None:
            self.disc.train()
        if not self.feed.trainable_backbone:
            self.net.backbone.eval()  # frozen: keep its BatchNorm statistics

    def epoch(self, round_: int, ep: int, stats, selected: np.ndarray, pseudo: np.ndarray) -> dict:
        from ftspl.train.loss import ramp, transferable_loss

        cfg, d = self.cfg, self.dist
        rng = np.random.default_rng([cfg.seed, round_, ep])
        self._train_mode()
        lam = ramp(self.epochs_done, self.total_epochs, cfg.lam) if cfg.lam_ramp else cfg.lam
        use_ft = stats is not None and (cfg.idca or cfg.icav)
        dmu = stats.dmu().to(self.device) if use_ft and cfg.idca else None
        cov = stats.cov().to(self.device) if use_ft and cfg.icav else None
        sums = {"loss_source": 0.0, "loss_target": 0.0, "steps": 0}
        tgt_order = rng.permutation(selected) if len(selected) else selected
        t_pos = 0
        # pseudo-labelled shapes per step: the photo batch, fewer in partial mode (12 views each through the tail)
        t_bs = self.feed.shapes_per_step(cfg.batch_size)
        # every rank's share of a global target batch must hold at least one shape
        use_tgt = (cfg.target_ce and len(tgt_order) >= 2 and round_ > 0
                   and min(t_bs, len(tgt_order)) // d.world >= 1)
        align = cfg.align != "none" and (cfg.align_phase == "all" or round_ == 0)
        # unlabelled shapes for the alignment loss: their own generator, so presets without it are unchanged
        arng = np.random.default_rng([cfg.seed, round_, ep, 7919]) if align else None
        progress = self.epochs_done / max(1, self.total_epochs)
        if align:
            sums["loss_align"] = 0.0
        for x, y in self.feed.source_epoch(rng, cfg.batch_size, d.shard):
            shapes = None
            if use_tgt:
                n = min(t_bs, len(tgt_order))
                idx = d.shard(np.take(tgt_order, np.arange(t_pos, t_pos + n), mode="wrap"))
                t_pos = (t_pos + n) % len(tgt_order)
                shapes = self.feed.target_batch(idx)
            a_n = 0
            if align:
                a_idx = d.shard(arng.choice(self.feed.n_target, min(cfg.batch_size, self.feed.n_target), replace=False))
                a_shapes = self.feed.target_batch(a_idx)
                shapes = a_shapes if shapes is None else torch.cat([shapes, a_shapes])
                a_n = len(a_idx)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                # One bottleneck pass over photos and shapes together (FTSPLNet.forward): its
                # BatchNorm then normalises both domains with the same (mixed) batch statistics
                # that its running averages - used at query time - accumulate. Separate passes
                # would normalise each domain by its own batch in training but by the mix at
                # query time (SH3D val, seed 0, FTSPL: FT after round 1 is 0.582 joint vs 0.515
                # separate, at the end 0.573 vs 0.563). Through self.model: with N processes
                # only the wrapper's forward synchronises the gradients.
                if align:
                    all_logits, all_emb = self.model(x, shapes, pixels=self.feed.trainable_backbone, with_embed=True)
                else:
                    all_logits = self.model(x, shapes, pixels=self.feed.trainable_backbone)
            if shapes is not None:
                logits, t_logits = all_logits[: len(x)], all_logits[len(x): len(all_logits) - a_n]
            else:
                logits = all_logits
            logits = logits.float()
            if use_ft:
                loss_s = transferable_loss(logits, y, self.net.classifier_weight.float(), dmu, cov, lam)
            else:
                loss_s = F.cross_entropy(logits, y)
            loss = loss_s
            loss_t = None
            if use_tgt:
                loss_t = F.cross_entropy(t_logits.float(), torch.as_tensor(pseudo[idx], device=self.device))
                loss = loss + cfg.target_ce_weight * loss_t
            loss_a = None
            if align and a_n * d.world >= 2:  # a covariance / kernel mean needs two shapes
                # on the global batch (Dist.gather_grad), so N processes align like one
                g = d.gather_grad
                loss_a = self._align_loss(g(all_emb[: len(x)].float()), g(all_emb[len(all_emb) - a_n:].float()),
                                          progress, g(logits), g(all_logits[len(all_logits) - a_n:].float()))
                loss = loss + cfg.align_weight * loss_a
            # The global batch's losses, the same number on every rank (so all ranks stop together)
            values = d.sum_floats([float(loss_s.detach()), float(loss_t.detach()) if loss_t is not None else 0.0,
                                   float(loss.detach())] + ([float(loss_a.detach()) if loss_a is not None else 0.0] if align else []))
            if d.world > 1:
                values = [v / d.world for v in values]
            l_src, l_tgt, l_all = values[:3]
            if align:
                sums["loss_align"] += values[3]
            sums["loss_target"] += l_tgt
            if not math.isfinite(l_all):
                raise FtsplError(f"training diverged (loss {l_all}); lower --lr or --lam")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            sums["loss_source"] += l_src
            sums["steps"] += 1
        self.epochs_done += 1
        self.dist.average_buffers(self._trained_modules())
        steps = max(1, sums["steps"])
        out = {"loss_source": sums["loss_source"] / steps, "loss_target": sums["loss_target"] / steps, "lambda": lam}
        if align:
            out["loss_align"] = sums["loss_align"] / steps
        return out

    def _align_loss(self, src: torch.Tensor, tgt: torch.Tensor, progress: float, src_logits: torch.Tensor,
                    tgt_logits: torch.Tensor) -> torch.Tensor:
        """The preset's domain-alignment loss between this step's photo and shape embeddings (and logits: JAN)."""
        from ftspl.train.align import coral_loss, dann_loss, grl_coeff, jmmd, mk_mmd

        if self.cfg.align == "coral":
            return coral_loss(src, tgt)
        if self.cfg.align == "mmd":
            return mk_mmd(src, tgt)
        if self.cfg.align == "jan":
            return jmmd(src, tgt, src_logits, tgt_logits)
        return dann_loss(self.disc, src, tgt, grl_coeff(progress))

    # -- statistics and pseudo-labels -----------------------------------------
    def stats(self, src_emb, tgt_emb, selected, pseudo):
        from ftspl.train.stats import ClassStats

        stats = ClassStats(self.K, src_emb.shape[1])
        stats.update_source(src_emb, self.feed.src_y.to(src_emb.device))
        if len(selected):
            sel = torch.as_tensor(selected, device=tgt_emb.device)
            stats.update_target(tgt_emb[sel], torch.as_tensor(pseudo[selected], device=tgt_emb.device))
        return stats

    def pseudo_label(self, round_: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        from ftspl.train.spl import PseudoInputs, pseudo_label_with, select

        self.net.eval()
        bs = self.cfg.batch_size
        src = embed_all(self.net, self.feed, "source", bs, self.dist)
        tgt = embed_all(self.net, self.feed, "target", bs, self.dist)
        with torch.no_grad():
            t_logits = self.net.logits(tgt).float().cpu().numpy()
        src_pl, tgt_pl = src, tgt
        if self.cfg.pl_space == "unit":  # the geometry retrieval ranks in: cosine on the sphere
            src_pl, tgt_pl = F.normalize(src, dim=1), F.normalize(tgt, dim=1)
        inputs = PseudoInputs(
            target_feats=tgt_pl.cpu().numpy().astype(np.float64), source_feats=src_pl.cpu().numpy().astype(np.float64),
            source_labels=self.feed.src_y.numpy(), num_classes=self.K, target_logits=t_logits,
        )
        labels, probs = pseudo_label_with(self.cfg.pseudo, inputs)
        selected = select(labels, probs, self.cfg.select_max * round_ / self.cfg.rounds, method=self.cfg.selection)
        return np.asarray(labels, np.int64), np.asarray(probs), np.asarray(selected, np.int64), src, tgt

    # -- validation -----------------------------------------------------------
    def validate(self, pretrained: bool = False) -> dict | None:
        """The criterion of :mod:`ftspl.train.validation` on this network (or on the backbone's features)."""
        from ftspl.train.validation import score, score_shapes

        if not getattr(self.feed, "n_val", 0):
            return None
        self.net.eval()
        run = trunk_all if pretrained else served_all
        bs = self.cfg.batch_size
        val = run(self.net, self.feed, "val", bs, self.dist)
        if getattr(self.feed, "n_val_shapes", 0):  # labelled shapes: photo-to-shape retrieval
            shapes = run(self.net, self.feed, "val_shapes", bs, self.dist)
            return score_shapes(val, self.feed.val_y, shapes, self.feed.val_shapes_y).to_dict()
        src = run(self.net, self.feed, "source", bs, self.dist)
        return score(src, self.feed.src_y, val, self.feed.val_y, self.K).to_dict()

    # -- reporting ------------------------------------------------------------
    def report(self, round_: int, labels: np.ndarray, selected: np.ndarray, losses: dict, seconds: float) -> dict:
        rec: dict = {"round": round_, "selected": len(selected), "seconds": round(seconds, 2), **{k: round(v, 5) for k, v in losses.items()}}
        val = self.validate()
        if val is not None:  # the model-selection criterion: labelled photos the run never trains on
            rec["val"] = val
            if self.val_baseline is not None:
                rec["val_baseline"] = self.val_baseline
        from ftspl.train.unsupervised import criteria

        self.net.eval()  # the served embeddings of this round: label-free criteria, and metrics below
        src = served_all(self.net, self.feed, "source", self.cfg.batch_size, self.dist)
        tgt_all = served_all(self.net, self.feed, "target", self.cfg.batch_size, self.dist)
        rec["unsup"] = criteria(src, self.feed.src_y, tgt_all, self.K)
        names = self.class_names
        own_shapes = bool(getattr(self.feed, "n_query_shapes", 0)) and bool(getattr(self.feed, "query_y", None))
        if own_shapes:  # the queries rank their own labelled shapes (queries_shapes), not the target
            q = served_all(self.net, self.feed, "query", self.cfg.batch_size, self.dist)
            shapes = served_all(self.net, self.feed, "query_shapes", self.cfg.batch_size, self.dist)
            rec["reference"] = {k: round(v, 4) for k, v in _retrieval(
                q, list(self.feed.query_y), shapes, self.feed.query_shapes_y.tolist()).items()}
            rec["reference_on"] = "queries ranking queries_shapes"
        tl = self.target_labels
        known = [i for i, lab in enumerate(tl) if lab is not None]
        if known and labels is not None:
            truth = np.asarray([tl[i] for i in known], dtype=object)
            pred = np.asarray([names[k] for k in labels[known]], dtype=object)
            rec["pseudo_acc"] = round(float(np.mean(truth == pred)), 4)
            sel_known = [i for i in selected if tl[i] is not None]
            if sel_known:
                rec["pseudo_acc_selected"] = round(
                    float(np.mean(np.asarray([tl[i] for i in sel_known], dtype=object)
                                  == np.asarray([names[k] for k in labels[sel_known]], dtype=object))), 4)
        if known:
            tgt = tgt_all[torch.as_tensor(known)]
            t_lab = [tl[i] for i in known]
            if getattr(self.feed, "query_y", None) and not own_shapes:
                q = served_all(self.net, self.feed, "query", self.cfg.batch_size, self.dist)
                q_lab = [names[k] for k in self.feed.query_y]
                rec["metrics_on"] = "queries"
            elif getattr(self.feed, "n_val", 0):  # held-out photos; the source photos were trained on
                q = served_all(self.net, self.feed, "val", self.cfg.batch_size, self.dist)
                q_lab = [names[k] for k in self.feed.val_y.tolist()]
                rec["metrics_on"] = "validation photos"
            else:
                q = src
                q_lab = [names[k] for k in self.feed.src_y.tolist()]
                rec["metrics_on"] = "source photos"
            if any(lab in set(t_lab) for lab in q_lab):
                rec["metrics"] = {k: round(v, 4) for k, v in _retrieval(q, q_lab, tgt, t_lab).items()}
        return rec
