"""The bridge's validation rules, without a broker."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.bridge.errors import Rejected
from edge.bridge.validate import (
    MAX_DEPTH_CEILING,
    REASONS,
    Limits,
    classify,
    nesting_exceeds,
    parse_topic,
    validate,
)
from shared import contracts, streams
from shared.errors import ContractError
from tests.bridge_payloads import encode, malformed, payment, telemetry

NOW = 1_750_000_000.0
VIN = "1HGCM82633A004352"
LIMITS = Limits.from_registry(max_future_skew_s=300.0)


def reason(topic: str, payload: bytes, limits: Limits = LIMITS) -> str:
    with pytest.raises(Rejected) as info:
        validate(topic, payload, NOW, limits)
    assert info.value.reason in REASONS
    return info.value.reason


def test_valid_telemetry_and_payment_are_accepted() -> None:
    acc = validate(f"fleet/{VIN}/telemetry", encode(telemetry(VIN, "e1", NOW - 1)), NOW, LIMITS)
    assert acc.spec is streams.TELEMETRY and acc.vin == VIN and acc.ts == NOW - 1
    acc = validate(f"fleet/{VIN}/payments", encode(payment(VIN, "e2", NOW)), NOW, LIMITS)
    assert acc.spec is streams.PAYMENTS and acc.spec.raw_topic == "raw.payments"


def test_timestamp_within_skew_is_accepted_beyond_it_rejected() -> None:
    topic = f"fleet/{VIN}/telemetry"
    validate(topic, encode(telemetry(VIN, "e1", NOW + 299)), NOW, LIMITS)
    assert reason(topic, encode(telemetry(VIN, "e1", NOW + 301))) == "future_timestamp"
    strict = Limits.from_registry(max_future_skew_s=0.0)
    assert reason(topic, encode(telemetry(VIN, "e1", NOW + 1)), strict) == "future_timestamp"


def test_vin_of_topic_must_match_payload() -> None:
    other = "2T1BURHE0JC000001"
    assert reason(f"fleet/{other}/telemetry", encode(telemetry(VIN, "e", NOW))) == "vin_mismatch"


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/X/status",
        "fleet//telemetry",
        "other/ABC/telemetry",
        "fleet/A/B/telemetry",
        "fleet",
        "",
    ],
)
def test_unknown_topics(topic: str) -> None:
    assert reason(topic, b"{}") == "unknown_topic"


def test_parse_topic_returns_spec_and_vin() -> None:
    spec, vin = parse_topic(f"fleet/{VIN}/payments", LIMITS)
    assert spec is streams.PAYMENTS and vin == VIN


def test_oversize_is_rejected_before_parsing() -> None:
    small = Limits.from_registry(max_payload_bytes=1000)
    payload = encode(telemetry(VIN, "e" * 64, NOW)) + b" " * 600
    assert len(payload) > 1000
    assert reason(f"fleet/{VIN}/telemetry", payload, small) == "oversize"
    # The configured limit can only tighten the contract's.
    assert (
        Limits.from_registry(max_payload_bytes=10**6).max_payload_bytes
        == contracts.MAX_MESSAGE_BYTES
    )


@pytest.mark.parametrize(
    "payload, expected",
    [
        (b"{", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "wrong_type"),
        (b"null", "wrong_type"),
        (b"{}", "missing_field"),
    ],
)
def test_document_level_errors(payload: bytes, expected: str) -> None:
    assert reason(f"fleet/{VIN}/telemetry", payload) == expected


def test_field_errors_name_the_field() -> None:
    doc = telemetry(VIN, "e", NOW)
    doc["coolant_c"] = "hot"
    with pytest.raises(Rejected) as info:
        validate(f"fleet/{VIN}/telemetry", encode(doc), NOW, LIMITS)
    assert info.value.reason == "wrong_type" and "coolant_c" in info.value.detail


def test_classify_covers_contract_errors() -> None:
    assert classify(ContractError("schema version 2 is not supported")) == "unsupported_schema"
    assert classify(ContractError("Expected `float` <= 90.0 (at lat)")) == "invalid_value"
    assert classify(ContractError("Invalid enum value 'x' (at category)")) == "invalid_value"


def test_seeded_malformed_generator_matches_validation() -> None:
    """Every generated bad message is rejected with the reason the generator intended."""
    rng = random.Random(7)
    seen = set()
    for i in range(3000):
        topic, payload, expected = malformed(rng, VIN, f"bad-{i}", NOW)
        got = reason(topic, payload)
        assert got == expected, (topic, payload[:200], got, expected)
        seen.add(got)
    # The bridge itself gives the others: rate_limited before validation, internal_error
    # when handling a message raises.
    assert seen == set(REASONS) - {"unknown_topic", "rate_limited", "internal_error"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_escape_as_anything_but_rejected(payload: bytes) -> None:
    try:
        validate(f"fleet/{VIN}/telemetry", payload, NOW, LIMITS)
    except Rejected as rej:
        assert rej.reason in REASONS


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(list(telemetry(VIN, "e", NOW))),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
        max_size=30,
    )
)
def test_arbitrary_documents_are_accepted_or_rejected_with_a_reason(doc: dict) -> None:
    base = telemetry(VIN, "e", NOW)
    base.update(doc)
    try:
        acc = validate(f"fleet/{VIN}/telemetry", encode(base), NOW, LIMITS)
    except Rejected as rej:
        assert rej.reason in REASONS
    else:
        assert acc.vin == VIN and acc.ts <= NOW + 300


def test_events_older_than_the_age_limit_are_too_old() -> None:
    topic = f"fleet/{VIN}/telemetry"
    day = 86_400.0
    validate(topic, encode(telemetry(VIN, "e", NOW - 3 * day + 1)), NOW, LIMITS)
    assert reason(topic, encode(telemetry(VIN, "e", NOW - 3 * day - 1))) == "too_old"
    assert reason(topic, encode(telemetry(VIN, "e", 1.0))) == "too_old"
    strict = Limits.from_registry(max_past_age_s=60.0)
    assert reason(topic, encode(telemetry(VIN, "e", NOW - 61)), strict) == "too_old"
    with pytest.raises(Rejected) as info:
        validate(topic, encode(telemetry(VIN, "e", 1.0)), NOW, LIMITS)
    assert "1.0" not in info.value.detail and VIN not in info.value.detail


@pytest.mark.parametrize("depth", [17, 100, 1000, 5000])
def test_deep_nesting_is_rejected_before_decoding(depth: int) -> None:
    doc = encode(telemetry(VIN, "e", NOW))[:-1] + b',"x":' + b"[" * depth + b"]" * depth + b"}"
    assert reason(f"fleet/{VIN}/telemetry", doc) == "too_deep"
    assert reason(f"fleet/{VIN}/telemetry", b"{" * depth) == "too_deep"


def test_the_depth_limit_is_configurable_and_capped() -> None:
    doc = encode(telemetry(VIN, "e", NOW))[:-1] + b',"x":[[[1]]]}'
    validate(f"fleet/{VIN}/telemetry", doc, NOW, LIMITS)  # depth 4: unknown field, ignored
    assert reason(f"fleet/{VIN}/telemetry", doc, Limits.from_registry(max_depth=3)) == "too_deep"
    assert Limits.from_registry(max_depth=10_000).max_depth == MAX_DEPTH_CEILING


def _depth(node: object) -> int:
    if isinstance(node, dict):
        return 1 + max((_depth(v) for v in node.values()), default=0)
    if isinstance(node, list):
        return 1 + max((_depth(v) for v in node), default=0)
    return 0


_TEXT = st.text(alphabet=st.sampled_from('[]{}"\\ab\u2028\x00'), max_size=8)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _TEXT),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=40,
)


@settings(max_examples=500, deadline=None)
@given(_JSON, st.booleans(), st.integers(min_value=0, max_value=12))
def test_the_nesting_scan_agrees_with_the_parsed_depth(
    doc: object, ascii_only: bool, limit: int
) -> None:
    raw = json.dumps(doc, ensure_ascii=ascii_only).encode()
    assert nesting_exceeds(raw, limit) == (_depth(doc) > limit)
