"""``--mode partial``: fine-tune the backbone's last K blocks on cached activations of the frozen trunk.

Why: head mode adapts only the bottleneck on top of frozen ImageNet features;
the paper fine-tunes the CNN itself, which on a CPU costs a backbone pass per
photo and per view in every step. Splitting the backbone's chain of steps
(:meth:`~ftspl.train.backbones.Backbone.steps`: for EfficientNet-Lite0 the stem,
16 MBConv blocks and the 1x1 conv head) into a frozen *trunk* and a trainable
*tail* of the last K steps keeps most of that adaptation at a fraction of the
cost: the trunk's output (the input of step N-K) is computed once per item -
each source photo's ``augment_copies`` augmented crops and its clean crop, each
target shape's 12 views (not pooled: view pooling comes after the tail) - and
cached on disk like head mode's features (:mod:`ftspl.train.featcache`, keyed by
backbone, weights digest, K, preprocessing and, for shapes, the render spec).
Every step then runs tail -> spatial mean -> max over views -> bottleneck ->
classifier on those activations.

Activations are stored as float16: at the input of the last 1-2 Lite0 blocks an
item is 320 x 7 x 7 / 192 x 7 x 7 values (31 / 19 KB instead of 63 / 38 KB),
which halves the cache on disk and in memory; the embeddings computed from them
differ from the float32 pipeline's by less than 1e-3 (cosine), see
``tests/test_partial.py``.

BatchNorm in the tail keeps its ImageNet statistics (``tail_bn="frozen"``, the
default; ``"train"`` updates them from the training batches, which mix photos
and rendered views); ``benchmarks/partial_study.py tail`` measures both.

The network keeps :class:`~ftspl.train.net.FTSPLNet`'s parameters and state-dict
keys, so checkpoints, ``--resume``, best-round selection and ``ftspl export``
work unchanged: the export runs the whole backbone (trunk + fine-tuned tail) on
pixels, the same function training computes in two halves.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ftspl.engine.errors import UsageError
from ftspl.train.backbone_registry import get_spec
from ftspl.train.backbones import Backbone
from ftspl.train.config import TrainConfig
from ftspl.train.featcache import FeatureCache, backbone_id
from ftspl.train.feeds import HeadFeed
from ftspl.train.net import FTSPLNet

#: the cached activations' dtype (on disk and in memory; the tail computes in float32)
ACT_DTYPE = np.float16

Step = tuple[Callable[[torch.Tensor], torch.Tensor], list[nn.Module]]


def check_blocks(cfg: TrainConfig) -> None:
    """``--train-blocks`` against the backbone's registry entry; raises :class:`UsageError` naming the range."""
    spec = get_spec(cfg.backbone)
    if spec.train_blocks < 1:
        raise UsageError(f"--mode partial: backbone {cfg.backbone} cannot be split into blocks; "
                         "use --mode head or --mode full")
    if not 1 <= cfg.train_blocks <= spec.train_blocks:
        raise UsageError(f"--train-blocks {cfg.train_blocks}: {cfg.backbone} can train its last 1 to "
                         f"{spec.train_blocks} blocks; pass a number in that range")


class PartialNet(FTSPLNet):
    """FTSPLNet whose trunk methods take the cached input of the backbone's last ``train_blocks`` steps.

    ``photo_trunk`` / ``shape_trunk`` (and so ``forward(..., pixels=True)``,
    which the trainer calls) run the tail on activations, not on pixels;
    :meth:`trunk` computes those activations from pixels. Only the tail's
    parameters (and the bottleneck's and classifier's) require gradients.
    """

    def __init__(self, backbone: Backbone, num_classes: int, embed_dim: int, train_blocks: int,
                 tail_bn: str = "frozen") -> None:
        super().__init__(backbone, num_classes, embed_dim)
        n = len(backbone.steps())
        if not 1 <= train_blocks < n:
            raise UsageError(f"--train-blocks {train_blocks}: {backbone.name} has {n} steps; pass 1 to {n - 1}")
        self.train_blocks, self.tail_bn = train_blocks, tail_bn
        for p in backbone.parameters():
            p.requires_grad_(False)
        for m in self.tail_modules():
            for p in m.parameters():
                p.requires_grad_(True)

    @property
    def n_trunk(self) -> int:
        """How many steps the cached activations have gone through."""
        return len(self.backbone.steps()) - self.train_blocks

    # The steps are looked up on every call, never kept: DDP on CUDA swaps BatchNorm modules
    # for SyncBatchNorm ones after construction.
    def _tail_steps(self) -> list[Step]:
        return self.backbone.steps()[-self.train_blocks:]

    def tail_modules(self) -> list[nn.Module]:
        return [m for _, mods in self._tail_steps() for m in mods]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) pixels -> (B, C, h, w): the input of the first trained step."""
        for step, _ in self.backbone.steps()[: self.n_trunk]:
            x = step(x)
        return x

    def tail(self, a: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) activations -> (B, F) pooled features (the backbone's ``features``)."""
        x = a.float()
        for step, _ in self._tail_steps():
            x = step(x)
        return x.mean(dim=(2, 3))

    def photo_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) cached photo activations -> (B, F)."""
        return self.tail(x)

    def shape_trunk(self, views: torch.Tensor) -> torch.Tensor:
        """(B, V, C, h, w) cached view activations -> (B, F): tail per view, then max over views (MVCNN)."""
        f = self.tail(views.flatten(0, 1))
        return f.reshape(views.shape[0], -1, f.shape[-1]).amax(dim=1)

    def train(self, mode: bool = True) -> PartialNet:
        """Train mode for the bottleneck, classifier and tail; the trunk (and a frozen tail BatchNorm) stay in eval."""
        super().train(mode)
        if mode:
            self.backbone.eval()
            for m in self.tail_modules():
                m.train()
                if self.tail_bn == "frozen":
                    for bn in m.modules():
                        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
                            bn.eval()
        return self


class PartialFeed(HeadFeed):
    """HeadFeed's items and cache, holding trunk activations instead of pooled features.

    ``trainable_backbone`` is true: the trainer runs ``forward(pixels=True)``,
    i.e. the tail, and optimises the tail's parameters at ``lr * backbone_lr_mult``.
    """

    trainable_backbone = True

    @torch.no_grad()
    def _trunk(self, x: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(x), self.batch):
            t = torch.from_numpy(np.ascontiguousarray(x[i : i + self.batch])).to(self.device)
            out.append(self.net.trunk(t).float().cpu().numpy().astype(ACT_DTYPE))
        return np.concatenate(out)

    def _shape_item(self, x: torch.Tensor) -> np.ndarray:
        """(V, 3, S, S) -> (1, V, C, h, w): each view's trunk activation (pooled only after the tail)."""
        return self._trunk(x.cpu().numpy())[None]

    def _tensor(self, arrs: list[np.ndarray]) -> torch.Tensor:
        if not arrs:
            return torch.zeros(0, dtype=torch.float16)
        return torch.from_numpy(np.concatenate(arrs))

    def shapes_per_step(self, batch: int) -> int:
        """A quarter of the photo batch: each shape is 12 views through the tail.

        32 shapes beside 32 photos make a step of 416 tail passes: 3.5 s (K=1) and 11 s (K=2) on 2
        busy shared cores, 12-37 min per SH3D round of 204 steps. With 8 (128 passes), every
        selected shape is still visited about three times per epoch.
        """
        return max(2, batch // 4)

    def photo_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return net.photo_trunk(x)

    def shape_trunk(self, net: FTSPLNet, x: torch.Tensor) -> torch.Tensor:
        return net.shape_trunk(x)

    def nbytes(self) -> int:
        """Bytes of the activations held in memory (photo copies, clean crops, shapes, queries, validation)."""
        parts = (self.src_aug, self.src_clean, self.tgt, self.query, self.val, self.val_shapes, self.query_shapes)
        return sum(t.numel() * t.element_size() for t in parts if t is not None)


def partial_feed(cfg: TrainConfig, net: PartialNet, inp, cache: Path, device: torch.device, progress, dist=None
                 ) -> PartialFeed:
    """The feed of a partial-mode run: activations under ``cache/activations`` (shared by every run and rank)."""
    bid = f"{backbone_id(cfg.backbone, cfg.weights)}|trunk{net.n_trunk}|{np.dtype(ACT_DTYPE).name}"
    acts = FeatureCache(cache / "activations", bid, inp.pre, ACT_DTYPE)
    return PartialFeed(net, inp.pre, inp.photos, inp.views, cfg.augment_copies, cfg.seed, device, inp.queries,
                       cfg.batch_size, progress, acts, dist, val=inp.val, val_shapes=inp.val_shapes,
                       query_shapes=inp.queries_shapes)
