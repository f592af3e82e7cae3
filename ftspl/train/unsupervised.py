"""Unsupervised model-selection criteria of domain adaptation, computed every round.

They need no target labels, so a user could pick a round with them; each round
records them (``metrics.json`` -> ``unsup``) and ``benchmarks/selection_study.py``
measures how well each tracks labelled photo-to-shape retrieval on the benchmark
before any is trusted:

* ``snd`` - Soft Neighborhood Density (Saito et al., ICCV 2021): the mean entropy
  of each target shape's softmax over its cosine similarities to the other
  target shapes (temperature 0.05). Higher means each shape has many close neighbours (dense
  clusters); scattered embeddings put the mass on one neighbour and score low.
* ``centroid_entropy`` - the mean entropy of each target shape's softmax over its
  cosine similarity to the source photos' class centroids (temperature 0.05).
  Lower means the shapes sit confidently near one photo class.
* ``centroid_margin`` - the mean gap between the highest and second-highest
  cosine similarity of a target shape to the source class centroids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE = 0.05


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    p = F.softmax(logits, dim=1)
    return -(p * torch.log(p.clamp_min(1e-12))).sum(dim=1)


def snd(target: torch.Tensor, temperature: float = TEMPERATURE) -> float:
    """Soft Neighborhood Density of the target embeddings (each row's own similarity left out)."""
    t = F.normalize(target.float(), dim=1)
    if len(t) < 2:
        return 0.0
    sim = t @ t.T
    sim.fill_diagonal_(float("-inf"))
    return float(_entropy(sim / temperature).mean())


def centroid_scores(source: torch.Tensor, source_y: torch.Tensor, target: torch.Tensor, num_classes: int,
                    temperature: float = TEMPERATURE) -> dict[str, float]:
    """Entropy and top-2 margin of the target shapes against the source photos' class centroids."""
    s = F.normalize(source.float(), dim=1)
    t = F.normalize(target.float(), dim=1)
    cent = torch.zeros(num_classes, s.shape[1]).index_add_(0, source_y.long().cpu(), s.cpu())
    present = torch.bincount(source_y.long().cpu(), minlength=num_classes) > 0
    cent = F.normalize(cent[present], dim=1)
    sim = t.cpu() @ cent.T
    top2 = sim.topk(min(2, sim.shape[1]), dim=1).values
    margin = (top2[:, 0] - top2[:, 1]) if top2.shape[1] > 1 else top2[:, 0]
    return {"centroid_entropy": float(_entropy(sim / temperature).mean()), "centroid_margin": float(margin.mean())}


def criteria(source: torch.Tensor, source_y: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Every criterion of this module, rounded for ``metrics.json``."""
    out = {"snd": snd(target), **centroid_scores(source, source_y, target, num_classes)}
    return {k: round(v, 5) for k, v in out.items()}
