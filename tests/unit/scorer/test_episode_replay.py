"""The cloud's offline replay raises exactly the episodes the edge's tracker raises live."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.episodes import EpisodeSettings, EpisodeTracker, replay

RULE = EpisodeSettings(open_events=3, open_window_s=10.0, quiet_gap_s=30.0)


def _live(tokens: list[str], ts: list[float], flagged: list[bool]) -> set[tuple]:
    """Every event through the tracker in time order, as the scorer sees them."""
    tracker = EpisodeTracker("telemetry", RULE)
    spans: dict[str, list] = {}
    for i in np.argsort(ts, kind="stable"):
        for a in tracker.observe(
            tokens[i], f"e{i}", ts[i], 1.0 if flagged[i] else 0.0, 0.5, "m", lambda: []
        ):
            span = spans.setdefault(a.alert_id, [a.token, a.start_ts, a.end_ts, a.end_ts])
            span[3] = max(span[3], a.end_ts)
    for a in tracker.sweep(float("inf")):
        spans[a.alert_id][3] = max(spans[a.alert_id][3], a.end_ts)
    return {tuple(s) for s in spans.values()}


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.9))
def test_replay_matches_the_live_tracker(seed: int, density: float) -> None:
    rng = random.Random(seed)
    tokens, ts, flagged = [], [], []
    for tok in ("a", "b", "c"):
        t = 0.0
        for _ in range(rng.randrange(1, 200)):
            t += rng.choice((1.0, 1.0, 1.0, 5.0, 40.0))
            tokens.append(tok)
            ts.append(t)
            flagged.append(rng.random() < density)
    got = {
        (e.token, e.start_ts, e.open_ts, e.end_ts)
        for e in replay(np.array(tokens, dtype=object), np.array(ts), np.array(flagged), RULE)
    }
    assert got == _live(tokens, ts, flagged)


def test_replay_opens_on_three_in_the_window_and_splits_on_the_quiet_gap() -> None:
    times = [0.0, 1.0, 2.0, 50.0, 51.0, 52.0, 100.0]
    eps = replay(
        np.array(["v"] * len(times), dtype=object), np.array(times), np.ones(len(times), bool), RULE
    )
    assert sorted((e.start_ts, e.open_ts, e.end_ts) for e in eps) == [
        (0.0, 2.0, 2.0),
        (50.0, 52.0, 52.0),
    ]
