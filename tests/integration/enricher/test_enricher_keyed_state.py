"""A declared stream whose features follow a card across devices, in the real enricher: the
card's state is shared by every device using it, written to the changelog and restored by
the next enricher."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import msgspec
import pytest

from edge import config as edge_config
from edge.vault.setup import fleet_tokenizer
from shared import contracts, streams
from shared.config import convert
from shared.contracts import AnonRecord
from shared.features.state import CARD, CardState, state_key
from shared.infra.topics_admin import ensure_topics
from shared.kafka_config import KafkaSettings
from tests.declared_records import declared
from tests.integration.enricher.test_enricher import run_enricher, settings
from tests.support import consume_all, producer, value_of

pytestmark = pytest.mark.integration

DECLARATION = """
[stream]
name = "{name}"
device = {{ field = "unit", pattern = "^U-[0-9]{{3}}$", noun = "unit" }}
time = {{ field = "t", unit = "ms" }}
alerts = {{ kind = "event" }}
cell = ["lat", "lon"]

[fields]
unit = {{ type = "str" }}
t = {{ type = "int", unit = "ms" }}
card_number = {{ type = "str", pii = "token", token_kind = "card" }}
amount = {{ type = "float" }}
merchant_id = {{ type = "str" }}
lat = {{ type = "float" }}
lon = {{ type = "float" }}

[features]
amount = ["value"]
uses_10m = {{ named = "card_uses_10m" }}
units_1h = {{ named = "card_vehicles_1h" }}
since_last_s = {{ named = "card_since_last_s" }}
"""
CARD_NUMBER = "4000123412341234"
T0_MS = 1_767_600_000_000


def test_a_cards_state_is_shared_by_its_devices_and_survives_a_restart(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    name = f"buys_{uuid.uuid4().hex[:6]}"
    (tmp_path / "streams").mkdir()
    (tmp_path / "streams" / f"{name}.toml").write_text(DECLARATION.format(name=name))
    with declared(tmp_path / "streams") as found:
        stream = found[name]
        ensure_topics(edge_kafka, "edge", 1)
        spec = streams.get(name)
        # One card, used a minute apart by three units in turn, twice round.
        uses = [
            spec.event(
                event_id=f"{name}-{i}",
                unit=f"U-00{i % 3}",
                t=T0_MS + i * 60_000,
                card_number=CARD_NUMBER,
                amount=20.0 + i,
                merchant_id=f"M{i}",
                lat=52.5,
                lon=13.4,
            )
            for i in range(6)
        ]
        data = tmp_path / "data"
        cfg_dict = settings(edge_kafka, data)
        cfg_dict["streams"] = {"dir": str(tmp_path / "streams")}
        cfg = convert(cfg_dict, edge_config.EdgeConfig)

        def send(events: list[msgspec.Struct]) -> None:
            # One partition: the uses reach the enricher in the order they were made.
            p = producer(edge_kafka)
            for e in events:
                key = e.unit.encode()  # type: ignore[attr-defined]
                p.produce(spec.raw_topic, key=key, value=contracts.encode(e), partition=0)
            assert p.flush(30) == 0

        send(uses[:3])
        first = run_enricher(cfg)
        # Kept by the card's token, in the namespace payments' cards are kept in.
        key = state_key(CARD, fleet_tokenizer(cfg).token("card", CARD_NUMBER))
        assert [k for k in first.state if k.startswith(state_key(CARD, ""))] == [key]
        send(uses[3:])
        second = run_enricher(cfg)  # restores the card's state from the changelog
        card = second.state[key]
        assert isinstance(card, CardState) and card.n == 6

        # anon.* is keyed by the unit: in time order across its partitions.
        records = sorted(
            (
                msgspec.json.decode(value_of(m), type=AnonRecord)
                for m in consume_all(edge_kafka, spec.anon_topic, expect=6)
            ),
            key=lambda r: r.ts,
        )
        assert [r.event_id for r in records] == [e.event_id for e in uses]  # type: ignore[attr-defined]
        assert [r.features["uses_10m"] for r in records] == [1, 2, 3, 4, 5, 6]
        assert [r.features["units_1h"] for r in records] == [1, 2, 3, 3, 3, 3]
        # A minute between uses: the stream's millisecond time read as seconds.
        assert [r.features["since_last_s"] for r in records[1:]] == [round(math.log1p(60.0), 3)] * 5
        raw = b"".join(value_of(m) for m in consume_all(edge_kafka, spec.anon_topic, expect=6))
        assert CARD_NUMBER.encode() not in raw
        assert stream.feature_names == ["amount", "uses_10m", "units_1h", "since_last_s"]
