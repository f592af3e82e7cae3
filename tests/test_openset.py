"""Open-set calibration: the threshold, its AUROC, and storage bound to the model."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from ftspl.engine.errors import UsageError
from ftspl.engine.scoring.openset import (
    auroc,
    calibrate,
    distance_of,
    load_calibration,
    score_of,
    threshold_for_precision,
)


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    known = np.round(rng.normal(0.6, 0.2, 50), 1)  # rounded: many ties
    unknown = np.round(rng.normal(0.9, 0.2, 30), 1)
    y = np.r_[np.zeros(50), np.ones(30)]  # unknown is the positive class, scored by distance
    assert auroc(known, unknown) == pytest.approx(roc_auc_score(y, np.r_[known, unknown]))
    assert auroc(np.array([0.1, 0.2]), np.array([0.5])) == 1.0
    assert auroc(np.array([0.5]), np.array([0.1, 0.2])) == 0.0


def test_threshold_is_the_largest_distance_meeting_the_precision() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    known = np.array([True, True, True, False, True, False])
    # accepted up to 0.3: 3/3; 0.4: 3/4; 0.5: 4/5 = 0.8; 0.6: 4/6
    assert threshold_for_precision(d, known, 1.0) == 0.3
    assert threshold_for_precision(d, known, 0.8) == 0.5
    assert threshold_for_precision(d, known, 0.75) == 0.5
    assert threshold_for_precision(np.array([0.1, 0.2]), np.array([False, True]), 0.9) is None
    # photos at the same distance are accepted or refused together
    assert threshold_for_precision(np.array([0.1, 0.2, 0.2]), np.array([True, True, False]), 0.9) == 0.1


def test_calibrate_reports_what_it_chose() -> None:
    d = np.array([0.1, 0.2, 0.3, 0.9, 1.0])
    cal = calibrate(d, ["a", "a", "b", "zebra", "zebra"], {"a", "b"}, 0.95, "h1", "m1", "photos/")
    assert cal.max_distance == 0.3 and cal.known == 3 and cal.unknown == 2
    assert cal.auroc == 1.0 and cal.known_accepted == 1.0 and cal.unknown_rejected == 1.0
    with pytest.raises(UsageError, match="none of the photos' classes"):
        calibrate(d, ["x"] * 5, {"a"}, 0.95, "h1", "m1", "photos/")


def test_stored_threshold_is_bound_to_its_model(tmp_path) -> None:
    cal = calibrate(np.array([0.1, 0.5]), ["a", "z"], {"a"}, 0.95, "hash-1", "m1", "p/")
    cal.save(tmp_path)
    assert load_calibration(tmp_path, "hash-1") == cal
    assert load_calibration(tmp_path, "hash-2") is None  # another model: never applied
    assert load_calibration(tmp_path / "nowhere", "hash-1") is None


def test_score_and_distance_are_one_cut_in_two_units() -> None:
    for s in (-1.0, 0.0, 0.3, 0.99, 1.0):
        assert score_of(distance_of(s)) == pytest.approx(s)
    with pytest.raises(UsageError, match="--min-score"):
        distance_of(1.5)
