"""Tests for ftspl.engine.scoring.metrics: hand-worked cases plus properties.

The hand-worked values follow the MI3DOR MATLAB scorer's definitions (see the
module docstring of ftspl.engine.scoring.metrics); the comments show the arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftspl.engine.scoring.metrics import (
    SCALAR_METRICS,
    _stable_argsort,
    format_metrics,
    pr_curve,
    retrieval_metrics,
)

# --- The hand-worked case ----------------------------------------------------
# Gallery g0..g5 with labels [0, 0, 0, 1, 1, 2]: class sizes 3, 2, 1; T_max = 3.
GALLERY = [0, 0, 0, 1, 1, 2]
QUERIES = [0, 1]
DISTANCES = np.array(
    [
        # q0 (label 0): ranking g3 g0 g1 g5 g2 g4 -> relevance [0,1,1,0,1,0]
        [0.2, 0.3, 0.5, 0.1, 0.6, 0.4],
        # q1 (label 1): ranking g4 g0 g5 g3 g1 g2 -> relevance [1,0,0,1,0,0]
        [0.2, 0.5, 0.6, 0.4, 0.1, 0.3],
    ]
)
INV_LOG2_3 = 1 / math.log2(3)


def test_hand_worked_case() -> None:
    m = retrieval_metrics(DISTANCES, QUERIES, GALLERY)
    # NN: q0's top item is irrelevant, q1's relevant -> (0 + 1) / 2.
    assert m["NN"] == pytest.approx(0.5)
    # FT: q0 tau=3, top 3 [0,1,1] -> 2/3; q1 tau=2, top 2 [1,0] -> 1/2.
    assert m["FT"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # ST (top 2*tau-1): q0 top 5 [0,1,1,0,1] -> 3/3; q1 top 3 [1,0,0] -> 1/2.
    # (With 2*tau, q1's hit at rank 4 would give 2/2: this pins the "-1".)
    assert m["ST"] == pytest.approx((1 + 1 / 2) / 2)
    # DCG truncated at rank tau, gains 1, 1/log2(2)=1, 1/log2(3):
    # q0: (1 + 1/log2 3) / (1 + 1 + 1/log2 3); q1: 1 / (1 + 1).
    dcg_q0 = (1 + INV_LOG2_3) / (2 + INV_LOG2_3)
    assert m["DCG"] == pytest.approx((dcg_q0 + 0.5) / 2)
    # ANMRR: q0 S=min(12, 6)=6, r=[7,2,3] -> mean 4, (4-1.5-0.5)/(6-1.5+0.5)=2/5.
    #        (MPEG-7 would credit the rank-5 hit and give 4/15: pins the window.)
    #        q1 S=min(8, 6)=6, r=[1,7] -> mean 4, (4-1-0.5)/(6-1+0.5)=5/11.
    assert m["ANMRR"] == pytest.approx((2 / 5 + 5 / 11) / 2)
    # PR: hits per rank over both queries [1,1,1,1,1,0], cumulative s=[1..5,5],
    # 5 relevant in all: P_K = s/(2K) = [.5,.5,.5,.5,.5,5/12], R_K = s/5.
    np.testing.assert_allclose(m["precision"], [0.5] * 5 + [5 / 12])
    np.testing.assert_allclose(m["recall"], [0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    # AUC: four steps of 0.2 at precision 0.5, last step has width 0 -> 0.4.
    assert m["AUC"] == pytest.approx(0.4)
    # F over the top min(20, 6)=6: s=5, P=5/12, R=1 -> 2PR/(P+R) = 10/17.
    assert m["F"] == pytest.approx(10 / 17)
    assert m["n_skipped"] == 0


def test_f_measure_cut_off() -> None:
    # Top 3: q0 [0,1,1] + q1 [1,0,0] = 3 hits; P = 3/(2*3) = 1/2, R = 3/5;
    # F = 2 * (1/2) * (3/5) / (1/2 + 3/5) = 6/11.
    m = retrieval_metrics(DISTANCES, QUERIES, GALLERY, f_top_k=3)
    assert m["F"] == pytest.approx(6 / 11)


def test_f_measure_top_20_of_a_larger_gallery() -> None:
    # 1 query of class 0; gallery of 30 ranked in gallery order: class-0 items
    # at ranks 1,3,...,19 and 21..25. The top 20 holds 10 of the 15 relevant:
    # P = 10/20, R = 10/15.
    labels = np.array([0, 1] * 10 + [0] * 5 + [1] * 5)
    distances = np.arange(30, dtype=float)[None, :]
    m = retrieval_metrics(distances, [0], labels)
    p, r = 10 / 20, 10 / 15
    assert m["F"] == pytest.approx(2 * p * r / (p + r))


def test_perfect_ranking() -> None:
    gallery = np.array([0, 0, 1, 1, 1, 2])
    queries = np.array([0, 1, 2, 1])
    distances = (queries[:, None] != gallery[None, :]).astype(float)
    m = retrieval_metrics(distances, queries, gallery)
    for key in ("NN", "FT", "ST", "DCG"):
        assert m[key] == pytest.approx(1.0), key
    assert m["ANMRR"] == pytest.approx(0.0)
    # Perfect recall reaches 1 at rank max(tau); precision then only falls.
    assert m["recall"][2] == pytest.approx(1.0)


def test_worst_ranking() -> None:
    # Query of class 0: both class-0 items ranked last -> relevance [0,0,0,0,1,1].
    gallery = [0, 0, 1, 1, 1, 1]
    distances = np.array([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    m = retrieval_metrics(distances, [0], gallery)
    assert (m["NN"], m["FT"], m["ST"], m["DCG"]) == (0.0, 0.0, 0.0, 0.0)
    # Every position of the top tau is a miss: r = [S+1, S+1] -> NMRR = 1.
    assert m["ANMRR"] == pytest.approx(1.0)
    # P_K = [0,0,0,0,1/5,2/6], R_K = [0,0,0,0,1/2,1]; trapezoids of width 1/2
    # from rank 4 to 5 and from 5 to 6: 1/2*(0+1/5)/2 + 1/2*(1/5+1/3)/2 = 11/60.
    assert m["AUC"] == pytest.approx(11 / 60)


def test_ties_keep_gallery_order() -> None:
    # All distances equal: the ranking is the gallery order itself.
    distances = np.zeros((1, 3))
    assert retrieval_metrics(distances, [0], [1, 0, 0])["NN"] == 0.0
    assert retrieval_metrics(distances, [0], [0, 0, 1])["NN"] == 1.0
    # Partial tie: g1 (0.5) first, then g0 and g2 tie at 1.0 in gallery order.
    m = retrieval_metrics(np.array([[1.0, 0.5, 1.0]]), [0], [1, 2, 0])
    np.testing.assert_allclose(m["precision"], [0.0, 0.0, 1 / 3])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64])
def test_stable_argsort_matches_numpy(dtype: type) -> None:
    rng = np.random.default_rng(0)
    block = rng.integers(-3, 4, size=(40, 50)).astype(dtype)  # many ties
    expected = np.argsort(block, axis=1, kind="stable")
    np.testing.assert_array_equal(_stable_argsort(block), expected)
    # Distinct values (exact even in float16): the tie-free path.
    distinct = (rng.permutation(2000).reshape(40, 50) - 1000).astype(dtype)
    np.testing.assert_array_equal(
        _stable_argsort(distinct), np.argsort(distinct, axis=1, kind="stable")
    )


def test_stable_argsort_signed_zeros_and_extremes() -> None:
    f32 = np.finfo(np.float32)
    row = np.array([[f32.max, -f32.max, f32.tiny, -f32.tiny, 1e-45, -1e-45, 0.0, -0.0]])
    for dtype in (np.float32, np.float64):
        block = row.astype(dtype)
        np.testing.assert_array_equal(
            _stable_argsort(block), np.argsort(block, axis=1, kind="stable")
        )


def test_string_labels_give_the_same_result() -> None:
    names = {0: "chair", 1: "table", 2: "lamp"}
    m_int = retrieval_metrics(DISTANCES, QUERIES, GALLERY)
    m_str = retrieval_metrics(
        DISTANCES, [names[q] for q in QUERIES], np.array([names[g] for g in GALLERY])
    )
    assert format_metrics(m_str) == format_metrics(m_int)


def test_labels_compare_with_equality_only() -> None:
    # The string "0" is not the integer 0: the query has no relevant item.
    with pytest.raises(ValueError, match="no query label"):
        retrieval_metrics(DISTANCES[:1], ["0"], GALLERY)


def test_query_without_gallery_class_is_skipped_for_class_metrics() -> None:
    # Add q2 with label 9 (not in the gallery), ranking irrelevant everywhere.
    distances = np.vstack([DISTANCES, np.linspace(0, 1, 6)])
    m = retrieval_metrics(distances, [0, 1, 9], GALLERY)
    assert m["n_skipped"] == 1
    # NN counts q2 as a miss: (0 + 1 + 0) / 3.
    assert m["NN"] == pytest.approx(1 / 3)
    # FT/ST/DCG/ANMRR average over q0 and q1 only: same as the 2-query case.
    base = retrieval_metrics(DISTANCES, QUERIES, GALLERY)
    for key in ("FT", "ST", "DCG", "ANMRR"):
        assert m[key] == pytest.approx(base[key]), key
    # Precision denominators use 3 queries: P_1 = 1/(3*1); recall is unchanged.
    assert m["precision"][0] == pytest.approx(1 / 3)
    np.testing.assert_allclose(m["recall"], base["recall"])


def test_no_relevant_item_at_all_is_an_error() -> None:
    with pytest.raises(ValueError, match="no query label"):
        retrieval_metrics(np.zeros((2, 3)), [5, 6], [0, 1, 2])


def test_class_larger_than_half_the_gallery_clips_st() -> None:
    # tau = 3 of 4 items: 2*tau-1 = 5 > 4 is clipped to 4 -> ST = 3/3.
    m = retrieval_metrics(np.array([[0.1, 0.2, 0.3, 0.4]]), [0], [1, 0, 0, 0])
    assert m["ST"] == pytest.approx(1.0)
    assert m["FT"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("distances", "queries", "gallery", "message"),
    [
        (np.zeros(3), [0], [0, 0, 0], "2-D"),
        (np.zeros((0, 3)), [], [0, 0, 0], "empty"),
        (np.zeros((2, 0)), [0, 0], [], "empty"),
        (np.array([[0.0, np.nan]]), [0], [0, 1], "NaN or infinity"),
        (np.array([[0.0, np.inf]]), [0], [0, 1], "NaN or infinity"),
        (np.array([["a", "b"]]), [0], [0, 1], "real numbers"),
        (np.array([[True, False]]), [0], [0, 1], "real numbers"),
        (np.zeros((2, 2)), [0], [0, 1], "query_labels has 1 labels"),
        (np.zeros((1, 2)), [0], [0, 1, 1], "gallery_labels has 3 labels"),
        (np.zeros((1, 2)), [0], np.zeros((1, 2)), "1-D"),
        (np.zeros((1, 2)), [[0]], [0, 1], "hashable"),
        (np.zeros((1, 2)), "a", ["a", "b"], "single string"),
        (np.zeros((1, 2)), 5, [0, 1], "sequence of labels"),
    ],
)
def test_bad_input(distances: object, queries: object, gallery: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(distances, queries, gallery)  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_bad_f_top_k(k: object) -> None:
    with pytest.raises(ValueError, match="f_top_k"):
        retrieval_metrics(DISTANCES, QUERIES, GALLERY, f_top_k=k)  # type: ignore[arg-type]


def test_format_metrics_and_pr_curve() -> None:
    m = retrieval_metrics(DISTANCES, QUERIES, GALLERY)
    table = format_metrics(m)
    assert list(table) == list(SCALAR_METRICS)
    assert all(type(v) is float for v in table.values())
    recall, precision = pr_curve(m)
    np.testing.assert_array_equal(recall, m["recall"])
    np.testing.assert_array_equal(precision, m["precision"])
    with pytest.raises(ValueError, match="missing ANMRR, AUC"):
        format_metrics({k: 0.0 for k in ("NN", "FT", "ST", "F", "DCG")})
    with pytest.raises(ValueError, match="missing 'recall'"):
        pr_curve({"precision": []})


def test_result_does_not_depend_on_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    import ftspl.engine.scoring.metrics as metrics_module

    rng = np.random.default_rng(1)
    distances = rng.random((37, 11))
    queries, gallery = rng.integers(0, 4, 37), rng.integers(0, 4, 11)
    whole = retrieval_metrics(distances, queries, gallery)
    monkeypatch.setattr(metrics_module, "_CHUNK_ELEMENTS", 25)  # 2 rows a chunk
    chunked = retrieval_metrics(distances, queries, gallery)
    assert format_metrics(chunked) == pytest.approx(format_metrics(whole))
    np.testing.assert_allclose(chunked["precision"], whole["precision"])


# --- A loop-by-loop reference of the MATLAB scorer --------------------------


def _reference(distances: np.ndarray, queries: list, gallery: list) -> dict[str, float]:
    """Per-query loops mirroring cross_performance.m (1-based ranks as there)."""
    n_q, n_g = distances.shape
    rel = np.zeros((n_q, n_g))
    for i in range(n_q):
        order = sorted(range(n_g), key=lambda j: (distances[i, j], j))
        rel[i] = [gallery[j] == queries[i] for j in order]
    size = {lab: sum(g == lab for g in gallery) for lab in set(gallery)}
    t_max = max(size.values())
    total = rel.sum()
    prec = [rel[:, :k].sum() / (n_q * k) for k in range(1, n_g + 1)]
    rec = [rel[:, :k].sum() / total for k in range(1, n_g + 1)]
    auc = sum((rec[k] - rec[k - 1]) * (prec[k] + prec[k - 1]) / 2 for k in range(1, n_g))
    k20 = min(20, n_g)
    s = rel[:, :k20].sum()
    p, r = s / (n_q * k20), s / total
    f = 2 / (1 / p + 1 / r) if s else 0.0
    ft, st_, dcg, nmrr = [], [], [], []
    for i in range(n_q):
        tau = size.get(queries[i], 0)
        if tau == 0:
            continue
        ft.append(rel[i, :tau].sum() / tau)
        st_.append(rel[i, : min(2 * tau - 1, n_g)].sum() / tau)
        num, ideal = rel[i, 0], 1.0
        for k in range(2, tau + 1):
            num += rel[i, k - 1] / math.log2(k)
            ideal += 1 / math.log2(k)
        dcg.append(num / ideal)
        cap = min(4 * tau, 2 * t_max)
        ranks = [k if rel[i, k - 1] == 1 else cap + 1 for k in range(1, tau + 1)]
        nmrr.append((sum(ranks) / tau - tau / 2 - 0.5) / (cap - tau / 2 + 0.5))
    return {
        "NN": rel[:, 0].sum() / n_q,
        "FT": float(np.mean(ft)),
        "ST": float(np.mean(st_)),
        "F": f,
        "DCG": float(np.mean(dcg)),
        "ANMRR": float(np.mean(nmrr)),
        "AUC": auc,
    }


@st.composite
def _problems(draw: st.DrawFn, distinct: bool = False) -> tuple[np.ndarray, list, list]:
    n_q = draw(st.integers(1, 6))
    n_g = draw(st.integers(1, 25))
    labels = st.sampled_from(["a", "b", "c", "d"])
    gallery = draw(st.lists(labels, min_size=n_g, max_size=n_g))
    queries = draw(st.lists(st.sampled_from(gallery), min_size=n_q, max_size=n_q))
    if distinct:
        values = draw(st.permutations(range(n_q * n_g)))
    else:  # small integers: plenty of ties
        values = draw(st.lists(st.integers(0, 4), min_size=n_q * n_g, max_size=n_q * n_g))
    return np.array(values, dtype=float).reshape(n_q, n_g), queries, gallery


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_problems())
def test_matches_the_loop_reference(problem: tuple[np.ndarray, list, list]) -> None:
    distances, queries, gallery = problem
    got = format_metrics(retrieval_metrics(distances, queries, gallery))
    want = _reference(distances, queries, gallery)
    for key in SCALAR_METRICS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_problems())
def test_metrics_are_bounded_and_ordered(problem: tuple[np.ndarray, list, list]) -> None:
    m = retrieval_metrics(*problem)
    for key in SCALAR_METRICS:
        assert -1e-12 <= m[key] <= 1 + 1e-12, key
    assert m["FT"] <= m["ST"] + 1e-12
    assert np.all(np.diff(m["recall"]) >= 0)
    assert m["recall"][-1] == pytest.approx(1.0)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_problems(distinct=True), st.randoms(use_true_random=False))
def test_gallery_order_does_not_matter_without_ties(
    problem: tuple[np.ndarray, list, list], rnd: object
) -> None:
    distances, queries, gallery = problem
    perm = list(range(len(gallery)))
    rnd.shuffle(perm)  # type: ignore[attr-defined]
    shuffled = retrieval_metrics(distances[:, perm], queries, [gallery[j] for j in perm])
    original = retrieval_metrics(distances, queries, gallery)
    assert format_metrics(shuffled) == pytest.approx(format_metrics(original))
    np.testing.assert_allclose(shuffled["precision"], original["precision"])
