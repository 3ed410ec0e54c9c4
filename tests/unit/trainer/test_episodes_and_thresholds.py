"""Episode replay, episode scoring and threshold rules on hand-built event sequences."""

from __future__ import annotations

import numpy as np
import pytest

from cloud.evaluation.episode_report import (
    EpisodeRule,
    LabelEpisode,
    alert_episodes,
    evaluate_episodes,
    vehicle_hours,
)
from cloud.trainer.data import Records, time_split
from cloud.trainer.errors import TrainerError
from cloud.trainer.threshold import (
    ThresholdRule,
    budget_warning,
    choose_threshold,
    describe,
    false_episode_rate,
    threshold_for_false_episodes,
)

RULE = EpisodeRule(open_events=3, open_window_s=10.0, quiet_gap_s=30.0)


def _episodes(times: list[float]) -> list[tuple[float, float, float]]:
    ts = np.array(times, dtype=float)
    tokens = np.array(["v"] * len(times), dtype=object)
    return [
        (e.start_ts, e.open_ts, e.end_ts)
        for e in alert_episodes(tokens, ts, np.ones(len(times), bool), RULE)
    ]


def test_one_noisy_frame_raises_nothing() -> None:
    assert _episodes([5.0]) == []
    assert _episodes([0.0, 11.0, 22.0]) == []  # three frames, never three within 10 s


def test_three_frames_in_the_window_open_one_episode() -> None:
    assert _episodes([0.0, 1.0, 2.0, 3.0, 30.0]) == [(0.0, 2.0, 30.0)]


def test_a_quiet_gap_splits_episodes() -> None:
    assert _episodes([0, 1, 2, 50, 51, 52]) == [(0.0, 2.0, 2.0), (50.0, 52.0, 52.0)]


def test_vehicle_hours_sum_per_token() -> None:
    tokens = np.array(["a", "b", "a", "b"], dtype=object)
    ts = np.array([0.0, 100.0, 3600.0, 1900.0])
    assert vehicle_hours(tokens, ts) == pytest.approx(1.5)


def test_detection_delay_and_false_episodes() -> None:
    from cloud.evaluation.episode_report import AlertEpisode

    alerts = [
        AlertEpisode("a", 100, 105, 200),
        AlertEpisode("a", 1000, 1002, 1010),
        AlertEpisode("b", 0, 2, 3),
    ]
    labels = [
        LabelEpisode("e1", "overheating", "a", 90, 300),
        LabelEpisode("e2", "tyre_leak", "b", 500, 900),
    ]
    rep = evaluate_episodes(alerts, labels, hours=10.0, within_s=60).as_dict()
    assert rep["episodes"] == 2 and rep["detected"] == 1
    assert rep["delay_p50_s"] == 15.0
    assert rep["false_alert_episodes"] == 2  # a@1000 and b@0 overlap no fault
    assert rep["false_alert_episodes_per_100h"] == 20.0
    assert rep["per_kind"]["tyre_leak"]["detected"] == 0


def test_an_alert_within_the_feature_memory_after_a_fault_is_its_tail() -> None:
    from cloud.evaluation.episode_report import AlertEpisode
    from shared.features import feature_memory_s

    memory = feature_memory_s("telemetry")
    assert 30.0 <= memory <= 120.0  # the rolling statistics' look-back at 1 Hz
    labels = [LabelEpisode("e1", "battery_degradation", "a", 100, 400)]
    tail = AlertEpisode("a", 400 + memory - 1, 400 + memory + 2, 400 + memory + 5)
    later = AlertEpisode("a", 400 + memory + 1, 400 + memory + 3, 400 + memory + 9)
    rep = evaluate_episodes([tail, later], labels, hours=1.0, memory_s=memory)
    assert rep.false_alert_episodes == 1  # only the one starting after the memory
    assert evaluate_episodes([tail], labels, hours=1.0).false_alert_episodes == 1


def test_a_vehicle_split_keeps_each_vehicle_in_one_split() -> None:
    from cloud.trainer.data import vehicle_split

    n = 3000
    rng = np.random.default_rng(3)
    tokens = np.array([f"v{i}" for i in rng.integers(0, 60, n)], dtype=object)
    recs = Records(
        "telemetry",
        ["f"],
        np.zeros((n, 1), np.float32),
        np.arange(n).astype(object),
        rng.uniform(0, 3600, n),
        tokens,
        np.array([""] * n, dtype=object),
        np.array([""] * n, dtype=object),
    )
    parts = vehicle_split(recs, (0.6, 0.2, 0.2))
    seen = [set(p.tokens.tolist()) for p in parts]
    assert sum(len(p) for p in parts) == n
    assert all(seen) and not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert parts[0].ts.min() < 100 and parts[0].ts.max() > 3500  # every split spans the run


def _records(scores_normal: list[tuple[str, float]]) -> Records:
    n = len(scores_normal)
    return Records(
        stream="telemetry",
        features=["f"],
        x=np.zeros((n, 1), np.float32),
        event_ids=np.array([f"e{i}" for i in range(n)], dtype=object),
        ts=np.array([t for _, t in scores_normal], dtype=float),
        tokens=np.array([tok for tok, _ in scores_normal], dtype=object),
        kinds=np.array([""] * n, dtype=object),
        episodes=np.array([""] * n, dtype=object),
    )


def test_false_episode_threshold_keeps_the_rate_under_target() -> None:
    rng = np.random.default_rng(3)
    rows = [(f"v{v}", float(t)) for v in range(5) for t in range(3600)]
    rec = _records(rows)
    scores = rng.gamma(2.0, 1.0, size=len(rows)).astype(np.float32)
    hours = vehicle_hours(rec.tokens, rec.ts)
    t = threshold_for_false_episodes(rec, scores, 20.0, RULE)
    assert false_episode_rate(rec, scores, t, RULE, hours) <= 20.0
    # just below it, the rate is over the target (the search found the lowest one)
    below = np.max(scores[scores < t])
    assert false_episode_rate(rec, scores, float(below), RULE, hours) > 20.0


def test_a_false_episode_budget_that_allows_no_episode_is_named() -> None:
    rule = ThresholdRule("false_episodes", 0.5)
    # 120 vehicle-hours: 0.6 episodes allowed, so none; 200: one.
    small = describe(rule, _records([(f"v{v}", float(t)) for v in range(120) for t in (0, 3600)]))
    large = describe(rule, _records([(f"v{v}", float(t)) for v in range(200) for t in (0, 3600)]))
    assert small == {
        "mode": "false_episodes",
        "value": 0.5,
        "validation_vehicle_hours": 120.0,
        "allowed_episodes": 0,
    }
    assert large["allowed_episodes"] == 1
    warning = budget_warning("telemetry", small)
    assert warning and "120 vehicle-hours" in warning and "at least 200" in warning
    assert budget_warning("telemetry", large) is None
    assert budget_warning("payments", describe(ThresholdRule("precision", 0.9))) is None


def test_threshold_rules_parse_and_check() -> None:
    assert ThresholdRule.parse("precision=0.9") == ThresholdRule("precision", 0.9)
    with pytest.raises(TrainerError):
        ThresholdRule.parse("recall=0.9")
    with pytest.raises(TrainerError):
        ThresholdRule("alert_rate", 1.5)


def test_precision_rule_needs_labels() -> None:
    rec = _records([("v", float(t)) for t in range(10)])
    with pytest.raises(TrainerError, match="labelled"):
        choose_threshold(ThresholdRule("precision", 0.9), rec, np.ones(10, np.float32), RULE)


def test_time_split_orders_by_time() -> None:
    rec = _records([("v", float(t)) for t in np.random.default_rng(0).permutation(100)])
    train, val, hold = time_split(rec, (0.6, 0.2, 0.2))
    assert len(train) + len(val) + len(hold) == 100
    assert train.ts.max() < val.ts.min() and val.ts.max() < hold.ts.min()


def test_a_vehicle_split_deals_out_the_labelled_vehicles_too() -> None:
    from cloud.trainer.data import vehicle_split

    # 100 vehicles, 5 of them with a labelled fault: each split gets its share of both kinds
    # (a hash alone leaves a fifth of the labelled vehicles, or none, to the holdout).
    n = 100 * 20
    tokens = np.array([f"v{i // 20}" for i in range(n)], dtype=object)
    kinds = np.array(
        ["tyre_leak" if i // 20 in (3, 17, 42, 66, 91) and i % 20 < 5 else "" for i in range(n)],
        dtype=object,
    )
    recs = Records(
        "telemetry",
        ["f"],
        np.zeros((n, 1), np.float32),
        np.arange(n).astype(object),
        np.arange(n, dtype=np.float64),
        tokens,
        kinds,
        kinds.copy(),
    )
    train, val, hold = vehicle_split(recs, (0.6, 0.2, 0.2))
    labelled = [len(set(p.tokens[p.labelled].tolist())) for p in (train, val, hold)]
    assert labelled == [3, 1, 1]
    assert [len(set(p.tokens.tolist())) for p in (train, val, hold)] == [60, 20, 20]
    # With one or two labelled vehicles they go where the model is judged and the threshold
    # set: the autoencoder fits normal frames only.
    for few, expect in (((3,), [0, 0, 1]), ((3, 17), [0, 1, 1])):
        k = np.array(
            ["tyre_leak" if i // 20 in few and i % 20 < 5 else "" for i in range(n)], dtype=object
        )
        r = Records(
            "telemetry",
            ["f"],
            np.zeros((n, 1), np.float32),
            np.arange(n).astype(object),
            np.arange(n, dtype=np.float64),
            tokens,
            k,
            k.copy(),
        )
        parts = vehicle_split(r, (0.6, 0.2, 0.2))
        assert [len(set(p.tokens[p.labelled].tolist())) for p in parts] == expect


def test_declared_alerts_replay_as_their_rule() -> None:
    from cloud.evaluation.episode_report import declared_rule
    from shared.declarations.schema import EpisodeAlerts, EventAlerts

    rule = declared_rule(EpisodeAlerts(open_events=3, window_s=60.0, quiet_s=120.0))
    assert (rule.open_events, rule.open_window_s, rule.quiet_gap_s) == (3, 60.0, 120.0)
    # kind = "event": every anomalous event is an alert of its own, even two at one instant.
    ts = np.array([0.0, 1.0, 1.0, 500.0])
    tokens = np.array(["d"] * 4, dtype=object)
    eps = alert_episodes(tokens, ts, np.ones(4, bool), declared_rule(EventAlerts()))
    assert sorted((e.start_ts, e.end_ts) for e in eps) == [
        (0.0, 0.0),
        (1.0, 1.0),
        (1.0, 1.0),
        (500.0, 500.0),
    ]
