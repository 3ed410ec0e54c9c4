"""Alert episodes: one alert per run of anomalies, with start, peak and end; survives restarts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contracts import Alert, Contribution
from shared.episodes import EpisodeSettings, EpisodeTracker, single_event_alert

THR = 1.0
TOP = [Contribution("Coolant temperature", 5.0)]


def feed(tr: EpisodeTracker, token: str, frames: list[tuple[float, float]]) -> list[Alert]:
    out: list[Alert] = []
    for ts, score in frames:
        out += tr.observe(token, f"{token}-{ts:g}", ts, score, THR, "v1", lambda: TOP)
    return out


def run(start: float, n: int, score: float) -> list[tuple[float, float]]:
    return [(start + i, score) for i in range(n)]


def test_a_sustained_fault_is_one_episode_with_start_peak_and_end() -> None:
    tr = EpisodeTracker("telemetry")
    frames = run(1000, 60, 0.1) + run(1060, 120, 3.0) + [(1100.0, 9.0)] + run(1180, 60, 0.1)
    frames.sort()
    alerts = feed(tr, "veh-1", frames)
    states = [a.state for a in alerts]
    assert states[0] == "open" and states[-1] == "closed"
    assert set(states[1:-1]) <= {"update"}
    assert len({a.alert_id for a in alerts}) == 1
    closed = alerts[-1]
    assert closed.start_ts == 1060 and closed.end_ts == 1179
    assert closed.peak_score == 9.0 and closed.peak_ts == 1100
    assert closed.top_features == TOP
    # Opening takes open_events anomalous frames: detection delay is bounded by the window.
    opening = EpisodeSettings().open_events
    assert alerts[0].start_ts == 1060 and alerts[0].end_ts == 1060 + opening - 1


def test_isolated_noisy_frames_raise_nothing() -> None:
    tr = EpisodeTracker("telemetry")
    frames = [(1000.0 + i, 3.0 if i % 7 == 0 else 0.1) for i in range(300)]
    assert feed(tr, "veh-1", frames) == []
    assert tr.states == {} or all(s.episode is None for s in tr.states.values())


def test_a_gap_longer_than_the_quiet_gap_starts_a_second_episode() -> None:
    tr = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30))
    alerts = feed(tr, "veh-1", run(1, 10, 3.0) + run(11, 40, 0.1) + run(51, 10, 3.0))
    assert [a.state for a in alerts if a.state != "update"] == ["open", "closed", "open"]
    ids = [a.alert_id for a in alerts if a.state == "open"]
    assert len(ids) == 2 and ids[0] != ids[1]
    # A gap shorter than quiet_gap keeps the episode going.
    tr2 = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30))
    alerts2 = feed(tr2, "veh-2", run(1, 10, 3.0) + run(11, 15, 0.1) + run(26, 10, 3.0))
    assert [a.state for a in alerts2 if a.state != "update"] == ["open"]


def test_a_silent_vehicle_is_closed_after_the_quiet_gap_of_its_own_silence() -> None:
    tr = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30))
    assert [a.state for a in feed(tr, "veh-1", run(1, 5, 3.0))] == ["open"]
    assert tr.sweep(20.0) == []
    closed = tr.sweep(40.0)
    assert [a.state for a in closed] == ["closed"] and closed[0].end_ts == 5
    assert tr.states == {}


def test_one_vehicles_clock_never_moves_anothers_episode() -> None:
    tr = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30, open_window_s=10))
    wall = 5000.0
    for i in range(6):  # one frame a second, a sweep after each, as the scorer runs
        tr.observe("ahead", f"x{i}", 1000.0 + 299 + i, 3.0, THR, "v1", lambda: TOP, wall + i)
        got = tr.observe("veh-1", f"a{i}", 1000.0 + i, 3.0, THR, "v1", lambda: TOP, wall + i)
        got += tr.sweep(wall + i)
        assert all(a.state != "closed" for a in got)
    assert tr.states["veh-1"].episode is not None
    assert tr.sweep(wall + 5 + 29) == []
    closed = tr.sweep(wall + 5 + 31)
    assert sorted(a.token for a in closed) == ["ahead", "veh-1"]


def test_a_restore_restarts_the_idle_clock_and_reads_old_records() -> None:
    tr = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30))
    feed(tr, "veh-1", run(1, 5, 3.0))
    record = tr.drain_dirty()["veh-1"]
    assert record is not None
    legacy = record.replace(b',"seen_at":5', b"")  # written before seen_at existed
    assert legacy != record
    for data in (record, legacy):
        again = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=30))
        again.restore("veh-1", data, now=9000.0)
        assert again.sweep(9000.0 + 29) == []
        assert [a.state for a in again.sweep(9000.0 + 31)] == ["closed"]


def test_tokens_are_independent() -> None:
    tr = EpisodeTracker("telemetry")
    a = feed(tr, "veh-1", run(1, 2, 3.0))
    b = feed(tr, "veh-2", run(1, 2, 3.0))
    assert a == [] and b == []  # two frames each: neither reached three on its own


def test_state_survives_a_restart_mid_episode() -> None:
    frames = run(1, 5, 3.0) + run(6, 40, 0.1)
    whole = feed(EpisodeTracker("telemetry"), "veh-1", frames)

    first = EpisodeTracker("telemetry")
    part1 = feed(first, "veh-1", frames[:7])
    topic: dict[str, bytes | None] = first.drain_dirty()
    second = EpisodeTracker("telemetry")
    for token, data in topic.items():
        second.restore(token, data)
    part2 = feed(second, "veh-1", frames[7:])
    assert part1 + part2 == whole
    assert second.drain_dirty() == {"veh-1": None}  # closed: the compacted record is deleted


def test_normal_frames_of_quiet_vehicles_write_no_state() -> None:
    tr = EpisodeTracker("telemetry")
    feed(tr, "veh-1", run(1, 100, 0.1))
    assert tr.drain_dirty() == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.5, 3.0), st.booleans()), min_size=1, max_size=200))
def test_every_episode_opens_once_and_closes_at_most_once(steps: list[tuple[float, bool]]) -> None:
    tr = EpisodeTracker("telemetry", EpisodeSettings(quiet_gap_s=10, open_window_s=5))
    ts, alerts = 1.0, []
    for dt, anomalous in steps:
        ts += dt
        alerts += feed(tr, "veh", [(ts, 3.0 if anomalous else 0.1)])
    alerts += tr.sweep(ts + 1000)
    by_id: dict[str, list[str]] = {}
    for a in alerts:
        by_id.setdefault(a.alert_id, []).append(a.state)
        assert a.start_ts <= a.peak_ts <= a.end_ts
    for seq in by_id.values():
        assert seq[0] == "open" and seq[-1] == "closed" and seq.count("closed") == 1
    assert tr.states == {}


def test_a_payment_is_its_own_closed_episode() -> None:
    a = single_event_alert("payments", "card-token-1", "p-1", 50.0, 4.0, 1.0, "v1", TOP)
    assert a.state == "closed" and a.start_ts == a.peak_ts == a.end_ts == 50.0
    assert a.event_ids == ["p-1"] and a.top_features == TOP
