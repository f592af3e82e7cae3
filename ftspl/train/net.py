"""FTSPLNet: one shared backbone -> bottleneck (M = 256) -> classifier (K).

Photos and views go through the same backbone (the paper follows MVCNN); a
shape's per-view backbone features are max-pooled over its views before the
bottleneck. In head mode the backbone is frozen and its pooled features are
computed once, so the trainable part sees ``precomputed`` features instead of
pixels; everything after the backbone is the same code in both modes.
"""

from __future__ import annotations

import torch
from torch import nn

from ftspl.train.backbones import Backbone
from ftspl.train.model import Bottleneck, Classifier, ImageEncoder, MultiViewEncoder


class FTSPLNet(nn.Module):
    def __init__(self, backbone: Backbone, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.bottleneck = Bottleneck(backbone.feat_dim, embed_dim)
        self.classifier = Classifier(embed_dim, num_classes)
        #: the pretrained half of the served embedding (:mod:`ftspl.train.keep`), when kept
        self.keep = None

    # -- trunk: pixels -> pooled backbone features ------------------------------
    def photo_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, F)."""
        return self.backbone.features(x)

    def shape_trunk(self, views: torch.Tensor) -> torch.Tensor:
        """(B, V, 3, S, S) -> (B, F): per-view features max-pooled over views (MVCNN)."""
        f = self.backbone.features(views.flatten(0, 1))
        return f.reshape(views.shape[0], -1, f.shape[-1]).amax(dim=1)

    # -- the training step's one forward ------------------------------------------
    def forward(self, photos: torch.Tensor, shapes: torch.Tensor | None = None, pixels: bool = True,
                with_embed: bool = False):
        """Logits of a training step: photos, then (optionally) shapes, in one bottleneck pass.

        ``pixels`` says whether the inputs are images (full mode: through the
        backbone) or pooled backbone features (head mode). Photos and shapes go
        through the bottleneck together, so its BatchNorm normalises both
        domains with the mixed batch statistics its running averages (used at
        query time) accumulate. Training calls this method on the
        (DistributedDataParallel-wrapped) module, never the parts below: with N
        processes, only outputs of the wrapper's ``forward`` synchronise gradients.
        ``with_embed`` returns ``(logits, embeddings)``: the alignment losses need both.
        """
        feats = self.photo_trunk(photos) if pixels else photos
        if shapes is not None:
            t_feats = self.shape_trunk(shapes) if pixels else shapes
            feats = torch.cat([feats, t_feats.to(feats.dtype)])
        emb = self.embed(feats)
        return (self.logits(emb), emb) if with_embed else self.logits(emb)

    # -- head: pooled features -> embedding -> logits ---------------------------
    def embed(self, trunk_feats: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(trunk_feats)

    def serve_embed(self, trunk_feats: torch.Tensor) -> torch.Tensor:
        """The embedding export serves (before its L2 normalisation): the bottleneck, or with a kept
        pretrained branch the concatenation of :class:`ftspl.train.keep.ServedHead`."""
        return self.served_head()(trunk_feats)

    def served_head(self) -> nn.Module:
        if self.keep is None:
            return self.bottleneck
        from ftspl.train.keep import ServedHead

        return ServedHead(self.bottleneck, self.keep)

    @property
    def served_dim(self) -> int:
        return self.bottleneck.out_dim + (self.keep.dims if self.keep is not None else 0)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.classifier(emb)

    @property
    def classifier_weight(self) -> torch.Tensor:
        """W (K x M) of Eq. 4."""
        return self.classifier.fc.weight

    def encoders(self) -> tuple[ImageEncoder, MultiViewEncoder]:
        """The two exported encoders: backbone -> bottleneck (+ kept pretrained branch) -> L2 norm, sharing weights."""
        head = self.served_head()
        img = ImageEncoder(self.backbone, head=head, l2_normalize=True).eval()
        mv = MultiViewEncoder(self.backbone, head=head, l2_normalize=True).eval()
        return img, mv
