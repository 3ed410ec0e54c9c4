"""Pure validation of one MQTT message: topic, size, contract, VIN match, device clock.

No I/O and no clock of its own (``now`` is passed in), so every rule is tested without a broker.
A failure raises :class:`~edge.bridge.errors.Rejected` with a reason from :data:`REASONS`
(a fixed set: it labels a metric) and a detail naming the field.

>>> from shared import streams
>>> limits = Limits(streams={"telemetry": streams.TELEMETRY}, max_payload_bytes=16384,
...                 max_future_skew_s=300.0)
>>> validate("fleet/1HGCM82633A004352/telemetry", b"{}", 1e9, limits)
Traceback (most recent call last):
...
edge.bridge.errors.Rejected: missing_field: Object missing required field `event_id` (at event_id)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from edge.bridge.errors import Rejected
from shared import contracts, streams
from shared.contracts import MAX_MESSAGE_BYTES
from shared.errors import ContractError
from shared.streams import StreamSpec

REASONS = (
    "oversize",           # payload over the configured / contract byte limit
    "unknown_topic",      # not fleet/{vin}/{known stream}
    "invalid_json",       # not parseable JSON (or not UTF-8)
    "wrong_type",         # a field (or the document) has the wrong JSON type
    "missing_field",      # a required field is absent
    "invalid_value",      # right type, but out of range / bad pattern / unknown enum value
    "unsupported_schema", # schema version this build does not read
    "vin_mismatch",       # payload VIN differs from the topic's VIN
    "future_timestamp",   # device time too far ahead of the gateway's clock
)


@dataclass(frozen=True)
class Limits:
    """What the bridge accepts: the streams by MQTT suffix, a byte limit and a clock skew."""

    streams: Mapping[str, StreamSpec] = field(default_factory=dict)
    max_payload_bytes: int = MAX_MESSAGE_BYTES
    max_future_skew_s: float = 300.0

    @classmethod
    def from_registry(cls, max_payload_bytes: int = MAX_MESSAGE_BYTES,
                      max_future_skew_s: float = 300.0) -> Limits:
        by_suffix = {spec.mqtt_suffix: spec for spec in streams.all_streams()}
        return cls(by_suffix, min(max_payload_bytes, MAX_MESSAGE_BYTES), max_future_skew_s)


class Accepted(NamedTuple):
    spec: StreamSpec
    vin: str
    ts: float


def parse_topic(topic: str, limits: Limits) -> tuple[StreamSpec, str]:
    """``fleet/{vin}/{suffix}`` -> (stream spec, vin) or Rejected("unknown_topic")."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "fleet" or not parts[1]:
        raise Rejected("unknown_topic", f"topic {topic[:200]!r} is not fleet/<vin>/<stream>")
    spec = limits.streams.get(parts[2])
    if spec is None:
        raise Rejected("unknown_topic", f"no stream for topic suffix {parts[2][:100]!r}; "
                                        f"known: {sorted(limits.streams)}")
    return spec, parts[1]


def classify(exc: ContractError) -> str:
    """Map a contract error to one of REASONS."""
    text = str(exc)
    if text.startswith("not valid JSON"):
        return "invalid_json"
    if text.startswith("message is "):
        return "oversize"
    if text.startswith("Object missing required field"):
        return "missing_field"
    if text.startswith("schema version"):
        return "unsupported_schema"
    if text.startswith("Expected `") and "`, got `" in text:
        return "wrong_type"
    return "invalid_value"


def validate(topic: str, payload: bytes, now: float, limits: Limits) -> Accepted:
    """Check one message; returns what the bridge needs to produce it, or raises Rejected."""
    if len(payload) > limits.max_payload_bytes:
        raise Rejected("oversize", f"payload is {len(payload)} bytes, over the "
                                   f"{limits.max_payload_bytes} limit")
    spec, topic_vin = parse_topic(topic, limits)
    try:
        event = contracts.decode(spec.event, payload)
    except ContractError as exc:
        raise Rejected(classify(exc), str(exc)) from None
    # The stream's event type is only known at run time, hence getattr.
    vin: str = getattr(event, "vin")  # noqa: B009
    if vin != topic_vin:
        # Neither VIN is quoted: details go to dlq.ingest, which holds no personal data.
        raise Rejected("vin_mismatch", "the payload's vin differs from the topic's vin")
    ts: float = getattr(event, "ts")  # noqa: B009
    if not math.isfinite(ts) or ts - now > limits.max_future_skew_s:
        raise Rejected("future_timestamp", f"ts {ts} is {ts - now:.0f}s ahead of the gateway "
                                           f"clock (limit {limits.max_future_skew_s:.0f}s)")
    return Accepted(spec, vin, ts)
