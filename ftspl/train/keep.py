"""Keep what generalises: the served embedding carries the pretrained features beside the adapted ones.

Adaptation on rendered photos sharpens the classes the benchmark's photos show,
but it can also drag a wrongly pseudo-labelled shape deeper into the wrong
class, and the ImageNet features carry cues real photos need. So the served
embedding is the concatenation::

    e(f) = [ sqrt(w) * unit(P^T (unit(f) - mu)),  sqrt(1 - w) * unit(bottleneck(f)) ]

where ``f`` is the pooled backbone feature of a photo or of a shape's views,
``mu`` and ``P`` (the top ``dims`` principal directions) are fitted once on the
L2-normalised *pretrained* pooled features of the target shapes (unlabelled, so
a user has them; normalised first because a shape's features are a max over 12
views and a photo's are not, so their raw lengths differ), and ``w`` is ``TrainConfig.keep_pretrained``. ``e`` has unit length, so
the cosine between two embeddings is ``w`` times the cosine of their centred,
projected pretrained features plus ``1 - w`` times the adapted cosine.
Centring on the shapes' mean removes the direction every rendered view shares;
the projection keeps the index small (``dims + embed_dim`` floats per shape).

Training never sees this branch: its losses, pseudo-labels and statistics use
the bottleneck. Validation, the per-round metrics and the exported encoders use
the served embedding. ``w = 0`` (no branch) gives the plain bottleneck.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeepPretrained(nn.Module):
    """The pretrained half of the served embedding: centre, project, normalise, weight."""

    def __init__(self, feat_dim: int, dims: int, weight: float) -> None:
        super().__init__()
        if not 0 < weight < 1:
            raise ValueError("keep_pretrained must be in (0, 1)")
        if not 1 <= dims <= feat_dim:
            raise ValueError(f"keep_pretrained_dims must be from 1 to the backbone's {feat_dim} features")
        self.feat_dim, self.dims, self.weight = feat_dim, dims, float(weight)
        self.register_buffer("mean", torch.zeros(feat_dim))
        self.register_buffer("components", torch.zeros(feat_dim, dims))

    def fit(self, feats: torch.Tensor) -> None:
        """Centre and principal directions of the pretrained pooled features of the target shapes."""
        x = F.normalize(feats.detach().float().cpu(), dim=1)
        if len(x) == 0:
            raise ValueError("keep_pretrained needs the target shapes' features to fit its projection")
        mean = x.mean(dim=0)
        _, sv, vh = torch.linalg.svd(x - mean, full_matrices=False)
        comps = torch.zeros(self.feat_dim, self.dims)
        # fewer shapes than dims (or one shape): only the directions the shapes span are kept, the rest stay zero
        k = min(self.dims, int((sv > 1e-6 * max(float(sv.max()), 1e-12)).sum()) if len(sv) else 0)
        comps[:, :k] = vh[:k].T
        # a fixed sign per direction, so the same features give the same buffers everywhere
        flip = torch.sign(comps[comps.abs().argmax(dim=0), torch.arange(self.dims)])
        comps *= torch.where(flip == 0, torch.ones_like(flip), flip)
        self.mean.copy_(mean.to(self.mean.device))
        self.components.copy_(comps.to(self.components.device))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        proj = (F.normalize(feats, dim=-1) - self.mean) @ self.components
        return F.normalize(proj, dim=-1) * self.weight ** 0.5


class ServedHead(nn.Module):
    """Pooled backbone features -> the served embedding (pretrained part, then the adapted part)."""

    def __init__(self, bottleneck: nn.Module, keep: KeepPretrained) -> None:
        super().__init__()
        self.bottleneck, self.keep = bottleneck, keep
        self.out_dim = keep.dims + int(bottleneck.out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        adapted = F.normalize(self.bottleneck(feats), dim=-1) * (1.0 - self.keep.weight) ** 0.5
        return torch.cat([self.keep(feats), adapted], dim=-1)


def attach(net: nn.Module, weight: float, dims: int) -> KeepPretrained:
    """Give ``net`` an (unfitted) branch; a checkpoint's ``keep.*`` buffers load into it."""
    keep = KeepPretrained(net.backbone.feat_dim, dims, weight).to(next(net.parameters()).device)
    net.keep = keep
    return keep
