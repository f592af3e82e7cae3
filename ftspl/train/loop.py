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
something to pseudo-label with. Every round writes a checkpoint (state dicts,
``torch.save``; loaded back with ``weights_only=True``) and appends its metrics
to ``metrics.json``, so ``--resume`` continues a killed run at the next round
with the same result as an uninterrupted one (all randomness is derived from
``(seed, round, epoch)``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftspl.engine.constants import Preprocess, RenderSpec
from ftspl.engine.errors import FtsplError, UsageError
from ftspl.engine.files import atomic_write_bytes
from ftspl.train.config import TrainConfig, validate

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
RUN_INFO = "run.json"

ProgressFn = Callable[[str, int, int], None]
RoundFn = Callable[[dict], None]


@dataclass
class RunResult:
    run_dir: Path
    rounds: list[dict]
    device: str
    seconds: float
    skipped: list[tuple[str, str]]
    #: with ``train(..., return_embeddings=True)``: the final network's embeddings (not L2-normalised)
    embeddings: Embeddings | None = None


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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FtsplError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise UsageError(f"unknown --device {name!r}; valid: auto, cpu, cuda")
    return torch.device(name)


def _embed_all(net, feed, which: str, batch: int) -> torch.Tensor:
    """Bottleneck embeddings of all sources / targets / queries (eval mode, no grad)."""
    it = {"source": feed.source_eval, "target": feed.target_eval, "query": feed.query_eval}[which](batch)
    trunk = feed.photo_trunk if which in ("source", "query") else feed.shape_trunk
    out = []
    with torch.no_grad():
        for x in it:
            out.append(net.embed(trunk(net, x)).float())
    return torch.cat(out) if out else torch.zeros(0, net.bottleneck.out_dim, device=feed.device)


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
                 device: torch.device, run_dir: Path) -> None:
        self.cfg, self.net, self.feed, self.device, self.run_dir = cfg, net, feed, device, run_dir
        self.class_names = class_names
        self.K = len(class_names)
        self.target_labels = target_labels
        params = [
            {"params": list(net.bottleneck.parameters()) + list(net.classifier.parameters()), "lr": cfg.lr},
        ]
        if feed.trainable_backbone:
            params.append({"params": list(net.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_mult})
        else:
            for p in net.backbone.parameters():
                p.requires_grad_(False)
        self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        self.use_amp = device.type == "cuda" and feed.trainable_backbone
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.total_epochs = cfg.warmup_epochs + cfg.rounds * cfg.epochs
        self.epochs_done = 0

    # -- one epoch --------------------------------------------------------------
    def _train_mode(self) -> None:
        self.net.train()
        if not self.feed.trainable_backbone:
            self.net.backbone.eval()  # frozen: keep its BatchNorm statistics

    def epoch(self, round_: int, ep: int, stats, selected: np.ndarray, pseudo: np.ndarray) -> dict:
        from ftspl.train.loss import ramp, transferable_loss

        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, round_, ep])
        self._train_mode()
        lam = ramp(self.epochs_done, self.total_epochs, cfg.lam) if cfg.lam_ramp else cfg.lam
        use_ft = stats is not None and (cfg.idca or cfg.icav)
        dmu = stats.dmu().to(self.device) if use_ft and cfg.idca else None
        cov = stats.cov().to(self.device) if use_ft and cfg.icav else None
        sums = {"loss_source": 0.0, "loss_target": 0.0, "steps": 0}
        tgt_order = rng.permutation(selected) if len(selected) else selected
        t_pos = 0
        batches = list(self.feed.source_epoch(rng, cfg.batch_size))
        use_tgt = cfg.target_ce and len(tgt_order) >= 2 and round_ > 0
        for x, y in batches:
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                feats = self.feed.photo_trunk(self.net, x)
                if use_tgt:
                    n = min(cfg.batch_size, len(tgt_order))
                    idx = np.take(tgt_order, np.arange(t_pos, t_pos + n), mode="wrap")
                    t_pos = (t_pos + n) % len(tgt_order)
                    t_feats = self.feed.shape_trunk(self.net, self.feed.target_batch(idx))
                    # One bottleneck pass over photos and shapes together: its BatchNorm then
                    # normalises both domains with the same (mixed) batch statistics that its
                    # running averages - used at query time - accumulate. Two separate passes
                    # normalised each domain by its own batch while training and by the mix at
                    # query time (SH3D val, seed 0, FTSPL: FT after round 1 0.515 -> 0.582 with
                    # the joint pass, at the end 0.563 -> 0.573).
                    all_logits = self.net.logits(self.net.embed(torch.cat([feats, t_feats.to(feats.dtype)])))
                    logits, t_logits = all_logits[: len(feats)], all_logits[len(feats):]
                else:
                    logits = self.net.logits(self.net.embed(feats))
            logits = logits.float()
            if use_ft:
                loss_s = transferable_loss(logits, y, self.net.classifier_weight.float(), dmu, cov, lam)
            else:
                loss_s = F.cross_entropy(logits, y)
            loss = loss_s
            if use_tgt:
                loss_t = F.cross_entropy(t_logits.float(), torch.as_tensor(pseudo[idx], device=self.device))
                loss = loss + cfg.target_ce_weight * loss_t
                sums["loss_target"] += float(loss_t.detach())
            if not torch.isfinite(loss):
                raise FtsplError(f"training diverged (loss {float(loss)}); lower --lr or --lam")
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            sums["loss_source"] += float(loss_s.detach())
            sums["steps"] += 1
        self.epochs_done += 1
        steps = max(1, sums["steps"])
        return {"loss_source": sums["loss_source"] / steps, "loss_target": sums["loss_target"] / steps, "lambda": lam}

    # -- statistics and pseudo-labels -----------------------------------------
    def _stats(self, src_emb, tgt_emb, selected, pseudo):
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
        src = _embed_all(self.net, self.feed, "source", bs)
        tgt = _embed_all(self.net, self.feed, "target", bs)
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
        selected = select(labels, probs, round_ / self.cfg.rounds, method=self.cfg.selection)
        return np.asarray(labels, np.int64), np.asarray(probs), np.asarray(selected, np.int64), src, tgt

    # -- reporting ------------------------------------------------------------
    def report(self, round_: int, labels: np.ndarray, selected: np.ndarray, losses: dict, seconds: float) -> dict:
        rec: dict = {"round": round_, "selected": len(selected), "seconds": round(seconds, 2), **{k: round(v, 5) for k, v in losses.items()}}
        names = self.class_names
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
            self.net.eval()
            tgt = _embed_all(self.net, self.feed, "target", self.cfg.batch_size)[torch.as_tensor(known)]
            t_lab = [tl[i] for i in known]
            if getattr(self.feed, "query_y", None):
                q = _embed_all(self.net, self.feed, "query", self.cfg.batch_size)
                q_lab = [names[k] for k in self.feed.query_y]
                rec["metrics_on"] = "queries"
            else:
                q = _embed_all(self.net, self.feed, "source", self.cfg.batch_size)
                q_lab = [names[k] for k in self.feed.src_y.tolist()]
                rec["metrics_on"] = "source photos"
            if any(lab in set(t_lab) for lab in q_lab):
                rec["metrics"] = {k: round(v, 4) for k, v in _retrieval(q, q_lab, tgt, t_lab).items()}
        return rec


def _save_checkpoint(run_dir: Path, trainer: Trainer, round_: int) -> None:
    import io

    buf = io.BytesIO()
    torch.save(
        {"net": trainer.net.state_dict(), "optimizer": trainer.opt.state_dict(), "round": round_,
         "epochs_done": trainer.epochs_done, "scaler": trainer.scaler.state_dict()},
        buf,
    )
    atomic_write_bytes(run_dir / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: Path, map_location="cpu") -> dict:
    path = Path(run_dir) / CHECKPOINT
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{path}: no checkpoint; is {run_dir} a training run folder?") from None
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise FtsplError(f"{path}: unreadable checkpoint ({type(exc).__name__}); train again") from None


@dataclass
class _Inputs:
    src: object
    tgt: object
    views: object
    photos: object
    queries: object
    pre: Preprocess
    spec: RenderSpec


def _cache_root() -> Path:
    return Path(os.environ.get("FTSPL_CACHE", Path.cwd() / ".cache"))


def _load_inputs(cfg: TrainConfig, progress: ProgressFn | None) -> _Inputs:
    """Photos, shapes (rendered once into the view cache) and optional queries of ``cfg``."""
    from ftspl.train.data import load_source, load_target
    from ftspl.train.feeds import PhotoList
    from ftspl.train.viewcache import cache_views

    src = load_source(cfg.source)
    tgt = load_target(cfg.target, cfg.label_from)
    unknown = sorted({lab for lab in tgt.labels if lab is not None} - set(src.class_names))
    if tgt.has_labels and unknown:
        log.warning("target classes without source photos (reported, not trained): %s", ", ".join(unknown))
    pre = Preprocess.for_backbone(cfg.backbone)
    spec = RenderSpec()
    views = cache_views(tgt.paths, tgt.kinds, spec, _cache_root() / "views", progress)
    if len(views.keys) < 2:
        raise UsageError(f"{cfg.target}: fewer than 2 usable shapes ({len(views.failed)} failed)")
    photos = PhotoList(src.paths, src.labels)
    if len(set(photos.labels)) < len(src.class_names):
        raise UsageError(f"{cfg.source}: a class has no readable photos")
    queries = None
    if cfg.queries:
        qs = load_source(cfg.queries, class_names=src.class_names)
        queries = PhotoList(qs.paths, qs.labels)
    return _Inputs(src, tgt, views, photos, queries, pre, spec)


def _head_feed(cfg: TrainConfig, net, inp: _Inputs, device: torch.device, progress: ProgressFn | None):
    from ftspl.train.featcache import FeatureCache, backbone_id
    from ftspl.train.feeds import HeadFeed

    cache = FeatureCache(_cache_root() / "features", backbone_id(cfg.backbone, cfg.weights), inp.pre)
    return HeadFeed(net, inp.pre, inp.photos, inp.views, cfg.augment_copies, cfg.seed, device, inp.queries,
                    cfg.batch_size, progress, cache)


def pretrained_embeddings(cfg: TrainConfig, progress: ProgressFn | None = None) -> Embeddings:
    """The untrained baseline's embeddings (the paper's "CNN" row): pooled ImageNet features.

    The same cached features head-mode training starts from, so the "CNN" row of
    a study costs nothing extra; equal to what ``ftspl export --pretrained``
    serves (that model's embedding is the pooled backbone feature, L2-normalised).
    """
    from ftspl.train.backbones import build_backbone
    from ftspl.train.net import FTSPLNet

    validate(cfg)
    device = pick_device(cfg.device)
    inp = _load_inputs(cfg, progress)
    with _torch_threads():
        backbone = build_backbone(cfg.backbone, pretrained=True, weights_path=Path(cfg.weights) if cfg.weights else None)
        net = FTSPLNet(backbone, len(inp.src.class_names), cfg.embed_dim).to(device)
        feed = _head_feed(cfg, net, inp, device, progress)
    return _embeddings_of(inp, feed.src_clean, feed.tgt, feed.query)


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


def train(cfg: TrainConfig, resume: bool = False, progress: ProgressFn | None = None,
          on_round: RoundFn | None = None, return_embeddings: bool = False) -> RunResult:
    """Run FTSPL as ``cfg`` says; returns the per-round records (also in the run folder).

    ``return_embeddings`` adds the final network's source/target/query
    embeddings to the result (one extra no-grad pass), for in-process studies.
    """
    from ftspl.train.backbones import build_backbone
    from ftspl.train.feeds import FullFeed
    from ftspl.train.net import FTSPLNet

    validate(cfg)
    t_start = time.perf_counter()
    run_dir = Path(cfg.out)
    if (run_dir / CHECKPOINT).exists() and not resume:
        raise UsageError(f"{run_dir}: already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume and (run_dir / CONFIG).exists():
        saved = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
        cfg = saved  # the run continues with the settings it started with
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    inp = _load_inputs(cfg, progress)
    src, tgt, views, photos, queries, pre, spec = (
        inp.src, inp.tgt, inp.views, inp.photos, inp.queries, inp.pre, inp.spec)

    with _torch_threads():
        backbone = build_backbone(cfg.backbone, pretrained=True, weights_path=Path(cfg.weights) if cfg.weights else None)
        net = FTSPLNet(backbone, len(src.class_names), cfg.embed_dim).to(device)
        if cfg.mode == "head":
            feed = _head_feed(cfg, net, inp, device, progress)
        else:
            feed = FullFeed(pre, photos, views, device, queries)
        target_labels = [tgt.labels[i] if tgt.labels else None for i in views.index]
        trainer = Trainer(cfg, net, feed, src.class_names, target_labels, device, run_dir)
        if cfg.mode == "head" and device.type == "cpu":
            # The head is a (B x 1280) @ (1280 x 256) matmul: far too small to split over
            # threads. On a busy CPU the OpenMP workers spin-wait for each other and a step
            # took 230 ms on 2 threads vs 15 ms on one (2 shared cores); the backbone passes
            # above still use every core.
            torch.set_num_threads(1)

        rounds: list[dict] = []
        start_round = 0
        if resume and (run_dir / CHECKPOINT).exists():
            ck = load_checkpoint(run_dir, map_location=device)
            net.load_state_dict(ck["net"])
            trainer.opt.load_state_dict(ck["optimizer"])
            trainer.scaler.load_state_dict(ck.get("scaler", {}))
            trainer.epochs_done = int(ck["epochs_done"])
            start_round = int(ck["round"]) + 1
            if (run_dir / METRICS).exists():
                rounds = json.loads((run_dir / METRICS).read_text())["rounds"][:start_round]
        else:
            (run_dir / CONFIG).write_text(cfg.to_json())
            (run_dir / RUN_INFO).write_text(json.dumps({
                "class_names": src.class_names, "backbone": cfg.backbone, "embed_dim": cfg.embed_dim,
                "preprocess": pre.to_dict(), "render_spec": spec.to_dict(), "weights": cfg.weights,
                "n_source": feed.n_source, "n_target": feed.n_target,
            }, indent=2))
        try:
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
                        if ep > 0 and cfg.mode == "head":  # refresh the statistics from the current network
                            trainer.net.eval()
                            src_emb = _embed_all(net, feed, "source", cfg.batch_size)
                            tgt_emb = _embed_all(net, feed, "target", cfg.batch_size)
                        stats = trainer._stats(src_emb, tgt_emb, selected, labels)
                        losses = trainer.epoch(r, ep, stats, selected, labels)
                        if progress:
                            progress(f"round {r}/{cfg.rounds} epochs", ep + 1, cfg.epochs)
                    rec = trainer.report(r, labels, selected, losses, time.perf_counter() - t0)
                rounds.append(rec)
                _save_checkpoint(run_dir, trainer, r)
                atomic_write_bytes(run_dir / METRICS, json.dumps({"rounds": rounds}, indent=2).encode())
                if on_round:
                    on_round(rec)
            emb = None
            if return_embeddings:
                net.eval()
                bs = cfg.batch_size
                emb = _embeddings_of(
                    inp, _embed_all(net, feed, "source", bs), _embed_all(net, feed, "target", bs),
                    _embed_all(net, feed, "query", bs) if queries is not None and len(queries) else None,
                )
        except torch.cuda.OutOfMemoryError:
            raise FtsplError(
                f"out of GPU memory at batch size {cfg.batch_size}; try --batch-size {max(2, cfg.batch_size // 2)} "
                "or --mode head"
            ) from None
    return RunResult(run_dir, rounds, str(device), time.perf_counter() - t_start, views.failed + photos.failed, emb)


class _torch_threads:
    """Use every core for torch's intra-op work during training (the thread count is restored afterwards)."""

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(max(1, os.cpu_count() or 1))

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


__all__ = ["Embeddings", "RunResult", "load_checkpoint", "pick_device", "pretrained_embeddings", "train"]
