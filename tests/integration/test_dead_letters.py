"""The dead letters hold no personal data in the clear, and no longer than raw.* does.

The attack: a vehicle publishes rejected messages full of personal data (its VIN, a driver id,
a card number, names) and a local reader of ``dlq.ingest`` looks for them in the raw bytes of
every record, key and value, including base64 inside the JSON. The operator still gets the
payloads back, decrypted on the gateway, through ``fleetsentry edge dlq show``. The enricher,
which dead-letters raw.* records that break their contract, is held to the same.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from edge import config as edge_config
from edge.cli import edge as edge_cli
from edge.dlq import DeadLetters
from edge.enricher import Enricher
from edge.vault.setup import fleet_tokenizer, open_vault
from shared import contracts, topics
from shared.config import convert
from shared.infra.stack import Stack
from shared.infra.topics_admin import ensure_topics
from shared.kafka_config import KafkaSettings, client_config
from tests.bridge_payloads import encode, payment
from tests.bridge_support import (
    BridgeProcess,
    drop_session,
    mqtt_client,
    publish_all,
    read_topic,
    unique,
    write_edge_toml,
)
from tests.support import kafka_table, produce_all

pytestmark = pytest.mark.integration

VIN = "WVWZZZ1JZXW4711DL"
OTHER_VIN = "1FTFW1ET5DFC10423"
DRIVER = "drv-dlq-5512"
NAME = "Quentin Marlowe"
CARD = "4929170388125567"


def _personal_payment(event_id: str) -> dict[str, object]:
    doc = payment(VIN, event_id, time.time())
    doc.update(driver_id=DRIVER, driver_name=NAME, cardholder=NAME.upper(), card_number=CARD)
    return doc


def _attack_messages() -> list[tuple[str, bytes]]:
    """Four rejected messages, each carrying the VIN, the driver, the card and the name."""
    wrong_type = _personal_payment("dlq-1")
    wrong_type["amount"] = "lots"
    mismatch = _personal_payment("dlq-2")
    mismatch["vin"] = OTHER_VIN
    quoted = _personal_payment("dlq-3")
    quoted["category"] = NAME  # msgspec quotes an unknown enum value in its error
    broken = encode(_personal_payment("dlq-4"))[:-7]  # truncated JSON
    topic = f"fleet/{VIN}/payments"
    return [
        (topic, encode(wrong_type)),
        (topic, encode(mismatch)),
        (topic, encode(quoted)),
        (topic, broken),
    ]


PII = [VIN, OTHER_VIN, DRIVER, NAME, NAME.upper(), CARD]


def _strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _readable(raw: bytes) -> list[bytes]:
    """The bytes as stored plus every base64 string inside them, decoded."""
    out = [raw]
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return out
    for s in _strings(doc):
        try:
            out.append(base64.b64decode(s, validate=True))
        except (binascii.Error, ValueError):
            pass
    return out


@pytest.fixture
def bridge(stack: Stack, tmp_path: Path) -> Iterator[Path]:
    edge_id = unique("dlq")
    config = write_edge_toml(tmp_path / "edge.toml", stack, edge_id, unique("g"))
    proc = BridgeProcess(config).start()
    try:
        proc.wait_connected()
        yield config
    finally:
        proc.stop()
        drop_session(stack, f"{edge_id}-bridge-0")


def test_dead_letters_hold_no_personal_data_in_the_clear(
    stack: Stack, bridge: Path, edge_kafka: KafkaSettings
) -> None:
    stack.mqtt.register_vehicles({VIN: "pw-dlq"})
    sent = _attack_messages()
    car = mqtt_client(stack, VIN, user=VIN, password="pw-dlq")
    try:
        publish_all(car, sent)
    finally:
        car.disconnect()
        car.loop_stop()

    def from_bridge(records: list) -> list:
        return [r for r in records if r.key() != b"enricher"]

    records = from_bridge(
        read_topic(
            edge_kafka,
            topics.DLQ_INGEST,
            done=lambda rs: len(from_bridge(rs)) >= len(sent),
            timeout=60,
        )
    )
    assert len(records) == len(sent), f"{len(records)} dead letters for {len(sent)} rejects"
    for rec in records:
        for where, raw in (("key", rec.key() or b""), ("value", rec.value() or b"")):
            for readable in _readable(raw):
                leaked = [p for p in PII if p.encode() in readable]
                assert not leaked, f"dead letter {where} holds {leaked} in the clear: {raw[:300]!r}"

    # The operator reads them back on the gateway: same bytes, with reason and detail.
    result = CliRunner().invoke(
        edge_cli,
        ["dlq", "show", "--config", str(bridge), "--limit", "10", "--actor", "test-operator"],
    )
    assert result.exit_code == 0, result.output
    shown = [
        d for d in map(json.loads, result.output.splitlines()) if d["source"].startswith("mqtt:")
    ]
    payloads = [
        d["payload"].encode() if "payload" in d else base64.b64decode(d["payload_b64"])
        for d in shown
    ]
    assert sorted(payloads) == sorted(p for _, p in sent)
    assert sorted(d["reason"] for d in shown) == sorted(
        ["wrong_type", "vin_mismatch", "invalid_value", "invalid_json"]
    )
    assert all(d["detail"] and d["source"].startswith("mqtt:fleet/") for d in shown)
    with open_vault(edge_config.load(bridge)) as vault:
        assert [(a["actor"], a["action"]) for a in vault.audit_log(5)] == [
            ("test-operator", "dlq_show")
        ]


def _retention(admin: AdminClient, name: str) -> int:
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result(30)
    return int(configs["retention.ms"].value)


def _settled_retention(admin: AdminClient, name: str, until: Callable[[int], bool]) -> int:
    """The topic's retention.ms once ``until`` holds, or after 15 s: a config change reaches
    the broker's metadata a moment after the controller confirmed it."""
    deadline = time.monotonic() + 15
    value = _retention(admin, name)
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = _retention(admin, name)
    return value


def test_dead_letters_are_kept_no_longer_than_raw_events(edge_kafka: KafkaSettings) -> None:
    admin = AdminClient(client_config(edge_kafka))
    raw = min(_retention(admin, t) for t in (topics.RAW_TELEMETRY, topics.RAW_PAYMENTS))
    assert _retention(admin, topics.DLQ_INGEST) <= raw
    # A gateway installed before keeps 14 days until provisioning runs again, which fixes it.
    old = 14 * topics.DAY_MS
    res = ConfigResource(
        ConfigResource.Type.TOPIC,
        topics.DLQ_INGEST,
        incremental_configs=[
            ConfigEntry("retention.ms", str(old), incremental_operation=AlterConfigOpType.SET)
        ],
    )
    admin.incremental_alter_configs([res])[res].result(30)
    assert _settled_retention(admin, topics.DLQ_INGEST, lambda v: v == old) == old
    ensure_topics(edge_kafka, "edge", 1)
    assert _settled_retention(admin, topics.DLQ_INGEST, lambda v: v <= raw) <= raw


def test_the_enricher_seals_the_raw_records_it_rejects(
    edge_kafka: KafkaSettings, tmp_path: Path
) -> None:
    # A raw.* record that breaks its contract (written by anything but the bridge).
    bad = _personal_payment("dlq-enricher")
    bad["category"] = NAME
    value = encode(bad)
    produce_all(edge_kafka, topics.RAW_PAYMENTS, [(VIN.encode(), value)])
    cfg = convert(
        {
            "edge_id": unique("dlq"),
            "data_dir": str(tmp_path),
            "kafka": kafka_table(edge_kafka),
            "metrics": {"base_port": 0},
            "enricher": {"group": unique("enricher"), "batch_wait_ms": 50.0},
        },
        edge_config.EdgeConfig,
    )
    vault = open_vault(cfg)
    enricher = Enricher(cfg, vault, fleet_tokenizer(cfg))
    enricher.start()
    try:
        deadline = time.monotonic() + 60
        while enricher.rejected < 1 and time.monotonic() < deadline:
            enricher.step()
    finally:
        enricher.close()
        vault.close()
    assert enricher.rejected == 1

    def mine(records: list) -> list:
        return [r for r in records if r.key() == b"enricher"]

    records = mine(read_topic(edge_kafka, topics.DLQ_INGEST, done=lambda rs: mine(rs), timeout=60))
    assert len(records) == 1
    raw = records[0].value()
    for readable in _readable(raw):
        leaked = [p for p in PII if p.encode() in readable]
        assert not leaked, f"the enricher's dead letter holds {leaked} in the clear: {raw[:300]!r}"
    letter = msgspec.json.decode(raw, type=contracts.DeadLetter)
    assert letter.source.startswith(f"{topics.RAW_PAYMENTS}/")
    assert DeadLetters.load(cfg, create=False).open(letter) == value
