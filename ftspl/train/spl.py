"""Selective pseudo-labeling (SPL) of unlabeled 3D shapes (FTSPL, Section III-D).

Why: the FTSPL loss needs per-class centroids and covariances of 3D-shape
features, but 3D shapes carry no labels. Labels from the 2D-trained classifier
are biased towards the image domain, so the paper combines two views of the
target features:

* **nearest source centroid** (Eqs. 5-6): ``p1(k|x) = softmax_k(-||f_t - mu_s^k||)``,
  which trusts shapes that look like the 2D images;
* **cluster analysis** (Eqs. 7-8): K-means on the target features, started at
  the source centroids, clusters matched one-to-one to classes by the Hungarian
  method; ``p2(k|x) = softmax_k(-||f_t - mu_t^k||)``, which follows the 3D
  domain's own structure however far it lies from the images;

and takes ``p = max(p1, p2)`` elementwise (Eq. 9), label ``argmax_k p`` (Eq. 10).
Rows of ``p`` may sum to more than 1: it is the paper's score, not a
distribution, and is only used to rank shapes for selection.

**Incremental category-wise selection**: at round ``l`` of ``L`` only the
``round(l/L * n_k)`` most probable shapes of each pseudo-class ``k`` are used,
so easy classes cannot crowd out hard ones (``select``). The ablations
``--pseudo classifier|centroid|spl`` and ``--selection classwise|global|all``
are the registries :data:`PSEUDO_LABELERS` and :data:`SELECTIONS`.

This module is numpy + scipy only (no torch) so it runs on CPU and is testable
in isolation; the trainer passes features as numpy arrays.

K-means choice: ``scipy.cluster.vq.kmeans2(minit='matrix')`` started at the
source centroids, stepped one Lloyd iteration at a time until the centres stop
moving (scipy itself runs a fixed number of iterations with no convergence
test). Empty clusters: scipy keeps an empty cluster's centre where it was (so a
cluster that is empty from the start stays at its source centroid) and warns;
we keep that behaviour -- a centre at the source centroid is the natural
fallback, as it reduces p2 to p1 for that class -- and log the warning instead
of letting it escape. No randomness is involved, so results are deterministic.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist
from scipy.special import softmax

from ftspl.engine.errors import UnknownKeyError

log = logging.getLogger(__name__)

#: Upper bound on Lloyd iterations; K-means from the source centroids usually
#: converges in well under 30 on real features.
KMEANS_MAX_ITER = 100

# --- validation helpers --------------------------------------------------------


def _as_feats(x: np.ndarray, name: str) -> np.ndarray:
    """A finite 2-D float64 array (n, d) with n >= 1, or a ValueError naming ``name``."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array (n, d), got shape {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf; check the feature extractor")
    return a


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _same_dim(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{what}: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})"
        )


# --- the equations ---------------------------------------------------------------


def source_centroids(
    source_feats: np.ndarray, source_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Eq. 5: the mean 2D-image feature of each class, shape (K, d).

    A class without source samples has no centroid, and silently inventing one
    would corrupt both p1 and the K-means start, so it is an error.
    """
    feats = _as_feats(source_feats, "source_feats")
    k = _check_num_classes(num_classes)
    labels = np.asarray(source_labels)
    if labels.shape != (feats.shape[0],):
        raise ValueError(
            f"source_labels must have shape ({feats.shape[0]},), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"source_labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(
            f"source_labels must lie in [0, {k}); found {labels.min()}..{labels.max()}"
        )
    counts = np.bincount(labels, minlength=k)
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise ValueError(
            f"class {int(empty[0])} has no source samples (empty classes: {empty.tolist()}); "
            "every class needs at least one labelled 2D image"
        )
    sums = np.zeros((k, feats.shape[1]))
    np.add.at(sums, labels, feats)
    return sums / counts[:, None]


def centroid_probs(feats: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Eqs. 6 and 8: ``softmax_k(-||f - c_k||)``, shape (n, K); rows sum to 1.

    scipy's softmax subtracts the row maximum first, so large distances (raw,
    unnormalised features) do not underflow to 0/0.
    """
    f = _as_feats(feats, "feats")
    c = _as_feats(centroids, "centroids")
    _same_dim(f, c, "centroid_probs")
    return softmax(-cdist(f, c, "euclidean"), axis=1)


def cluster_centroids(
    target_feats: np.ndarray,
    init_centroids: np.ndarray,
    max_iter: int = KMEANS_MAX_ITER,
) -> np.ndarray:
    """K-means centres of the target features, started at ``init_centroids`` (K, d).

    K is ``len(init_centroids)``. Row i of the result is the centre that started
    at ``init_centroids[i]``; clusters can still drift to other classes, which
    :func:`match_clusters` resolves. Empty clusters keep their previous centre
    (see the module docstring). Deterministic: no random initialisation.
    """
    data = _as_feats(target_feats, "target_feats")
    centres = _as_feats(init_centroids, "init_centroids")
    _same_dim(data, centres, "cluster_centroids")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    n_empty_warnings = 0
    for it in range(1, max_iter + 1):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            new, _ = kmeans2(data, centres, iter=1, minit="matrix", missing="warn")
        n_empty_warnings += sum("clusters is empty" in str(w.message) for w in caught)
        converged = np.array_equal(new, centres)
        centres = new
        if converged:
            break
    else:
        log.info(
            "k-means stopped after max_iter=%d iterations without converging", max_iter
        )
    if n_empty_warnings:
        log.info(
            "k-means: an empty cluster kept its previous centre in %d of %d iterations",
            n_empty_warnings,
            it,
        )
    return centres


def match_clusters(
    cluster_centers: np.ndarray, source_centroids: np.ndarray
) -> np.ndarray:
    """Eq. 7: one-to-one cluster-to-class matching of least total distance.

    Returns ``cluster_of_class`` (K,) int64: class k is matched to cluster
    ``cluster_of_class[k]``, so ``cluster_centers[cluster_of_class]`` is the
    target centroid of each class in class order (``mu_t^k`` of Eq. 8). Solved
    exactly by the Hungarian method (``scipy.optimize.linear_sum_assignment``).
    """
    t = _as_feats(cluster_centers, "cluster_centers")
    s = _as_feats(source_centroids, "source_centroids")
    _same_dim(t, s, "match_clusters")
    if t.shape[0] != s.shape[0]:
        raise ValueError(
            f"match_clusters needs as many clusters as classes ({t.shape[0]} vs {s.shape[0]})"
        )
    # Rows = classes, columns = clusters: col_ind[k] is class k's cluster.
    rows, cols = linear_sum_assignment(cdist(s, t, "euclidean"))
    cluster_of_class = np.empty(s.shape[0], dtype=np.int64)
    cluster_of_class[rows] = cols
    return cluster_of_class


def target_centroids(
    target_feats: np.ndarray, src_centroids: np.ndarray, max_iter: int = KMEANS_MAX_ITER
) -> np.ndarray:
    """``mu_t^k`` (K, d): K-means from the source centroids, then Hungarian matching."""
    centres = cluster_centroids(target_feats, src_centroids, max_iter=max_iter)
    return centres[match_clusters(centres, src_centroids)]


def spl_probs(
    target_feats: np.ndarray,
    source_feats: np.ndarray,
    source_labels: np.ndarray,
    num_classes: int,
    max_iter: int = KMEANS_MAX_ITER,
) -> np.ndarray:
    """Eq. 9: ``p = max(p1, p2)`` elementwise, shape (n, K); rows may sum to > 1."""
    mu_s = source_centroids(source_feats, source_labels, num_classes)
    p1 = centroid_probs(target_feats, mu_s)
    p2 = centroid_probs(target_feats, target_centroids(target_feats, mu_s, max_iter))
    return np.maximum(p1, p2)


def labels_from_probs(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 10: ``(argmax_k p, p[chosen])``; ties go to the lowest class index."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(
            f"probabilities must be a 2-D array (n, K), got shape {p.shape}"
        )
    labels = np.argmax(p, axis=1).astype(np.int64)
    return labels, p[np.arange(p.shape[0]), labels]


def pseudo_label(
    target_feats: np.ndarray,
    source_feats: np.ndarray,
    source_labels: np.ndarray,
    num_classes: int,
    *,
    return_full: bool = False,
    max_iter: int = KMEANS_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """SPL pseudo-labels (Eqs. 5-10) of the target (3D-shape) features.

    Returns ``(labels, probs)``: labels (n,) int64 and probs (n,) float64, the
    chosen label's score ``p(y_hat|x)``; with ``return_full=True`` probs is the
    whole (n, K) matrix ``p`` instead.
    """
    p = spl_probs(target_feats, source_feats, source_labels, num_classes, max_iter)
    labels, chosen = labels_from_probs(p)
    return labels, (p if return_full else chosen)


# --- the --pseudo ablation ---------------------------------------------------------


@dataclass(frozen=True)
class PseudoInputs:
    """Everything any pseudo-labeler may need; one object so all share a signature.

    ``target_logits`` (n, K) are the classifier's outputs on the target
    features; only the "classifier" labeler uses them.
    """

    target_feats: np.ndarray
    source_feats: np.ndarray
    source_labels: np.ndarray
    num_classes: int
    target_logits: np.ndarray | None = None
    max_iter: int = KMEANS_MAX_ITER


def _classifier_probs(inp: PseudoInputs) -> np.ndarray:
    """Softmax of the 2D-trained classifier's logits (the DLEA-style baseline)."""
    if inp.target_logits is None:
        raise ValueError(
            "the 'classifier' pseudo-labeler needs target_logits; pass the classifier's outputs"
        )
    z = np.asarray(inp.target_logits, dtype=np.float64)
    k = _check_num_classes(inp.num_classes)
    n = np.asarray(inp.target_feats).shape[0]
    if z.shape != (n, k):
        raise ValueError(f"target_logits must have shape ({n}, {k}), got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("target_logits contains NaN or inf")
    return softmax(z, axis=1)


def _centroid_only_probs(inp: PseudoInputs) -> np.ndarray:
    """p1 alone (Eq. 6): nearest source centroid."""
    mu_s = source_centroids(inp.source_feats, inp.source_labels, inp.num_classes)
    return centroid_probs(inp.target_feats, mu_s)


def _spl_probs(inp: PseudoInputs) -> np.ndarray:
    return spl_probs(
        inp.target_feats,
        inp.source_feats,
        inp.source_labels,
        inp.num_classes,
        inp.max_iter,
    )


#: ``--pseudo``: each maps :class:`PseudoInputs` to an (n, K) score matrix.
PSEUDO_LABELERS: dict[str, Callable[[PseudoInputs], np.ndarray]] = {
    "classifier": _classifier_probs,
    "centroid": _centroid_only_probs,
    "spl": _spl_probs,
}


def pseudo_label_with(
    method: str, inputs: PseudoInputs
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, probs)`` from the ``--pseudo`` method ``method`` (probs = chosen label's score)."""
    try:
        fn = PSEUDO_LABELERS[method]
    except KeyError:
        raise UnknownKeyError("pseudo-labeler", method, PSEUDO_LABELERS) from None
    return labels_from_probs(fn(inputs))


# --- incremental selection (the --selection ablation) ------------------------------


def _count(fraction: float, n: int) -> int:
    """``round(fraction * n)``, halves rounded up (not to even) so counts grow monotonically.

    The tiny epsilon absorbs float error in ``l / L * n`` (e.g. 0.7 * 5).
    """
    return min(n, math.floor(fraction * n + 0.5 + 1e-9))


def _ranked(indices: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``indices`` sorted by descending prob, ties by ascending index (stable)."""
    indices = np.sort(indices)
    order = np.argsort(-probs[indices], kind="stable")
    return indices[order]


def _check_selection_inputs(
    labels: np.ndarray, probs: np.ndarray, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.shape != labels.shape:
        raise ValueError(
            f"labels and probs must be 1-D of the same length, got {labels.shape} and {probs.shape}"
        )
    if np.isnan(probs).any():
        raise ValueError("probs contains NaN")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1] (round l / L), got {fraction}")
    return labels, probs


def select_classwise(
    labels: np.ndarray, probs: np.ndarray, fraction: float
) -> np.ndarray:
    """The paper's selection: top ``round(fraction * n_k)`` of every pseudo-class k."""
    labels, probs = _check_selection_inputs(labels, probs, fraction)
    picked = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        picked.append(_ranked(members, probs)[: _count(fraction, members.size)])
    return np.sort(np.concatenate(picked or [np.empty(0, np.int64)])).astype(np.int64)


def select_global(labels: np.ndarray, probs: np.ndarray, fraction: float) -> np.ndarray:
    """Plain easy-to-hard: top ``round(fraction * n)`` overall, ignoring class balance."""
    labels, probs = _check_selection_inputs(labels, probs, fraction)
    ranked = _ranked(np.arange(labels.size), probs)
    return np.sort(ranked[: _count(fraction, labels.size)]).astype(np.int64)


def select_all(labels: np.ndarray, probs: np.ndarray, fraction: float) -> np.ndarray:
    """No selection: every shape, whatever the round (``fraction`` is only validated)."""
    labels, probs = _check_selection_inputs(labels, probs, fraction)
    return np.arange(labels.size, dtype=np.int64)


#: ``--selection``: each maps (labels, probs, fraction) to sorted int64 indices.
SELECTIONS: dict[str, Callable[[np.ndarray, np.ndarray, float], np.ndarray]] = {
    "classwise": select_classwise,
    "global": select_global,
    "all": select_all,
}


def select(
    labels: np.ndarray, probs: np.ndarray, fraction: float, method: str = "classwise"
) -> np.ndarray:
    """Indices (sorted, int64) of the shapes to train on at ``fraction = l / L``."""
    try:
        fn = SELECTIONS[method]
    except KeyError:
        raise UnknownKeyError("selection", method, SELECTIONS) from None
    return fn(labels, probs, fraction)
