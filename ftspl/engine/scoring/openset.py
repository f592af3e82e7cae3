"""Open-set answers: "none of my models" when a photo's nearest shape is too far away.

A retrieval index always returns its ten nearest shapes, even for a photo of an
object the library does not hold. Calibration turns the nearest-shape distance
into a yes/no: from labelled photos (a photo whose class has no shape in the
gallery counts as *unknown*), it picks the largest distance ``t`` such that, of
the photos whose nearest shape lies within ``t``, at least ``precision`` are
known ones. A query whose best hit is farther than ``t`` is answered "no match".

The threshold is stored beside the index (``calibration.json``) and bound to the
model that produced the embeddings: another model's threshold is never applied.
Scores: embeddings are L2-normalised, so a Euclidean distance ``d`` is the
cosine similarity ``1 - d^2 / 2``; ``--min-score`` and ``--max-distance`` are
the same cut in two units.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ftspl.engine.errors import IndexStateError, UsageError
from ftspl.engine.files import atomic_write_bytes

log = logging.getLogger(__name__)

CALIBRATION_NAME = "calibration.json"
DEFAULT_PRECISION = 0.95


def score_of(distance: float | np.ndarray) -> float | np.ndarray:
    """Cosine similarity of two unit vectors at Euclidean ``distance``."""
    return 1.0 - np.square(distance) / 2.0


def distance_of(score: float) -> float:
    """The Euclidean distance between unit vectors of cosine similarity ``score``."""
    if not -1.0 <= score <= 1.0:
        raise UsageError(f"--min-score must lie in [-1, 1] (a cosine similarity), got {score}")
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * score)))


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a known photo's nearest distance < an unknown one's), ties counting half (Mann-Whitney U)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    allv = np.concatenate([known, unknown])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv), np.float64)
    ranks[order] = np.arange(1, len(allv) + 1)
    for v in np.unique(allv):  # average ranks of ties
        tie = allv == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    # unknown photos should rank high (far): U counts pairs where unknown > known
    u = ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def threshold_for_precision(nearest: np.ndarray, is_known: np.ndarray, precision: float) -> float | None:
    """Largest distance ``t`` with ``known / accepted >= precision`` among photos at ``d <= t``.

    None when even the closest photo's decision misses the precision (nothing
    can be accepted at that precision).
    """
    if not 0.0 < precision <= 1.0:
        raise UsageError(f"precision must lie in (0, 1], got {precision}")
    nearest, is_known = np.asarray(nearest, np.float64), np.asarray(is_known, bool)
    order = np.argsort(nearest, kind="mergesort")
    d, k = nearest[order], is_known[order]
    # accept everything up to and including each distinct distance
    last = np.r_[d[1:] != d[:-1], True]
    cum_known = np.cumsum(k)[last]
    cum_all = np.arange(1, len(d) + 1)[last]
    ok = cum_known / cum_all >= precision
    if not ok.any():
        return None
    return float(d[last][np.flatnonzero(ok)[-1]])


@dataclass(frozen=True)
class Calibration:
    """A stored open-set threshold and how it was obtained."""

    max_distance: float
    precision: float  #: the precision on known photos it was chosen for
    model_hash: str
    model_id: str
    photos: str  #: the calibration folder
    known: int
    unknown: int
    auroc: float | None
    known_accepted: float  #: share of known calibration photos within the threshold
    unknown_rejected: float | None  #: share of unknown ones beyond it (None without unknowns)

    @property
    def min_score(self) -> float:
        return float(score_of(self.max_distance))

    def save(self, index_dir: Path) -> Path:
        path = Path(index_dir) / CALIBRATION_NAME
        atomic_write_bytes(path, json.dumps(asdict(self), indent=1, sort_keys=True).encode())
        return path


def calibrate(nearest: np.ndarray, labels: list[str], gallery_labels: set[str], precision: float,
              model_hash: str, model_id: str, photos: str) -> Calibration:
    """Fit the threshold on labelled photos' nearest-shape distances."""
    is_known = np.array([lab in gallery_labels for lab in labels], bool)
    if not is_known.any():
        raise UsageError(f"{photos}: none of the photos' classes is in the index; "
                         "calibrate with photos of classes the library holds (and a few it does not)")
    t = threshold_for_precision(nearest, is_known, precision)
    if t is None:
        raise UsageError(f"{photos}: no distance threshold reaches {precision:.0%} precision on known photos; "
                         "lower --precision or add labelled photos")
    unknown = ~is_known
    return Calibration(
        max_distance=t, precision=precision, model_hash=model_hash, model_id=model_id, photos=photos,
        known=int(is_known.sum()), unknown=int(unknown.sum()),
        auroc=None if not unknown.any() else auroc(nearest[is_known], nearest[unknown]),
        known_accepted=float((nearest[is_known] <= t).mean()),
        unknown_rejected=None if not unknown.any() else float((nearest[unknown] > t).mean()),
    )


def load_calibration(index_dir: Path, model_hash: str) -> Calibration | None:
    """The index's threshold for this model; None when there is none or it belongs to another model."""
    path = Path(index_dir) / CALIBRATION_NAME
    if not path.exists():
        return None
    try:
        cal = Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise IndexStateError(f"{path}: unreadable calibration ({exc}); run 'ftspl eval PHOTOS --calibrate' again") from None
    if cal.model_hash != model_hash:
        log.warning("%s: calibrated for model %s, not the active one; ignoring it (calibrate again)", path, cal.model_id)
        return None
    return cal


def calibrate_folder(root: Path, home, runtime=None, precision: float = DEFAULT_PRECISION) -> Calibration:
    """``ftspl eval PHOTOS --calibrate``: fit on ``PHOTOS/<label>/*`` and store it with the index."""
    from ftspl.engine.index.library import Library
    from ftspl.engine.model.encoders import RuntimeConfig
    from ftspl.engine.scoring.evaluate import embed_labelled, gallery_of
    from ftspl.engine.scoring.metrics import pairwise_euclidean

    lib = Library(home, runtime or RuntimeConfig())
    emb, labels, _failed = embed_labelled(root, lib)
    _ids, gallery, glabels = gallery_of(lib)
    if not len(gallery):
        raise IndexStateError(f"{lib.dir}: the index is empty; run 'ftspl index add FOLDER' first")
    nearest = pairwise_euclidean(emb, gallery).min(axis=1)
    cal = calibrate(nearest, labels, {g for g in glabels if g is not None}, precision,
                    lib.manifest.model_hash, lib.manifest.model_id, str(root))
    cal.save(lib.dir)
    return cal
