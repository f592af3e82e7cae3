"""The two encoders of FTSPL: photo -> embedding and 12 views -> embedding.

Layout (FTSPL, following MVCNN)::

    photo  (B, 3, H, W)    -> backbone -> (B, F)                  -> head -> L2 -> (B, D)
    shape  (B, V, 3, H, W) -> backbone -> (B, V, F) -> max over V -> head -> L2 -> (B, D)

Both encoders hold the *same* backbone and head objects, so photos and shapes
are embedded by shared weights (the paper shares them, and it halves the
parameters). ``head=None`` is the pretrained baseline: the embedding is the
pooled ImageNet feature itself. A trained model uses :class:`Bottleneck` as the
head; :class:`Classifier` sits on top of the bottleneck during training only and
is never part of an exported embedding.

Everything here is ONNX-exportable with a dynamic batch axis (and a dynamic view
axis for the multi-view encoder): shapes are reshaped with ``-1`` / traced
sizes, never Python ints baked from an example input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ftspl.engine.constants import EMBED_DIM
from ftspl.train.backbones import Backbone


class Bottleneck(nn.Module):
    """Linear projection to the embedding size M, followed by BatchNorm1d.

    Why no ReLU by default: the bottleneck output *is* the retrieval embedding,
    compared by cosine similarity after L2 normalisation. A ReLU would make it
    non-negative (every cosine >= 0) and kill dimensions, wasting half of the
    space; BatchNorm1d keeps the dimensions on one scale so that the pairwise
    loss and the classifier on top see balanced features (the "BN-neck" used
    in metric learning). ``relu=True`` gives the plain fc+ReLU of the paper's
    MVCNN-style bottleneck for ablations.
    """

    def __init__(self, in_dim: int, out_dim: int = EMBED_DIM, relu: bool = False) -> None:
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.act: nn.Module = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.fc(x)))


class Classifier(nn.Module):
    """Linear layer from the embedding to K shape classes (training only)."""

    def __init__(self, in_dim: int = EMBED_DIM, num_classes: int = 2) -> None:
        super().__init__()
        self.in_dim, self.num_classes = in_dim, num_classes
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _embed_dim(backbone: Backbone, head: nn.Module | None) -> int:
    if head is None:
        return backbone.feat_dim
    out = getattr(head, "out_dim", None)
    if not isinstance(out, int):
        raise TypeError("head must expose an int `out_dim` (e.g. Bottleneck)")
    return out


class _Encoder(nn.Module):
    """Shared parts: backbone, optional head, optional L2 normalisation."""

    def __init__(self, backbone: Backbone, head: nn.Module | None = None, l2_normalize: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.l2_normalize = l2_normalize
        self.embed_dim = _embed_dim(backbone, head)

    def _finish(self, feats: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            feats = self.head(feats)
        if self.l2_normalize:
            feats = F.normalize(feats, p=2.0, dim=1)
        return feats


class ImageEncoder(_Encoder):
    """(B, 3, H, W) normalised photo tensor -> (B, D) embedding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(self.backbone.features(x))


class MultiViewEncoder(_Encoder):
    """(B, V, 3, H, W) rendered views -> (B, D) shape embedding.

    All B*V views go through the backbone as one batch; their pooled features
    are max-pooled over the V views (MVCNN's view pooling, before the
    bottleneck as in the paper), so the embedding does not depend on the view
    order and any V >= 1 works, including at ONNX run time.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.features(x.flatten(0, 1))  # (B*V, F)
        feats = feats.reshape(x.shape[0], -1, feats.shape[-1])  # (B, V, F), traced sizes
        return self._finish(feats.amax(dim=1))
