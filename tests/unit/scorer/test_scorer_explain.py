"""Alerts explain themselves in plain names; payment decisions follow the threshold."""

from __future__ import annotations

import numpy as np
import pytest

from edge.scorer.decisions import commands_topic, decide
from edge.scorer.explain import top_features
from shared.contracts import Contribution, Decision, decode, encode
from shared.features import feature_label, model_features


def test_top_three_features_are_the_largest_errors_in_plain_names() -> None:
    names = model_features("telemetry")
    errors = np.full(len(names), 0.01)
    errors[names.index("coolant_c")] = 9.0
    errors[5] = 4.0
    errors[7] = 2.0
    top = top_features(errors, names, feature_label)
    assert [c.error for c in top] == [9.0, 4.0, 2.0]
    assert top[0].feature == feature_label("coolant_c") != "coolant_c"
    assert all(" " in c.feature or c.feature[0].isupper() for c in top)


def test_ties_keep_model_order_and_mismatched_rows_fail() -> None:
    assert [c.feature for c in top_features(np.ones(4), list("abcd"), str)] == ["a", "b", "c"]
    with pytest.raises(ValueError):
        top_features(np.ones(3), list("abcd"), str)


def test_decline_above_threshold_names_the_reasons() -> None:
    d = decide("p-1", 100.0, 5.0, 1.0, "pay-v3", [Contribution("Amount vs usual", 4.0)])
    assert d.decision == "decline" and "Amount vs usual" in d.reason
    assert decode(Decision, encode(d)) == d
    assert decide("p-2", 100.0, 1.0, 1.0, "pay-v3").decision == "approve"  # at: not above


def test_commands_topic() -> None:
    assert commands_topic("1HGCM82633A004352") == "fleet/1HGCM82633A004352/commands"


def test_fast_feature_rows_equal_the_shared_feature_matrix() -> None:
    from edge.scorer.features import FeatureRows
    from shared.contracts import AnonPayment
    from shared.features import feature_matrix

    names = model_features("payments")
    full = {n: float(i) for i, n in enumerate(names)}
    partial = {n: 2.5 for n in names[::2]}
    recs = [
        AnonPayment(
            event_id=f"p{i}",
            ts=1.0,
            card_token="card-tok-1",
            vehicle_token="veh-tok-1",
            driver_token="drv-tok-1",
            merchant_id="m",
            mcc="5541",
            category="fuel",
            amount=1.0,
            currency="EUR",
            cell="c",
            features=f,
        )
        for i, f in enumerate([full, partial, {}])
    ]
    np.testing.assert_array_equal(FeatureRows(names)(recs), feature_matrix("payments", recs))
    assert FeatureRows(names)([]).shape == (0, len(names))
