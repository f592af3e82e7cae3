"""The label-free model-selection criteria: each moves the way its definition says."""

import math

import torch

from ftspl.train.unsupervised import centroid_scores, criteria, snd


def _clusters(spread: float, n_per: int = 20, k: int = 4, dim: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, dim, generator=g)
    return torch.cat([c + spread * torch.randn(n_per, dim, generator=g) for c in centres])


def test_snd_is_higher_for_tight_clusters_than_for_noise():
    # tight clusters: each shape's similarity mass spreads evenly over its 19 cluster mates (entropy log 19);
    # scattered points: the mass sits on one or two nearest neighbours (low entropy)
    tight, loose = snd(_clusters(0.01)), snd(_clusters(3.0))
    assert math.isclose(tight, math.log(19), rel_tol=1e-3)
    assert loose < tight - 1.0


def test_centroid_entropy_and_margin_follow_the_distance_to_the_centroids():
    g = torch.Generator().manual_seed(1)
    src_y = torch.arange(4).repeat_interleave(10)
    centres = torch.eye(4, 8) * 3
    source = centres[src_y] + 0.1 * torch.randn(40, 8, generator=g)
    near = centres.repeat_interleave(5, 0) + 0.1 * torch.randn(20, 8, generator=g)
    far = torch.randn(20, 8, generator=g)
    a, b = centroid_scores(source, src_y, near, 4), centroid_scores(source, src_y, far, 4)
    assert a["centroid_entropy"] < b["centroid_entropy"] and a["centroid_margin"] > b["centroid_margin"]


def test_absent_classes_are_ignored_and_values_are_rounded():
    src_y = torch.tensor([0, 0, 2, 2])
    source = torch.tensor([[1.0, 0], [1, 0.1], [0, 1], [0.1, 1]])
    out = criteria(source, src_y, torch.tensor([[1.0, 0.05], [0.02, 1]]), num_classes=3)
    assert set(out) == {"snd", "centroid_entropy", "centroid_margin"}
    assert all(round(v, 5) == v for v in out.values())
    assert out["centroid_margin"] > 0.5
