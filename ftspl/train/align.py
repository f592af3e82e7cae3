"""Domain-alignment losses of the paper's Table I deep baselines, on bottleneck embeddings.

* Deep CORAL (Sun & Saenko 2016): ``||C_s - C_t||_F^2 / (4 d^2)`` between the
  feature covariances of a source and a target batch.
* RevGrad / DANN (Ganin & Lempitsky 2015): a domain classifier on the features
  through a gradient-reversal layer whose coefficient follows the paper's
  schedule ``2 / (1 + exp(-10 p)) - 1`` (p: training progress in [0, 1]).
* DAN's multi-kernel MMD (Long et al. 2015): the biased estimate of squared MMD
  with a sum of Gaussian kernels whose bandwidths are ``alpha * mean squared
  distance`` of the batch, alpha = 2^k for k in -3..1 (as tllib).
* JAN's joint MMD (Long et al. 2017): the same estimate over the product of
  the multi-kernel on features and a Gaussian kernel (sigma 0.92, as tllib) on
  the softmax predictions.

The trainer adds ``align_weight * loss`` to the source classification loss;
target shapes are unlabelled here (no pseudo-labels), as in those baselines.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ftspl.train.config import ALIGNS  # noqa: F401  (the names; validated by the config)

MMD_ALPHAS = tuple(2.0**k for k in range(-3, 2))


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance of the two (d x d) covariances over 4 d^2."""
    d = source.shape[1]
    cs = torch.cov(source.float().T)
    ct = torch.cov(target.float().T)
    return ((cs - ct) ** 2).sum() / (4.0 * d * d)


def grl_coeff(progress: float) -> float:
    """DANN's schedule: 0 at the start, towards 1 at the end (arXiv 1409.7495, Eq. 14)."""
    return 2.0 / (1.0 + math.exp(-10.0 * float(progress))) - 1.0


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-coeff`` backward."""
    return _GradReverse.apply(x, coeff)


class DomainDiscriminator(nn.Module):
    """tllib's domain classifier: (Linear -> BN -> ReLU) x 2 of width ``hidden`` -> one logit."""

    def __init__(self, in_dim: int, hidden: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


def dann_loss(disc: nn.Module, source: torch.Tensor, target: torch.Tensor, coeff: float) -> torch.Tensor:
    """Binary cross-entropy of the domain classifier (source 1, target 0) through the reversal layer."""
    feats = grad_reverse(torch.cat([source, target]).float(), coeff)
    logits = disc(feats)
    truth = torch.cat([torch.ones(len(source)), torch.zeros(len(target))]).to(logits.device)
    return F.binary_cross_entropy_with_logits(logits, truth)


def _mk_kernel(x: torch.Tensor, alphas: tuple[float, ...]) -> torch.Tensor:
    d2 = torch.cdist(x, x).pow(2)
    scale = d2.detach().mean().clamp_min(1e-12)
    return sum(torch.exp(-d2 / (2.0 * a * scale)) for a in alphas)


def _mmd_from(k: torch.Tensor, n: int) -> torch.Tensor:
    return k[:n, :n].mean() + k[n:, n:].mean() - 2.0 * k[:n, n:].mean()


def mk_mmd(source: torch.Tensor, target: torch.Tensor, alphas: tuple[float, ...] = MMD_ALPHAS) -> torch.Tensor:
    """Biased squared MMD with a sum of Gaussian kernels (0 for identical samples, grows with a shift)."""
    return _mmd_from(_mk_kernel(torch.cat([source, target]).float(), alphas), len(source))


JAN_SIGMA = 0.92


def jmmd(source: torch.Tensor, target: torch.Tensor, source_logits: torch.Tensor, target_logits: torch.Tensor,
         alphas: tuple[float, ...] = MMD_ALPHAS) -> torch.Tensor:
    """JAN's joint MMD: features' multi-kernel times a Gaussian kernel on softmax predictions."""
    kf = _mk_kernel(torch.cat([source, target]).float(), alphas)
    p = torch.softmax(torch.cat([source_logits, target_logits]).float(), dim=1)
    kp = torch.exp(-torch.cdist(p, p).pow(2) / (2.0 * JAN_SIGMA**2))
    return _mmd_from(kf * kp, len(source))
