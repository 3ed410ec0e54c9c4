"""How long a stream's features remember an event: from its declaration, built-in or not."""

from __future__ import annotations

import pytest

from shared.declarations import DeclarationError, builtin, load_text
from shared.declarations.memory import memory_events, memory_s
from shared.declarations.schema import Stream
from shared.features import feature_memory_s
from shared.features import telemetry as tel

DOORS = """
[stream]
name = "doors"
device = {{ field = "bus", pattern = "^B[0-9]+$" }}
time = {{ field = "t" }}
{extra}

[fields]
bus = {{ type = "str" }}
t = {{ type = "float" }}
opens = {{ type = "int", typical_std = 2.0 }}

[features]
opens = {features}
"""


def _doors(features: str = '["value", "zscore"]', extra: str = "") -> Stream:
    return load_text(DOORS.format(features=features, extra=extra), "doors.toml")


def test_the_shipped_telemetry_remembers_what_its_code_always_did() -> None:
    # The rolling statistics' 5 % horizon at one frame a second, longer than the coolant
    # trend's three time constants (a named transform's own memory).
    telemetry = builtin()["telemetry"]
    assert telemetry.interval_s == 1.0  # one frame a second
    assert feature_memory_s("telemetry") == tel.MEMORY_FRAMES * 1.0
    assert feature_memory_s("telemetry") >= 3 * tel.TREND_TAU_S
    # Payments alert on each event alone: no episode has a tail.
    assert feature_memory_s("payments") == 0.0


def test_a_zscore_remembers_until_an_event_weighs_under_five_percent() -> None:
    stream = _doors()
    alpha = next(
        f.params["alpha"] for f in stream.features if f.then == "zscore" or f.transform == "zscore"
    )
    n = memory_events(stream)
    assert (1 - alpha) ** n <= 0.05 < (1 - alpha) ** (n - 1)
    assert memory_s(stream, interval_s=2.0) == 2.0 * n


def test_a_stream_without_rolling_features_remembers_one_event_or_none() -> None:
    assert memory_events(_doors('["value"]')) == 0
    assert memory_events(_doors('["value", "delta"]')) == 1
    assert memory_s(_doors('["value", "delta"]'), interval_s=5.0) == 5.0


def test_the_declared_interval_is_used_unless_the_caller_measured_one() -> None:
    stream = _doors(extra="interval_s = 3.0")
    n = memory_events(stream)
    assert memory_s(stream) == 3.0 * n
    assert memory_s(stream, interval_s=1.0) == 1.0 * n
    assert memory_s(_doors()) == 0.0  # no interval known: nothing to count in seconds


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_an_interval_must_be_a_positive_number(bad: str) -> None:
    with pytest.raises(DeclarationError) as err:
        _doors(extra=f"interval_s = {bad}")
    assert "stream.interval_s" in str(err.value) and "doors.toml" in str(err.value)


def test_event_alerts_have_no_tail() -> None:
    stream = _doors(extra='interval_s = 1.0\nalerts = { kind = "event" }')
    assert memory_events(stream) > 0
    assert memory_s(stream) == memory_s(stream, interval_s=10.0) == 0.0
