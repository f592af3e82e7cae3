"""Per-class feature statistics for FTSPL's feature transformation.

IDCA (paper Sec. III-C1) needs the per-class centroid difference
``dmu_k = mu_t^k - mu_s^k``: ``mu_s^k`` is the mean of the labelled photo
features of class ``k`` (Eq. 5) and ``mu_t^k`` the mean of the *selected*
pseudo-labelled shape features of class ``k``. ICAV (Sec. III-C2) needs
``Sigma_t^k``, the covariance of those same shape features. :class:`ClassStats`
accumulates both and hands them to :func:`ftspl.train.loss.transferable_loss`.

Estimation schedule (the decision, and why):

* **Target statistics are exact per round.** At the start of each
  self-training round the loop extracts the shape features under ``no_grad``,
  pseudo-labels them and selects a subset; it then calls :meth:`reset_target`
  and :meth:`ClassStats.update_target` with that subset (in as many chunks as
  it likes) and the statistics stay fixed for the round. Pseudo-labels and
  the selection only change per round, shapes are not seen with labels during
  the steps, and a covariance from all selected shapes is far better than
  one from a mini-batch.
* **Source centroids: exact per round by default** (``momentum=None``): the
  same start-of-round pass over the photos, which selective pseudo-labelling
  needs anyway for Eq. 6 (:meth:`source_means`), so ``mu_s`` and ``mu_t``
  come from the *same* network snapshot and their difference is consistent.
  With ``momentum=m`` the source centroids are instead an exponential moving
  average over the training steps (``mu <- (1-m) mu + m * batch_mean`` per
  class present in the batch, BatchNorm's convention; the first batch of a
  class initialises it): fresher source centroids for free, at the price of
  mixing a moving ``mu_s`` with a round-old ``mu_t``.

Numerics and conventions:

* Accumulators are float64 on the CPU whatever the training device: the
  running sums are then exact enough, the results are bit-reproducible (no
  GPU atomics), and devices without float64 (MPS) work. Getters return
  detached float32 tensors on ``device``, cached until the next update.
* Covariances use the 1/n (maximum-likelihood) normalisation, as ISDA does:
  ``Sigma`` is the spread the transformed features are drawn from, not an
  unbiased estimate for inference. They are merged across chunks with Chan
  et al.'s pairwise formula over *centred* Gram matrices, so every term is
  positive semi-definite and no ``E[xx^T] - mu mu^T`` cancellation can push
  eigenvalues negative when features sit far from the origin.
* Eq. 4 uses ``Sigma`` itself (never its inverse), so nothing needs to be
  invertible: a class with fewer than ``min_count`` selected shapes (or no
  photo yet) gets ``dmu_k = 0`` and ``Sigma_k = 0``, i.e. no transformation,
  and Eq. 4 falls back to plain cross-entropy for it. Shrinking towards a
  pooled covariance was rejected: it would transfer other classes' attribute
  variation. Optional ``shrinkage`` a in [0, 1] gives
  ``(1-a) Sigma + a tr(Sigma)/M I`` for the used classes (default 0: the
  paper's plain covariance).
* The M x M Gram matrices are one GEMM per class *present in the update*
  (a loop over classes, not samples). The vectorised alternatives are much
  slower: for K=171, M=256, N=9000 on 2 CPU cores the loop takes 0.13 s,
  a one-hot ``einsum('nk,nm,nl->kml')`` 6 s (K times the flops) and an
  ``index_add_`` of per-sample outer products 3 s (N*M*M memory traffic).
  Per-class sums and counts are vectorised (one-hot matmul, ``bincount``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["ClassStats"]

_F64 = torch.float64
_CPU = torch.device("cpu")


class ClassStats:
    """Running per-class source centroids and target centroids/covariances.

    Args:
        num_classes: K.
        dim: M, the feature dimension (the features the classifier sees).
        momentum: ``None`` for exact source centroids over everything passed
            since :meth:`reset_source`; a float in (0, 1] for an EMA.
        min_count: minimum number of selected target samples for a class's
            statistics to be used; fewer gives zeros (no transformation).
        shrinkage: a in [0, 1], see the module docstring.
        device: where the getters put their float32 results.
    """

    def __init__(
        self,
        num_classes: int,
        dim: int,
        momentum: float | None = None,
        min_count: int = 2,
        shrinkage: float = 0.0,
        device: str | torch.device = "cpu",
    ) -> None:
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be >= 1, got {num_classes}, {dim}")
        if momentum is not None and not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be None or in (0, 1], got {momentum}")
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.momentum, self.min_count, self.shrinkage = momentum, int(min_count), float(shrinkage)
        self.device = torch.device(device)
        self._cache: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self.reset()

    # ------------------------------------------------------------------ resets

    def reset_source(self) -> None:
        """Forget the source centroids (start of a round in exact mode)."""
        k, m = self.num_classes, self.dim
        self._src_n = torch.zeros(k, dtype=torch.int64)
        self._src_mean = torch.zeros(k, m, dtype=_F64)
        self._cache.clear()

    def reset_target(self) -> None:
        """Forget the target statistics (start of each round, before the new selection)."""
        k, m = self.num_classes, self.dim
        self._tgt_n = torch.zeros(k, dtype=torch.int64)
        self._tgt_mean = torch.zeros(k, m, dtype=_F64)
        self._tgt_m2 = torch.zeros(k, m, m, dtype=_F64)  # sum of centred outer products
        self._cache.clear()

    def reset(self) -> None:
        """Forget everything."""
        self.reset_source()
        self.reset_target()

    # ----------------------------------------------------------------- updates

    def _prepare(
        self, feats: torch.Tensor, labels: torch.Tensor, selected: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate and move to CPU float64 (detached); apply the optional boolean mask."""
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"feats must be (N, {self.dim}), got {tuple(feats.shape)}")
        if labels.ndim != 1 or labels.shape[0] != feats.shape[0]:
            raise ValueError(f"labels must be ({feats.shape[0]},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        x = feats.detach().to(device=_CPU, dtype=_F64)
        y = labels.detach().to(device=_CPU, dtype=torch.int64)
        if selected is not None:
            if selected.dtype != torch.bool or tuple(selected.shape) != (feats.shape[0],):
                raise ValueError(f"selected must be a bool tensor of shape ({feats.shape[0]},)")
            keep = selected.detach().to(_CPU)
            x, y = x[keep], y[keep]
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {int(y.min())}..{int(y.max())}")
        if not torch.isfinite(x).all():
            raise ValueError("feats contain NaN or inf; they would poison the running statistics")
        return x, y

    def _batch_means(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        counts = torch.bincount(y, minlength=self.num_classes)
        sums = F.one_hot(y, self.num_classes).to(_F64).T @ x  # (K, M)
        return counts, sums / counts.clamp_min(1).unsqueeze(1).to(_F64)

    def update_source(self, feats: torch.Tensor, labels: torch.Tensor) -> None:
        """Add labelled photo features (N, M) with labels (N,) to the source centroids."""
        x, y = self._prepare(feats, labels, None)
        if y.numel() == 0:
            return
        nb, mb = self._batch_means(x, y)
        present = nb > 0
        if self.momentum is None:  # exact running mean over everything since reset
            n = self._src_n + nb
            frac = (nb.to(_F64) / n.clamp_min(1).to(_F64)).unsqueeze(1)
            self._src_mean += (mb - self._src_mean) * frac
        else:  # EMA per class present; the first sighting initialises
            m = self.momentum
            seen = self._src_n > 0
            ema = (1.0 - m) * self._src_mean + m * mb
            self._src_mean = torch.where((present & seen).unsqueeze(1), ema, self._src_mean)
            self._src_mean = torch.where((present & ~seen).unsqueeze(1), mb, self._src_mean)
            n = self._src_n + nb
        self._src_n = n
        self._cache.clear()

    def update_target(
        self, feats: torch.Tensor, pseudo_labels: torch.Tensor, selected: torch.Tensor | None = None
    ) -> None:
        """Add pseudo-labelled shape features (N, M) to the target statistics.

        ``selected`` (bool, N) keeps only the shapes chosen by selective
        pseudo-labelling; omit it when passing only the selected ones.
        Successive calls merge exactly (Chan et al.), so chunked and one-shot
        updates agree to rounding.
        """
        x, y = self._prepare(feats, pseudo_labels, selected)
        if y.numel() == 0:
            return
        nb, mb = self._batch_means(x, y)
        centred = x - mb[y]
        for k in torch.nonzero(nb, as_tuple=False).flatten().tolist():
            xk = centred[y == k]
            na, nbk = int(self._tgt_n[k]), int(nb[k])
            n = na + nbk
            delta = mb[k] - self._tgt_mean[k]
            self._tgt_m2[k] += xk.T @ xk + torch.outer(delta, delta) * (na * nbk / n)
            self._tgt_mean[k] += delta * (nbk / n)
            self._tgt_n[k] = n
        self._cache.clear()

    # ----------------------------------------------------------------- getters

    @property
    def source_counts(self) -> torch.Tensor:
        """(K,) int64: photos seen per class since :meth:`reset_source` (CPU)."""
        return self._src_n.clone()

    @property
    def target_counts(self) -> torch.Tensor:
        """(K,) int64: selected shapes per class since :meth:`reset_target` (CPU)."""
        return self._tgt_n.clone()

    def target_valid(self) -> torch.Tensor:
        """(K,) bool: classes with at least ``min_count`` selected shapes (their ``Sigma`` is used)."""
        return self._tgt_n >= self.min_count

    def valid(self) -> torch.Tensor:
        """(K,) bool: classes whose ``dmu`` is used (enough shapes and at least one photo)."""
        return self.target_valid() & (self._src_n > 0)

    def _out(self, name: str, dtype: torch.dtype, compute) -> torch.Tensor:
        key = (name, dtype)
        if key not in self._cache:
            self._cache[key] = compute().to(device=self.device, dtype=dtype)
        return self._cache[key]

    def source_means(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(K, M) photo centroids ``mu_s`` (Eq. 5); zero rows for classes not seen."""
        return self._out("mu_s", dtype, self._src_mean.clone)

    def target_means(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(K, M) selected-shape centroids ``mu_t``; zero rows for classes with no shape."""
        return self._out("mu_t", dtype, self._tgt_mean.clone)

    def dmu(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(K, M) ``mu_t - mu_s`` for valid classes, zero rows elsewhere (no shift)."""

        def compute() -> torch.Tensor:
            diff = self._tgt_mean - self._src_mean
            return torch.where(self.valid().unsqueeze(1), diff, torch.zeros_like(diff))

        return self._out("dmu", dtype, compute)

    def cov(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(K, M, M) target covariances (1/n), symmetric PSD and finite; zero for unused classes."""

        def compute() -> torch.Tensor:
            ok = self.target_valid()
            sig = self._tgt_m2 / self._tgt_n.clamp_min(1).to(_F64).view(-1, 1, 1)
            sig = 0.5 * (sig + sig.transpose(1, 2))
            if self.shrinkage > 0.0:
                a = self.shrinkage
                scale = torch.diagonal(sig, dim1=1, dim2=2).sum(1) / self.dim  # tr/M, >= 0
                eye = torch.eye(self.dim, dtype=_F64)
                sig = (1.0 - a) * sig + a * scale.view(-1, 1, 1) * eye
            return torch.where(ok.view(-1, 1, 1), sig, torch.zeros_like(sig))

        return self._out("cov", dtype, compute)

    # ------------------------------------------------------------- checkpoint

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The accumulators (CPU tensors), for resuming a run mid-round."""
        return {
            "src_n": self._src_n.clone(), "src_mean": self._src_mean.clone(),
            "tgt_n": self._tgt_n.clone(), "tgt_mean": self._tgt_mean.clone(), "tgt_m2": self._tgt_m2.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict`; the shapes must match this K and M."""
        k, m = self.num_classes, self.dim
        want = {"src_n": (k,), "src_mean": (k, m), "tgt_n": (k,), "tgt_mean": (k, m), "tgt_m2": (k, m, m)}
        for name, shape in want.items():
            if name not in state or tuple(state[name].shape) != shape:
                raise ValueError(f"state[{name!r}] must have shape {shape} for K={k}, M={m}")
        self._src_n = state["src_n"].to(_CPU, torch.int64).clone()
        self._src_mean = state["src_mean"].to(_CPU, _F64).clone()
        self._tgt_n = state["tgt_n"].to(_CPU, torch.int64).clone()
        self._tgt_mean = state["tgt_mean"].to(_CPU, _F64).clone()
        self._tgt_m2 = state["tgt_m2"].to(_CPU, _F64).clone()
        self._cache.clear()
