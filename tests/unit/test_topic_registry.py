"""Stream specs and the topic registry: PII stays on the edge, declarations are checked."""

from __future__ import annotations

import pytest

from shared import contracts as c
from shared import streams, topics
from shared.errors import ConfigError


def test_builtin_streams_are_registered() -> None:
    names = {s.name for s in streams.all_streams()}
    assert {"telemetry", "payments"} <= names
    assert streams.by_mqtt_suffix("payments") is streams.PAYMENTS
    assert streams.by_mqtt_suffix("status") is None


def test_pii_fields_are_tokenized_or_dropped_in_anon_records() -> None:
    for spec in streams.all_streams():
        anon_fields = set(spec.anon_event.__struct_fields__)
        assert not (spec.pii_fields & anon_fields), f"{spec.name} anon record carries PII"
        for pii, token in spec.tokens.items():
            assert pii in spec.pii_fields and token in anon_fields


def test_raw_topics_are_never_replicated() -> None:
    edge = {t.name: t for t in topics.registry("edge")}
    assert {"raw.telemetry", "raw.payments", "dlq.ingest"} <= set(edge)
    assert not any(name.startswith("raw.") for name in topics.replicated_edge_topics())
    assert "anon.payments" in topics.replicated_edge_topics()
    # Compacted, never cut by time, cut by size (invented keys would otherwise pile up).
    models = edge["cloud.models"].configs()
    assert edge["cloud.models"].compacted and models["cleanup.policy"] == "compact,delete"
    assert models["retention.ms"] == "-1"
    assert int(models["retention.bytes"]) == topics.MODELS_RETENTION_BYTES
    assert edge["raw.payments"].retention_ms < edge["anon.payments"].retention_ms
    # Rejected raw input holds what raw.* holds: it must not outlive it.
    raw = min(t.retention_ms for name, t in edge.items() if name.startswith("raw."))
    assert edge["dlq.ingest"].retention_ms <= raw and not edge["dlq.ingest"].replicate


def test_a_new_stream_is_added_by_declaring_it() -> None:
    class Tachograph(c.Event, frozen=True, kw_only=True):
        vin: c.Vin
        driver_id: str
        hours_driven: float

    spec = streams.StreamSpec(
        name="tachograph",
        event=Tachograph,
        anon_event=c.AnonTelemetry,
        mqtt_suffix="tachograph",
        key_field="vin",
        pii_fields=frozenset({"vin", "driver_id"}),
        tokens={"vin": "vehicle_token", "driver_id": "driver_token"},
        numeric_fields=("hours_driven",),
        anon_key="vehicle_token",
    )
    try:
        streams.register(spec)
        names = {t.name for t in topics.registry("edge")}
        assert {"raw.tachograph", "anon.tachograph", "scores.tachograph"} <= names
        assert "anon.tachograph" in topics.replicated_edge_topics()
    finally:
        streams._REGISTRY.pop("tachograph", None)


def test_declaring_a_field_the_event_lacks_is_an_error() -> None:
    with pytest.raises(ConfigError, match="lacks"):
        streams.StreamSpec(
            name="x",
            event=c.Telemetry,
            anon_event=c.AnonTelemetry,
            mqtt_suffix="x",
            key_field="vin",
            pii_fields=frozenset({"nope"}),
        )
    with pytest.raises(ConfigError, match="anon key 'card_token' not in its anon record"):
        streams.StreamSpec(
            name="x",
            event=c.Telemetry,
            anon_event=c.AnonTelemetry,
            mqtt_suffix="x",
            key_field="vin",
            pii_fields=frozenset({"vin"}),
            anon_key="card_token",
        )
    with pytest.raises(ConfigError, match="unknown stream"):
        streams.get("nope")
