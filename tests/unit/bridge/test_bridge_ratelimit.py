"""The per-vehicle token bucket, on a clock the test drives."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.bridge.bridge import Bridge
from edge.bridge.ratelimit import VehicleRateLimiter
from edge.config import load
from shared.errors import ConfigError


def admitted(limiter: VehicleRateLimiter, vin: str, times: list[float]) -> int:
    return sum(limiter.allow(vin, t) for t in times)


def test_a_burst_passes_then_the_rate() -> None:
    limiter = VehicleRateLimiter(rate=10.0, burst=50)
    assert admitted(limiter, "A", [0.0] * 80) == 50
    # One second later: ten more tokens, not more.
    assert admitted(limiter, "A", [1.0] * 80) == 10
    # A steady 10/s is never limited.
    assert admitted(limiter, "A", [2.0 + i / 10 for i in range(100)]) == 100


def test_vehicles_do_not_share_a_bucket() -> None:
    limiter = VehicleRateLimiter(rate=1.0, burst=3)
    assert admitted(limiter, "FLOOD", [0.0] * 1000) == 3
    assert admitted(limiter, "CALM", [0.0, 0.5, 1.0]) == 3


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=400),
    st.floats(min_value=0.1, max_value=50),
    st.integers(min_value=1, max_value=100),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    times: list[float], rate: float, burst: int
) -> None:
    times.sort()
    limiter = VehicleRateLimiter(rate=rate, burst=burst)
    n = admitted(limiter, "V", times)
    assert n <= burst + rate * (times[-1] - times[0]) + 1e-6
    assert n >= min(len(times), burst)


def test_idle_buckets_are_forgotten_and_that_changes_no_decision() -> None:
    limiter = VehicleRateLimiter(rate=2.0, burst=10)  # full again after 5 s
    for i in range(1000):
        limiter.allow(f"V{i}", 0.0)
    assert len(limiter) == 1000
    limiter.allow("LATE", 6.0)  # a new vehicle after the refill time sweeps the idle ones
    assert len(limiter) == 1
    # V0 comes back with a full bucket, as it would have had anyway.
    assert admitted(limiter, "V0", [6.0] * 20) == 10


def test_memory_is_capped_whatever_vehicles_appear() -> None:
    limiter = VehicleRateLimiter(rate=1.0, burst=100, max_vehicles=500)
    for i in range(20_000):
        limiter.allow(f"V{i}", i * 0.001)  # all still active: none is idle long enough
        assert len(limiter) <= 500


@pytest.mark.parametrize("rate, burst", [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        VehicleRateLimiter(rate=rate, burst=burst)


@pytest.mark.parametrize(
    "line, setting",
    [
        ("vehicle_rate_per_s = -1", "bridge.vehicle_rate_per_s"),
        ("vehicle_burst = 0", "bridge.vehicle_burst"),
        ("max_past_age_s = 0", "bridge.max_past_age_s"),
        ("max_json_depth = 65", "bridge.max_json_depth"),
    ],
)
def test_bad_limits_fail_at_start_up_naming_the_setting(
    tmp_path: Path, line: str, setting: str
) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(f"[bridge]\n{line}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.setting == setting


def test_the_bridge_takes_its_limits_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        "[bridge]\nvehicle_rate_per_s = 2.5\nvehicle_burst = 7\n"
        "max_past_age_s = 600\nmax_json_depth = 4\n"
    )
    bridge = Bridge(load(path))
    assert bridge.limiter is not None and (bridge.limiter.rate, bridge.limiter.burst) == (2.5, 7)
    assert (bridge.limits.max_past_age_s, bridge.limits.max_depth) == (600, 4)
    path.write_text("[bridge]\nvehicle_rate_per_s = 0\n")
    assert Bridge(load(path)).limiter is None  # 0 turns the limit off
