"""The FTSPL transferable loss (paper Sec. III-C3, Eqs. 1-4).

Each labelled photo feature ``f`` (class ``y``) stands for infinitely many
transformed features ``f~ ~ N(f + dmu_y, Sigma_y)``: ``dmu_y = mu_t^y - mu_s^y``
is the inter-domain centroid difference (IDCA) and ``Sigma_y`` the covariance
of the pseudo-labelled 3D-shape features of class ``y`` (ICAV). Cross-entropy
averaged over all of them (Eq. 2) is bounded from above, via Jensen and the
Gaussian moment-generating function (Eq. 3), by plain cross-entropy over the
corrected logits of Eq. 4::

    Z_k = logit_k + lam * (w_k - w_y)^T dmu_y + lam/2 * (w_k - w_y)^T Sigma_y (w_k - w_y)

so the infinite augmentation costs one batched quadratic form per step.

``lam`` is the augmentation strength (as in ISDA): it is the same as sampling
``f~ ~ N(f + lam*dmu_y, lam*Sigma_y)``. Eq. 4 of the paper is ``lam = 1``;
:func:`ramp` grows it from 0 during training because early features, and the
statistics estimated from them, are poor. Passing ``dmu=None`` or ``cov=None``
drops that term, which is how the ``--no-idca`` / ``--no-icav`` ablations work.

The statistics ``dmu`` and ``cov`` are treated as constants (see
:class:`ftspl.train.stats.ClassStats`, which returns detached tensors);
gradients flow to ``logits`` and to the classifier weight ``W`` (``W`` appears
in the correction terms, exactly as in ISDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ramp", "transferable_logits", "transferable_loss"]


def ramp(step: float, total: float, final: float) -> float:
    """Linear warm-up of the strength: ``final * clamp(step / total, 0, 1)``.

    This is ISDA's schedule (``lambda = lambda_0 * epoch / epochs``). Pass
    either epochs or optimiser steps; steps give a smooth ramp instead of a
    staircase. It is 0 at ``step <= 0`` (plain cross-entropy while the
    features and statistics are still poor), reaches ``final`` at
    ``step >= total`` and stays there; ``total <= 0`` means no warm-up.
    """
    if total <= 0:
        return float(final)
    return float(final) * min(max(float(step) / float(total), 0.0), 1.0)


def _check(logits: torch.Tensor, labels: torch.Tensor, W: torch.Tensor,
           dmu: torch.Tensor | None, cov: torch.Tensor | None) -> None:
    if logits.ndim != 2 or W.ndim != 2 or labels.ndim != 1:
        raise ValueError(
            f"expected logits (B, K), labels (B,), W (K, M); got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}, {tuple(W.shape)}"
        )
    (b, k), m = logits.shape, W.shape[1]
    if labels.shape[0] != b or W.shape[0] != k:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)}, W {tuple(W.shape)}"
        )
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if dmu is not None and tuple(dmu.shape) != (k, m):
        raise ValueError(f"dmu must be (K, M) = {(k, m)}, got {tuple(dmu.shape)}")
    if cov is not None and tuple(cov.shape) != (k, m, m):
        raise ValueError(f"cov must be (K, M, M) = {(k, m, m)}, got {tuple(cov.shape)}")


def transferable_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    W: torch.Tensor,
    dmu: torch.Tensor | None = None,
    cov: torch.Tensor | None = None,
    lam: float = 1.0,
) -> torch.Tensor:
    """Eq. 4: the logits ``Z`` (B, K) whose cross-entropy is the transferable loss.

    Args:
        logits: (B, K) classifier output ``W f + b`` for the source features.
        labels: (B,) integer class of each photo.
        W: (K, M) classifier weight (the same one that produced ``logits``).
        dmu: (K, M) per-class ``mu_t - mu_s``, or ``None`` to drop the IDCA term.
        cov: (K, M, M) per-class target covariance, or ``None`` to drop ICAV.
        lam: strength scaling both terms (see :func:`ramp`).

    Returns:
        ``Z`` in at least float32 (never bf16/fp16: the quadratic form is
        computed with autocast off, since half precision loses it). ``Z[b, y_b]``
        equals ``logits[b, y_b]``: the correction vanishes for the true class.

    Cost, with ``U`` the number of distinct labels in the batch (U <= min(B, K)):
    the quadratic term ``sigma[b, k] = d^T Sigma_y d`` with ``d = w_k - w_y``
    depends on the sample only through ``y``, so it is computed once per
    distinct class: ``D = W - W[c]`` is (U, K, M) and
    ``((D @ Sigma_c) * D).sum(-1)`` is (U, K), then gathered back to (B, K).
    Peak extra memory is ``cov[uniq]`` (U*M*M, at most K*M*M, 8 MB for B=32,
    M=256 in float32) plus two U*K*M tensors; nothing of size B*K*M*M is ever
    built, and there is no Python loop over classes. The IDCA term needs only
    ``dmu[y] @ W.T`` (B*K).
    """
    _check(logits, labels, W, dmu, cov)
    labels = labels.long()
    dtype = torch.promote_types(torch.promote_types(logits.dtype, W.dtype), torch.float32)
    if lam == 0.0 or (dmu is None and cov is None):
        return logits.to(dtype)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z = logits.to(dtype)
        w = W.to(dtype)
        # Row selection by one-hot matmul rather than indexing: the backward of
        # indexing is an atomic scatter-add on CUDA (run-to-run noise); a matmul is not.
        onehot = F.one_hot(labels, w.shape[0]).to(dtype)  # (B, K)
        if dmu is not None:
            mu_y = onehot @ dmu.to(device=w.device, dtype=dtype)  # (B, M)
            proj = mu_y @ w.T  # (B, K): w_k^T dmu_y
            shift = proj - (proj * onehot).sum(dim=1, keepdim=True)  # exactly 0 at k = y
            z = z + lam * shift
        if cov is not None:
            uniq, inv = torch.unique(labels, sorted=True, return_inverse=True)
            pick = F.one_hot(uniq, w.shape[0]).to(dtype)  # (U, K)
            diff = w.unsqueeze(0) - (pick @ w).unsqueeze(1)  # (U, K, M)
            sig = cov.to(device=w.device, dtype=dtype).index_select(0, uniq)  # (U, M, M)
            quad = (torch.bmm(diff, sig) * diff).sum(dim=2)  # (U, K)
            z = z + (0.5 * lam) * (F.one_hot(inv, uniq.shape[0]).to(dtype) @ quad)
    return z


def transferable_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    W: torch.Tensor,
    dmu: torch.Tensor | None = None,
    cov: torch.Tensor | None = None,
    lam: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 4's ``L_inf``: cross-entropy over :func:`transferable_logits`.

    An upper bound of the expected cross-entropy over the transformed
    features (Eq. 2); with ``dmu`` and ``cov`` both ``None`` (or ``lam=0``)
    it is exactly ``F.cross_entropy(logits, labels)``.
    """
    z = transferable_logits(logits, labels, W, dmu, cov, lam)
    return F.cross_entropy(z, labels.long(), reduction=reduction)
