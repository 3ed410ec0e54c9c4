"""The generic transforms' arithmetic, one known sequence at a time."""

from __future__ import annotations

import math

import pytest

from shared.declarations import transforms as tf


def test_value_clips_to_the_declared_range_and_zeroes_nan() -> None:
    assert tf.value(55.0, -40.0, 40.0) == 40.0
    assert tf.value(-41.5, -40.0, 40.0) == -40.0
    assert tf.value(12.25, -40.0, 40.0) == 12.25
    assert tf.value(float("nan"), -40.0, 40.0) == 0.0
    assert tf.value(1e9) == 1e6  # undeclared range: the guard's bound
    assert tf.value(math.e - 1.0, scale="log1p") == pytest.approx(1.0)
    assert tf.value(-3.0, scale="log1p") == 0.0


def test_zscore_follows_the_ewma_of_a_known_sequence() -> None:
    z, state = tf.zscore_step(None, 10.0, alpha=0.5, typical_std=2.0)
    assert (z, state) == (0.0, tf.ZState(1, 10.0, 4.0))  # prior variance: typical_std**2
    z, state = tf.zscore_step(state, 13.0, alpha=0.5, typical_std=2.0)
    assert z == 1.5  # (13 - 10) / 2
    assert state == tf.ZState(2, 11.5, 0.5 * (4.0 + 3.0 * 1.5))
    z, state = tf.zscore_step(state, 11.5, alpha=0.5, typical_std=2.0)
    assert z == 0.0
    assert state.var == pytest.approx(2.125)


def test_zscore_floor_and_limit() -> None:
    state = None
    for _ in range(30):  # a flat value: the variance decays towards 0
        _, state = tf.zscore_step(state, 5.0, alpha=0.5, typical_std=2.0)
    assert state is not None and math.sqrt(state.var) < 0.1
    # The deviation never goes below floor * typical_std = 0.1.
    assert tf.zscore_step(state, 5.2, alpha=0.5, typical_std=2.0)[0] == pytest.approx(2.0)
    assert tf.zscore_step(state, 500.0, alpha=0.5, typical_std=2.0)[0] == 20.0
    assert tf.zscore_step(state, -500.0, alpha=0.5, typical_std=2.0, limit=7.0)[0] == -7.0


def test_rate_per_second_in_typical_deviations() -> None:
    rate, state = tf.rate_step(None, 10.0, 5.0, typical_std=2.0)
    assert (rate, state) == (0.0, tf.Last(10.0, 5.0))
    rate, state = tf.rate_step(state, 12.0, 9.0, typical_std=2.0)
    assert rate == 1.0  # (9 - 5) / 2 s / 2
    # Closer than min_dt_s, or out of order: counted as min_dt_s apart; time never goes back.
    assert tf.rate_step(state, 12.1, 10.0)[0] == 2.0
    rate, after = tf.rate_step(state, 11.0, 8.0)
    assert rate == -2.0 and after == tf.Last(12.0, 8.0)
    assert tf.rate_step(state, 13.0, 1e6)[0] == 50.0


def test_delta() -> None:
    assert tf.delta_step(None, 4.0) == (0.0, 4.0)
    assert tf.delta_step(4.0, 1.5) == (-2.5, 1.5)


def test_stuck_counts_exact_repeats_up_to_the_cap() -> None:
    state = None
    runs = []
    for x in (1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0):
        run, state = tf.stuck_step(state, x, cap=3)
        runs.append(run)
    assert runs == [0, 1, 2, 0, 1, 2, 3, 3]
    assert tf.stuck_value([0, 4, 2]) == 4.0
    assert tf.stuck_value([0, 4, 2], scale="log1p") == pytest.approx(math.log(5.0))
    assert tf.stuck_value([], scale="log1p") == 0.0


def test_gap_seconds_since_the_previous_event() -> None:
    assert tf.gap_step(None, 100.0) == (0.0, 100.0)
    assert tf.gap_step(100.0, 102.5) == (2.5, 102.5)
    assert tf.gap_step(100.0, 99.0) == (0.0, 100.0)  # out of order: no gap, time stays
    assert tf.gap_step(100.0, 1e7, cap=3600.0) == (3600.0, 1e7)
    assert tf.gap_step(100.0, 100.0 + math.e - 1.0, scale="log1p")[0] == pytest.approx(1.0)


def test_spread_diff_ratio() -> None:
    assert tf.spread([210.0, 230.5, 190.0, 220.0]) == 40.5
    assert tf.diff(90.0, 21.5) == 68.5
    assert tf.ratio(3.0, 4.0) == 0.75
    assert tf.ratio(3.0, 0.0) == 0.0


def test_ref_ratio_with_a_missing_reference_gives_missing() -> None:
    table = {"van": 450.0, "broken": 0.0}
    assert tf.ref_ratio(225.0, "van", table) == 0.5
    assert tf.ref_ratio(225.0, "truck", table) == 0.0
    assert tf.ref_ratio(225.0, "truck", table, missing=1.0) == 1.0
    assert tf.ref_ratio(225.0, "broken", table) == 0.0


def test_onehot_follows_the_declared_order() -> None:
    values = ("fuel", "charging", "toll", "parking", "in_car")
    assert tf.onehot("toll", values) == (0.0, 0.0, 1.0, 0.0, 0.0)
    assert tf.onehot("fuel", values[::-1]) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert tf.onehot("bus", values) == (0.0,) * 5


def test_time_of_day_is_cyclic() -> None:
    assert tf.time_of_day(86_400.0 * 20_000) == pytest.approx((0.0, 1.0))
    assert tf.time_of_day(6 * 3600.0) == pytest.approx((1.0, 0.0), abs=1e-12)
    before, after = tf.time_of_day(86_399.0), tf.time_of_day(1.0)
    assert before[1] == pytest.approx(after[1]) and before[0] == pytest.approx(-after[0])


def test_to_seconds() -> None:
    assert tf.to_seconds(1767600000123, "ms") == pytest.approx(1767600000.123)
    assert tf.to_seconds(12.5, "s") == 12.5
    assert tf.to_seconds("2026-01-05T08:00:00+01:00", "iso8601") == 1767596400.0
    assert tf.to_seconds("2026-01-05T08:00:00", "iso8601") == 1767600000.0
