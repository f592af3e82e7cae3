"""Tests for ftspl.train.spl: each equation of FTSPL Section III-D on hand-checkable
data, the ablation registries, the incremental selection, and the issue's DONE
criterion (SPL beats nearest-centroid pseudo-labels on a synthetic domain shift).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.cluster.vq import kmeans2

from ftspl.engine.errors import UnknownKeyError
from ftspl.train import spl


def sigmoid(x: float) -> float:
    # softmax over two entries [-a, -b] gives [sigmoid(b - a), sigmoid(a - b)]
    return 1.0 / (1.0 + math.exp(-x))


# --- Eq. 5: source centroids ---------------------------------------------------------


def test_source_centroids_are_class_means() -> None:
    feats = np.array([[0.0, 1.0], [2.0, 3.0], [10.0, -1.0]])
    mu = spl.source_centroids(feats, np.array([0, 0, 1]), 2)
    np.testing.assert_allclose(mu, [[1.0, 2.0], [10.0, -1.0]])


def test_source_centroids_class_without_samples_is_named() -> None:
    feats = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"class 1 has no source samples"):
        spl.source_centroids(feats, np.array([0, 0, 2]), 3)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ([0, 3], r"\[0, 3\)"),
        ([0, -1], r"\[0, 3\)"),
        ([0.0, 1.0], "integers"),
        ([0], "shape"),
    ],
)
def test_source_centroids_rejects_bad_labels(labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spl.source_centroids(np.zeros((2, 2)), np.array(labels), 3)


# --- Eqs. 6 and 8: softmax of negative distances -----------------------------------------


def test_centroid_probs_hand_checked() -> None:
    # (0,0) is 5 away from (3,4) and 1 away from (0,1): softmax(-5, -1).
    p = spl.centroid_probs(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 1.0]]))
    np.testing.assert_allclose(p, [[sigmoid(-4), sigmoid(4)]])


def test_centroid_probs_rows_sum_to_one_and_are_stable() -> None:
    rng = np.random.default_rng(0)
    # Distances around 1e5: a naive exp(-d) would underflow to 0/0.
    feats = rng.normal(size=(7, 3)) * 1e5
    p = spl.centroid_probs(feats, rng.normal(size=(4, 3)) * 1e5)
    assert p.shape == (7, 4)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_centroid_probs_rejects_mismatched_dims_and_nan() -> None:
    with pytest.raises(ValueError, match="dimensions differ"):
        spl.centroid_probs(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        spl.centroid_probs(np.array([[np.nan, 0.0]]), np.zeros((2, 2)))


# --- K-means from the source centroids ----------------------------------------------------


def test_cluster_centroids_1d() -> None:
    data = np.array([[0.0], [1.0], [10.0], [11.0]])
    centres = spl.cluster_centroids(data, np.array([[2.0], [8.0]]))
    np.testing.assert_allclose(centres, [[0.5], [10.5]])


def test_cluster_centroids_runs_to_convergence() -> None:
    # A chain that needs several Lloyd steps: the result must be a fixed point
    # (scipy's kmeans2 alone stops after a fixed iteration count).
    rng = np.random.default_rng(1)
    data = np.concatenate(
        [rng.normal(c, 0.3, size=(30, 2)) for c in ((0, 0), (4, 0), (8, 0))]
    )
    init = np.array(
        [[0.0, 0.0], [3.0, 0.0], [5.0, 0.0]]
    )  # the middle cluster starts split
    one_step, _ = kmeans2(data, init, iter=1, minit="matrix")
    centres = spl.cluster_centroids(data, init)
    assert not np.allclose(one_step, centres)  # one Lloyd step is not enough here
    nearest = np.argmin(((data[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    means = np.stack([data[nearest == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(centres, means)
    np.testing.assert_allclose(np.sort(centres[:, 0]), [0, 4, 8], atol=0.3)


def test_cluster_centroids_empty_cluster_keeps_init_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = np.array([[0.0], [1.0], [2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's warning must not escape
        with caplog.at_level(logging.INFO, logger="ftspl.train.spl"):
            centres = spl.cluster_centroids(data, np.array([[1.5], [100.0]]))
    np.testing.assert_allclose(centres, [[1.0], [100.0]])
    assert "empty cluster" in caplog.text


# --- Eq. 7: Hungarian matching ----------------------------------------------------------


def test_match_clusters_recovers_known_permutation() -> None:
    rng = np.random.default_rng(2)
    src = rng.normal(size=(6, 4)) * 5
    perm = np.array([3, 0, 5, 1, 4, 2])  # cluster i sits at class perm[i]
    clusters = src[perm] + rng.normal(scale=0.01, size=src.shape)
    cluster_of_class = spl.match_clusters(clusters, src)
    assert cluster_of_class.dtype == np.int64
    np.testing.assert_array_equal(cluster_of_class, np.argsort(perm))
    np.testing.assert_allclose(clusters[cluster_of_class], src, atol=0.1)


def test_match_clusters_is_one_to_one_not_greedy() -> None:
    # Classes at 0 and 1, clusters at 0.6 and 2. Both classes are nearest to the
    # cluster at 0.6; the least total distance (0.6 + 1.0 < 2.0 + 0.4) gives
    # class 0 -> cluster 0 and class 1 -> cluster 1.
    got = spl.match_clusters(np.array([[0.6], [2.0]]), np.array([[0.0], [1.0]]))
    np.testing.assert_array_equal(got, [0, 1])
    got = spl.match_clusters(np.array([[2.0], [0.6]]), np.array([[0.0], [1.0]]))
    np.testing.assert_array_equal(got, [1, 0])


def test_match_clusters_needs_equal_counts() -> None:
    with pytest.raises(ValueError, match="as many clusters as classes"):
        spl.match_clusters(np.zeros((2, 1)), np.zeros((3, 1)))


# --- Eqs. 9 and 10: combination and labels --------------------------------------------------

# Source: class 0 at 0, class 1 at 4. Target: 1.0, 1.5, 6.0, 6.5. K-means from
# (0, 4) converges to (1.25, 6.25), matched to classes (0, 1).
SRC = np.array([[0.0], [4.0]])
SRC_Y = np.array([0, 1])
TGT = np.array([[1.0], [1.5], [6.0], [6.5]])


def test_spl_hand_checked() -> None:
    mu_t = spl.target_centroids(TGT, spl.source_centroids(SRC, SRC_Y, 2))
    np.testing.assert_allclose(mu_t, [[1.25], [6.25]])
    p = spl.spl_probs(TGT, SRC, SRC_Y, 2)
    # x = 1.5: p1 = softmax(-1.5, -2.5), p2 = softmax(-0.25, -4.75).
    np.testing.assert_allclose(
        p[1], [max(sigmoid(1), sigmoid(4.5)), max(sigmoid(-1), sigmoid(-4.5))]
    )
    np.testing.assert_allclose(p[1], [sigmoid(4.5), sigmoid(-1)])
    # x = 6.0: p1 = softmax(-6, -2), p2 = softmax(-4.75, -0.25).
    np.testing.assert_allclose(p[2], [sigmoid(-4), sigmoid(4.5)])
    labels, probs = spl.pseudo_label(TGT, SRC, SRC_Y, 2)
    assert labels.dtype == np.int64 and probs.dtype == np.float64
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    np.testing.assert_allclose(probs, p.max(axis=1))


def test_p_is_elementwise_max_of_p1_p2_rows_may_exceed_one() -> None:
    rng = np.random.default_rng(3)
    src = np.concatenate([rng.normal(c, 0.5, size=(10, 3)) for c in (0, 3, 6)])
    src_y = np.repeat(np.arange(3), 10)
    tgt = np.concatenate([rng.normal(c + 1.0, 0.5, size=(10, 3)) for c in (0, 3, 6)])
    mu_s = spl.source_centroids(src, src_y, 3)
    p1 = spl.centroid_probs(tgt, mu_s)
    p2 = spl.centroid_probs(tgt, spl.target_centroids(tgt, mu_s))
    labels, full = spl.pseudo_label(tgt, src, src_y, 3, return_full=True)
    assert full.shape == (30, 3)
    np.testing.assert_allclose(full, np.maximum(p1, p2))
    np.testing.assert_array_equal(labels, np.argmax(np.maximum(p1, p2), axis=1))
    # Not a distribution: the paper's score, used only for ranking.
    assert (full.sum(axis=1) > 1 + 1e-6).any()
    assert (full.sum(axis=1) >= 1 - 1e-12).all()


def test_labels_from_probs_ties_go_to_lowest_class() -> None:
    labels, probs = spl.labels_from_probs(np.array([[0.4, 0.4, 0.2], [0.1, 0.3, 0.9]]))
    np.testing.assert_array_equal(labels, [0, 2])
    np.testing.assert_allclose(probs, [0.4, 0.9])


# --- the --pseudo registry --------------------------------------------------------------------


def test_pseudo_labelers_registry() -> None:
    assert set(spl.PSEUDO_LABELERS) == {"classifier", "centroid", "spl"}
    inp = spl.PseudoInputs(
        TGT, SRC, SRC_Y, 2, target_logits=np.array([[2.0, 0.0]] * 3 + [[0.0, 1.0]])
    )
    labels, probs = spl.pseudo_label_with("classifier", inp)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1])
    np.testing.assert_allclose(probs, [sigmoid(2)] * 3 + [sigmoid(1)])
    # Centroid only: x = 1.0 -> softmax(-1, -3) -> class 0 with sigmoid(2).
    labels, probs = spl.pseudo_label_with("centroid", inp)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    assert probs[0] == pytest.approx(sigmoid(2))
    labels, probs = spl.pseudo_label_with("spl", inp)
    ref_labels, ref_probs = spl.pseudo_label(TGT, SRC, SRC_Y, 2)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(probs, ref_probs)


def test_classifier_labeler_needs_logits_of_right_shape() -> None:
    with pytest.raises(ValueError, match="needs target_logits"):
        spl.pseudo_label_with("classifier", spl.PseudoInputs(TGT, SRC, SRC_Y, 2))
    bad = spl.PseudoInputs(TGT, SRC, SRC_Y, 2, target_logits=np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"shape \(4, 2\)"):
        spl.pseudo_label_with("classifier", bad)


def test_unknown_keys_list_valid_ones() -> None:
    with pytest.raises(UnknownKeyError, match="centroid, classifier, spl"):
        spl.pseudo_label_with("kmeans", spl.PseudoInputs(TGT, SRC, SRC_Y, 2))
    with pytest.raises(UnknownKeyError, match="all, classwise, global"):
        spl.select(np.array([0]), np.array([1.0]), 1.0, method="random")


# --- incremental selection ----------------------------------------------------------------------

LABELS = np.array([0, 0, 0, 0, 1, 1])
PROBS = np.array([0.9, 0.1, 0.8, 0.5, 0.3, 0.7])


def test_select_classwise_hand_checked() -> None:
    # fraction 0.5: class 0 (4 shapes) -> 2 best (idx 0, 2); class 1 (2) -> idx 5.
    got = spl.select(LABELS, PROBS, 0.5)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [0, 2, 5])
    assert spl.select(LABELS, PROBS, 0.0).size == 0
    np.testing.assert_array_equal(spl.select(LABELS, PROBS, 1.0), np.arange(6))


@pytest.mark.parametrize("method", ["classwise", "global", "all"])
def test_selection_fraction_bounds(method: str) -> None:
    np.testing.assert_array_equal(spl.select(LABELS, PROBS, 1.0, method), np.arange(6))
    with pytest.raises(ValueError, match="fraction"):
        spl.select(LABELS, PROBS, 1.5, method)


def test_select_counts_and_best_per_class_over_rounds() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 4, size=57)
    probs = rng.random(57)
    rounds, previous = 7, np.empty(0, np.int64)
    for l in range(rounds + 1):
        f = l / rounds
        got = spl.select(labels, probs, f)
        np.testing.assert_array_equal(got, np.sort(got))
        for k in range(4):
            members = np.flatnonzero(labels == k)
            chosen = np.intersect1d(got, members)
            assert chosen.size == math.floor(f * members.size + 0.5 + 1e-9)
            rest = np.setdiff1d(members, chosen)
            if chosen.size and rest.size:
                assert probs[chosen].min() >= probs[rest].max()
        assert np.isin(previous, got).all()  # rounds only add shapes
        previous = got


def test_select_rounds_halves_up() -> None:
    # 3 shapes at fraction 0.5 -> 1.5 -> 2 (half up, not to even: 2.5 -> 3 below).
    got = spl.select(np.zeros(3, np.int64), np.array([0.2, 0.9, 0.5]), 0.5)
    np.testing.assert_array_equal(got, [1, 2])
    got = spl.select(np.zeros(5, np.int64), np.arange(5.0), 0.5)  # 2.5 -> 3
    np.testing.assert_array_equal(got, [2, 3, 4])


def test_select_ties_break_by_index() -> None:
    probs = np.array([0.5, 0.5, 0.5, 0.5])
    np.testing.assert_array_equal(spl.select(np.zeros(4, np.int64), probs, 0.5), [0, 1])
    np.testing.assert_array_equal(
        spl.select(np.zeros(4, np.int64), probs, 0.5, "global"), [0, 1]
    )


def test_global_and_classwise_differ_on_imbalanced_classes() -> None:
    # Class 0 is "easy" (8 confident shapes), class 1 "hard" (2 unsure ones).
    labels = np.array([0] * 8 + [1] * 2)
    probs = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.4, 0.3])
    glob = spl.select(labels, probs, 0.5, "global")
    cw = spl.select(labels, probs, 0.5, "classwise")
    np.testing.assert_array_equal(glob, [0, 1, 2, 3, 4])  # class 1 starved
    np.testing.assert_array_equal(cw, [0, 1, 2, 3, 8])  # 4 of class 0, 1 of class 1
    np.testing.assert_array_equal(spl.select(labels, probs, 0.0, "all"), np.arange(10))


def test_select_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="same length"):
        spl.select(np.zeros(3, np.int64), np.zeros(2), 0.5)


# --- DONE criterion: SPL beats nearest centroid under domain shift ------------------------------


def shifted_problem(
    seed: int, k: int = 5, d: int = 24, sep: float = 4.0, shift: float = 0.8
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian classes (pairwise centroid distance ~ ``sep``); the target domain
    is the source moved by a common offset of length ``shift * sep`` plus a
    per-class perturbation of ``0.15 * sep``, both inside the span of the class
    centroids (an offset orthogonal to it would not change nearest-centroid
    labels). Noise 0.5 per dimension keeps the target clusters well separated.
    """
    rng = np.random.default_rng(seed)
    mu = rng.normal(size=(k, d)) * sep / np.sqrt(2 * d)
    basis = np.linalg.qr((mu - mu.mean(0)).T)[0]  # (d, k) orthonormal
    offset = basis @ rng.normal(size=k)
    offset *= shift * sep / np.linalg.norm(offset)
    per_class = rng.normal(size=(k, k)) @ basis.T
    per_class *= 0.15 * sep / np.linalg.norm(per_class, axis=1, keepdims=True)
    ys, yt = np.repeat(np.arange(k), 40), np.repeat(np.arange(k), 60)
    xs = mu[ys] + rng.normal(scale=0.5, size=(ys.size, d))
    xt = mu[yt] + offset + per_class[yt] + rng.normal(scale=0.5, size=(yt.size, d))
    return xs, ys, xt, yt


def test_spl_beats_nearest_centroid_on_synthetic_shift() -> None:
    acc = []
    for seed in range(5):
        xs, ys, xt, yt = shifted_problem(seed)
        inp = spl.PseudoInputs(xt, xs, ys, 5)
        acc.append(
            [
                np.mean(spl.pseudo_label_with(m, inp)[0] == yt)
                for m in ("centroid", "spl")
            ]
        )
    centroid, ours = np.array(acc).T
    assert centroid.mean() < 0.8, "the shift must make nearest-centroid labels poor"
    assert (ours > centroid + 0.05).all(), (centroid, ours)
    assert ours.mean() > centroid.mean() + 0.15, (centroid, ours)


# --- layering -----------------------------------------------------------------------------------


def test_importable_without_torch() -> None:
    code = "import sys, ftspl.train.spl; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
