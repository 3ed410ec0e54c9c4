"""Ranking metrics (cloud.evaluation.ranking) against values worked out by hand, and properties
they must keep."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.evaluation import ranking


def test_roc_auc_counts_pairs() -> None:
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ranked right
    assert ranking.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_roc_auc_counts_ties_as_half() -> None:
    assert ranking.roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # pairs: (1 vs 0.2) right, (1 vs 1) half, (0.5 vs 0.2) right, (0.5 vs 1) wrong -> 2.5/4
    assert ranking.roc_auc([1, 1, 0, 0], [1.0, 0.5, 0.2, 1.0]) == 0.625


def test_pr_auc_is_average_precision() -> None:
    # ranked: 0.8 (pos) P=1 R=.5; 0.4 (neg); 0.35 (pos) P=2/3 R=1 -> AP = .5*1 + .5*2/3
    assert ranking.pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(5 / 6)


def test_pr_auc_steps_only_at_distinct_scores() -> None:
    # one tie group holding everything: precision 1/2 at recall 1
    assert ranking.pr_auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)


def test_empty_class_gives_nan() -> None:
    assert math.isnan(ranking.roc_auc([0, 0], [0.1, 0.2]))
    assert math.isnan(ranking.pr_auc([0, 0], [0.1, 0.2]))


def test_at_threshold_flags_strictly_above() -> None:
    r = ranking.at_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.35)
    assert (r.tp, r.fp, r.fn, r.tn) == (1, 1, 1, 1)
    assert r.precision == 0.5 and r.recall == 0.5 and r.alert_rate == 0.5


def test_threshold_for_alert_rate() -> None:
    scores = np.arange(1000, dtype=float)
    t = ranking.threshold_for_alert_rate(scores, 0.01)
    assert np.sum(scores > t) == 10
    assert ranking.threshold_for_alert_rate(scores, 0.0) == 999.0


def test_threshold_for_precision_takes_the_most_recall() -> None:
    y = [1, 1, 0, 1, 0, 0]
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.1]
    # flag {0.9, 0.8}: precision 1, recall 2/3; adding 0.7 and 0.6: precision 3/4, recall 1
    assert ranking.threshold_for_precision(y, s, 1.0) == 0.7
    assert ranking.threshold_for_precision(y, s, 0.75) == 0.5
    assert ranking.at_threshold(y, s, 0.5).precision == 0.75


def test_threshold_for_precision_falls_back_to_best_precision() -> None:
    # the top score is a negative: precision 1 is out of reach; best is 2/3 (top three)
    t = ranking.threshold_for_precision([0, 1, 1, 0], [0.9, 0.8, 0.7, 0.1], 0.99)
    assert t == pytest.approx(0.1)


def test_curves_run_from_corner_to_corner() -> None:
    fpr, tpr = ranking.roc_curve([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.4])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # trapezoid area under the curve is the rank AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(
        ranking.roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.4])
    )


scores_and_labels = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < len(y)),
        st.lists(st.integers(0, 8).map(float), min_size=n, max_size=n),
    )
)


@given(scores_and_labels)
@settings(max_examples=150, deadline=None)
def test_roc_auc_matches_pair_counting(data: tuple[list[bool], list[float]]) -> None:
    y, s = np.array(data[0]), np.array(data[1])
    pos, neg = s[y], s[~y]
    expected = np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])
    assert ranking.roc_auc(y, s) == pytest.approx(expected / (pos.size * neg.size))
    assert ranking.roc_auc(y, -s) == pytest.approx(1 - ranking.roc_auc(y, s))
    assert 0.0 <= ranking.pr_auc(y, s) <= 1.0


def test_summary_is_json_ready() -> None:
    out = ranking.summary([0, 0], [0.1, 0.2], 0.15)
    assert (
        out["roc_auc"] is None
        and out["recall"] is None
        and out["precision"] == 0.0
        and out["fp"] == 1
    )
