"""Validation a user can have, and keeping the best round on it.

The validation photos are labelled photos that are never trained on: given
with ``--val`` or carved from ``--source`` (:func:`carve`: seeded, per class,
``val_frac`` of each class's photos, at least one when a class has 3 or more).
Target labels and ``--queries`` never reach this module's choice.

The criterion (:data:`CRITERION`) is the First Tier of the validation photos
retrieving the source photos, ties broken by photo classification by the
nearest source class centroid on the unit sphere (each validation photo's
embedding takes the class whose source-photo centroid is closest in cosine).
FT comes first because it ranks rounds more finely than an accuracy that moves
in steps of one photo (``benchmarks/selection_study.py`` compares the criteria). With ``--val-shapes`` (labelled meshes of the source classes) the criterion is
photo-to-shape retrieval instead (:data:`CRITERION_SHAPES`). The same criterion is computed on the pretrained backbone's
pooled features (what ``ftspl export --pretrained`` serves, the study's "CNN"
row), so every round is reported beside the untrained baseline and the run can
say when adaptation did not pay off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CRITERION = "val photos: FT retrieving the source photos, tie-break nearest source-centroid accuracy (cosine)"
#: with ``--val-shapes``: the val photos rank the labelled val shapes, as a user's queries rank the gallery
CRITERION_SHAPES = "val photos retrieving --val-shapes: FT, tie-break NN (the 'acc' field)"


def carve(labels: list[int], paths: list, frac: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, val indices): per class, a seeded ``frac`` share (at least 1 when it has >= 3 photos)."""
    train_idx: list[int] = []
    val_idx: list[int] = []
    if frac <= 0:
        return list(range(len(labels))), []
    rng = np.random.default_rng([seed, 1415])
    lab = np.asarray(labels)
    for k in sorted(set(labels)):
        members = sorted(np.flatnonzero(lab == k).tolist(), key=lambda i: str(paths[i]))
        n_val = 0
        if len(members) >= 3:
            n_val = min(len(members) - 2, max(1, round(frac * len(members))))
        perm = rng.permutation(len(members))
        val_idx += [members[j] for j in perm[:n_val]]
        train_idx += [members[j] for j in perm[n_val:]]
    return sorted(train_idx), sorted(val_idx)


@dataclass(frozen=True)
class Score:
    acc: float
    ft: float
    n: int
    criterion: str = CRITERION

    def to_dict(self) -> dict:
        return {"acc": round(self.acc, 4), "FT": round(self.ft, 4), "n": self.n, "criterion": self.criterion}


def score(src: torch.Tensor, src_y: torch.Tensor, val: torch.Tensor, val_y: torch.Tensor, num_classes: int) -> Score:
    """The criterion on embeddings (any dimension): val photos against the source photos' class centroids."""
    from ftspl.engine.scoring.metrics import (
        format_metrics,
        pairwise_euclidean,
        retrieval_metrics,
    )

    s = F.normalize(src.float().cpu(), dim=1)
    v = F.normalize(val.float().cpu(), dim=1)
    sy, vy = src_y.cpu().long(), val_y.cpu().long()
    cent = torch.zeros(num_classes, s.shape[1]).index_add_(0, sy, s)
    cent = F.normalize(cent, dim=1)
    pred = (v @ cent.T).argmax(dim=1)
    acc = float((pred == vy).float().mean())
    d = pairwise_euclidean(v.numpy(), s.numpy())
    ft = format_metrics(retrieval_metrics(d, vy.numpy().astype(object), sy.numpy().astype(object)))["FT"]
    return Score(acc, ft, len(vy))


def score_shapes(val: torch.Tensor, val_y: torch.Tensor, shapes: torch.Tensor, shapes_y: torch.Tensor) -> Score:
    """Photo-to-shape retrieval of the val photos against the labelled val shapes (L2-normalised, Euclidean)."""
    from ftspl.engine.scoring.metrics import format_metrics, pairwise_euclidean, retrieval_metrics

    v = F.normalize(val.float().cpu(), dim=1).numpy()
    t = F.normalize(shapes.float().cpu(), dim=1).numpy()
    m = format_metrics(retrieval_metrics(pairwise_euclidean(v, t), val_y.cpu().numpy().astype(object),
                                         shapes_y.cpu().numpy().astype(object)))
    return Score(m["NN"], m["FT"], len(val_y), CRITERION_SHAPES)


def rank_key(val: dict) -> tuple[float, float]:
    """How validation scores order: FT first, then the accuracy (NN with --val-shapes)."""
    return (val["FT"], val["acc"])


def best_round(rounds: list[dict]) -> dict | None:
    """The round record with the best validation score (the earliest on ties); None without validation."""
    best = None
    for rec in rounds:
        v = rec.get("val")
        if not v:
            continue
        if best is None or rank_key(v) > rank_key(best["val"]):
            best = rec
    return best


def verdict(rounds: list[dict]) -> dict | None:
    """What the run's selection was and whether the adapted model beat the pretrained one on validation."""
    best = best_round(rounds)
    if best is None:
        return None
    base = best.get("val_baseline")
    better = base is None or rank_key(best["val"]) > rank_key(base)
    return {
        "criterion": best["val"].get("criterion", CRITERION),
        "best_round": best["round"],
        "why": f"highest validation FT {best['val']['FT']:.4f} (accuracy {best['val']['acc']:.4f}) "
               f"of {len(rounds)} rounds on {best['val']['n']} val photos",
        "best": best["val"],
        "pretrained": base,
        "adapted_better": bool(better),
    }


def verdict_line(v: dict | None) -> str | None:
    """One line for the user when the adapted model is not better than the pretrained one."""
    if not v or v["adapted_better"] or v.get("pretrained") is None:
        return None
    p, b = v["pretrained"], v["best"]
    return (f"the adapted model is NOT better than the pretrained CNN on validation "
            f"(acc {b['acc']:.3f} vs {p['acc']:.3f}, FT {b['FT']:.3f} vs {p['FT']:.3f}); "
            f"consider 'ftspl export --pretrained'")
