"""Pure validation of one MQTT message: topic, size, nesting, contract, VIN match, device clock.

No I/O and no clock of its own (``now`` is passed in), so every rule is tested without a broker.
A failure raises :class:`~edge.bridge.errors.Rejected` with a reason from :data:`REASONS`
(a fixed set: it labels a metric) and a detail naming the field.

>>> from shared import streams
>>> limits = Limits(streams={"telemetry": streams.TELEMETRY}, max_payload_bytes=16384,
...                 max_future_skew_s=300.0, max_past_age_s=86400.0, max_depth=16)
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

import numpy as np

from edge.bridge.errors import Rejected
from shared import contracts, streams
from shared.contracts import MAX_MESSAGE_BYTES
from shared.errors import ContractError
from shared.streams import StreamSpec

REASONS = (
    "oversize",  # payload over the configured / contract byte limit
    "unknown_topic",  # not fleet/{vin}/{known stream}
    "invalid_json",  # not parseable JSON (or not UTF-8)
    "wrong_type",  # a field (or the document) has the wrong JSON type
    "missing_field",  # a required field is absent
    "invalid_value",  # right type, but out of range / bad pattern / unknown enum value
    "unsupported_schema",  # schema version this build does not read
    "vin_mismatch",  # payload VIN differs from the topic's VIN
    "future_timestamp",  # device time too far ahead of the gateway's clock
    "too_deep",  # JSON nests deeper than the limit (checked before decoding)
    "too_old",  # device time further behind the gateway's clock than the limit
    "rate_limited",  # the vehicle sent more than its rate (the bridge's token bucket)
    "internal_error",  # bridging this message raised; the detail names the exception
)


# Decoders recurse per nesting level and give up near the interpreter's recursion limit
# (RecursionError, not a decode error), so no setting may come near it.
MAX_DEPTH_CEILING = 64


@dataclass(frozen=True)
class Limits:
    """What the bridge accepts: the streams by MQTT suffix, a byte limit, JSON nesting, and how
    far device time may be ahead of or behind the gateway's clock."""

    streams: Mapping[str, StreamSpec] = field(default_factory=dict)
    max_payload_bytes: int = MAX_MESSAGE_BYTES
    max_future_skew_s: float = 300.0
    max_past_age_s: float = 3 * 86_400.0
    max_depth: int = 16

    @classmethod
    def from_registry(
        cls,
        max_payload_bytes: int = MAX_MESSAGE_BYTES,
        max_future_skew_s: float = 300.0,
        max_past_age_s: float = 3 * 86_400.0,
        max_depth: int = 16,
    ) -> Limits:
        by_suffix = {spec.mqtt_suffix: spec for spec in streams.all_streams()}
        return cls(
            by_suffix,
            min(max_payload_bytes, MAX_MESSAGE_BYTES),
            max_future_skew_s,
            max_past_age_s,
            min(max_depth, MAX_DEPTH_CEILING),
        )


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
        raise Rejected(
            "unknown_topic",
            f"no stream for topic suffix {parts[2][:100]!r}; known: {sorted(limits.streams)}",
        )
    return spec, parts[1]


# Per byte: +1 opens an array/object, -1 closes one (indexed by the byte's value).
_STEP = np.zeros(256, dtype=np.int8)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_QUOTE = ord('"')


def nesting_exceeds(payload: bytes, limit: int) -> bool:
    """Whether JSON ``payload`` nests arrays/objects more than ``limit`` levels deep.

    A byte scan before any decoder recurses. A document with at most ``limit`` brackets
    cannot nest deeper: the common case (an event has one ``{``) costs two ``count``s.
    Otherwise, vectorised: drop escaped backslashes and quotes, so every quote left opens or
    closes a string; brackets outside strings step the depth up or down; the deepest point
    of the running sum is the nesting. Exact for well-formed JSON; for broken JSON it is the
    depth a decoder would reach before failing (unclosed brackets count).

    >>> nesting_exceeds(b'{"a":[[1]],"b":"[[[["}', 2), nesting_exceeds(b'[[[', 2)
    (True, True)
    >>> nesting_exceeds(b'{"a":[1,[2]],"b":"[[[[", "c":{}, "d":"\\\\", "e":"\\"[["}', 3)
    False
    """
    if payload.count(b"[") + payload.count(b"{") <= limit:
        return False
    text = np.frombuffer(payload.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    outside = 1 - (np.cumsum(text == _QUOTE, dtype=np.int32) & 1)
    depth = np.cumsum(_STEP[text] * outside)
    return bool(depth.size) and int(depth.max()) > limit


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
    spec, topic_vin = parse_topic(topic, limits)
    return check(spec, topic_vin, payload, now, limits)


def check(spec: StreamSpec, topic_vin: str, payload: bytes, now: float, limits: Limits) -> Accepted:
    """Check the payload of a message whose topic ``parse_topic`` accepted.

    Size and nesting first: both are bounded before a decoder sees the bytes.
    """
    if len(payload) > limits.max_payload_bytes:
        raise Rejected(
            "oversize",
            f"payload is {len(payload)} bytes, over the {limits.max_payload_bytes} limit",
        )
    if nesting_exceeds(payload, limits.max_depth):
        raise Rejected("too_deep", f"JSON nests more than {limits.max_depth} levels deep")
    try:
        event = contracts.decode(spec.event, payload)
    except ContractError as exc:
        raise Rejected(classify(exc), str(exc)) from None
    # The stream's event type is only known at run time, hence getattr.
    device: str = getattr(event, spec.device_field)
    if device != topic_vin:
        # Neither id is quoted: details go to dlq.ingest, which holds no personal data.
        raise Rejected(
            "vin_mismatch", f"the payload's {spec.device_field} differs from the topic's device id"
        )
    try:
        ts = spec.event_time(event)
    except (ValueError, OverflowError, TypeError):
        field_name = _time_field(spec)
        unit = spec.declaration.time.unit if spec.declaration is not None else "s"
        raise Rejected(
            "invalid_value",
            f"field {field_name}: not a device time in unit {unit!r} (at {field_name})",
        ) from None
    if not math.isfinite(ts) or ts - now > limits.max_future_skew_s:
        raise Rejected(
            "future_timestamp",
            f"{_time_field(spec)} {ts} is {ts - now:.0f}s ahead "
            f"of the gateway clock (limit "
            f"{limits.max_future_skew_s:.0f}s)",
        )
    if now - ts > limits.max_past_age_s:
        # No value in the detail: the field and the limit say enough.
        raise Rejected(
            "too_old",
            f"field {_time_field(spec)}: device time more than "
            f"{limits.max_past_age_s:.0f}s behind the gateway clock",
        )
    return Accepted(spec, device, ts)


def _time_field(spec: StreamSpec) -> str:
    return spec.declaration.time.field if spec.declaration is not None else "ts"
