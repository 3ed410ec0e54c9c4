"""Dead letters: sealed payloads, tokenized sources, scrubbed details, no broker needed."""

from __future__ import annotations

import base64
import multiprocessing
import stat
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.bridge.errors import Rejected
from edge.bridge.validate import Limits, validate
from edge.config import EdgeConfig
from edge.dlq import DeadLetterError, DeadLetters, scrub
from edge.dlq.cli import _shown
from edge.vault import VaultError
from edge.vault.keyfile import load_or_create
from shared.contracts import DeadLetter
from shared.tokens import Tokenizer
from tests.bridge_payloads import encode, payment

VIN = "1HGCM82633A004352"
TOK = Tokenizer(b"unit-test-fleet-secret")
MASTER = b"m" * 32
PAYLOAD = encode(payment(VIN, "e1", 1_700_000_000.0))
PII = [VIN, "drv-0001", "Ada Example", "ADA EXAMPLE", "4111111111111111"]


def _letter(value: bytes) -> DeadLetter:
    return msgspec.json.decode(value, type=DeadLetter)


def test_a_letter_holds_the_payload_sealed_and_the_vehicle_as_its_token() -> None:
    letters = DeadLetters(MASTER, TOK)
    key, value = letters.from_mqtt(
        f"fleet/{VIN}/payments".encode(),
        "vin_mismatch",
        f"payload vin {VIN!r} differs",
        1_700_000_000.0,
        PAYLOAD,
    )
    letter = _letter(value)
    vehicle = TOK.token("vin", VIN)
    assert key == vehicle.encode() and letter.source == f"mqtt:fleet/{vehicle}/payments"
    assert letter.detail == "payload vin <redacted> differs"
    assert letter.length == len(PAYLOAD)
    for readable in (key, value, letter.sealed):
        assert not [p for p in PII if p.encode() in readable]
    # Another process (another salt) of the same gateway opens it; the digest matches.
    again = DeadLetters(MASTER, TOK)
    assert again.open(letter) == PAYLOAD
    assert again.digest(PAYLOAD) == letter.digest


def test_a_letter_cannot_be_opened_elsewhere_or_moved() -> None:
    letter = _letter(
        DeadLetters(MASTER, TOK).letter("raw.payments/0@7", "contract", "x", 1.0, PAYLOAD)
    )
    with pytest.raises(DeadLetterError, match="another master key"):
        DeadLetters(b"n" * 32, TOK).open(letter)
    with pytest.raises(DeadLetterError, match="altered"):
        DeadLetters(MASTER, TOK).open(msgspec.structs.replace(letter, source="raw.payments/0@8"))
    with pytest.raises(DeadLetterError, match="format"):
        DeadLetters(MASTER, TOK).open(msgspec.structs.replace(letter, sealed=b"\x09" + bytes(40)))


def test_a_topic_that_is_not_a_vehicle_stream_is_tokenized_whole() -> None:
    letters = DeadLetters(MASTER, TOK)
    source, key = letters.mqtt_source(f"fleet/{VIN}/Ada Example".encode())
    assert source.endswith("/other") and VIN not in source and "Ada" not in source
    source, key = letters.mqtt_source(f"odd/{VIN}".encode())
    assert source == f"mqtt:topic/{key.decode()}" and VIN not in source


def test_the_vin_mismatch_detail_quotes_no_vin() -> None:
    other = "2HGCM82633A004352"
    limits = Limits.from_registry()
    with pytest.raises(Rejected) as rej:
        validate(f"fleet/{other}/payments", PAYLOAD, 1_700_000_000.0, limits)
    assert rej.value.reason == "vin_mismatch"
    assert VIN not in rej.value.detail and other not in rej.value.detail


@given(st.text(min_size=1, max_size=80))
def test_scrub_removes_any_quoted_value(value: str) -> None:
    assert (
        scrub(f"Invalid enum value {value!r} (at category)")
        == "Invalid enum value <redacted> (at category)"
    )
    # Cut off mid-value (a detail is truncated), it is still removed.
    assert scrub(f"Invalid enum value {value!r}"[:-1]) == "Invalid enum value <redacted>"


@pytest.mark.parametrize(
    "card", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111", "378282246310005"]
)
def test_scrub_removes_card_numbers_and_vins_however_written(card: str) -> None:
    assert (
        scrub(f"card {card}, vin {VIN.lower()} at 12.5")
        == "card <redacted>, vin <redacted> at 12.5"
    )


def test_scrub_keeps_what_explains_the_rejection() -> None:
    for detail in (
        "Expected `str` matching regex '^[0-9]{12,19}$' (at card_number)",
        "ts 1796245926.1528683 is 3600s ahead of the gateway clock (limit 300s)",
        "payload is 20000 bytes, over the 16384 limit",
        "not valid JSON: JSON is malformed: invalid character (byte 4)",
    ):
        assert scrub(detail) == detail


def test_load_uses_the_vault_key_files_and_creates_them_private(tmp_path: Path) -> None:
    config = EdgeConfig(data_dir=tmp_path)
    with pytest.raises(VaultError, match="does not exist"):
        DeadLetters.load(config, create=False)
    letters = DeadLetters.load(config)
    for name in ("vault.key", "fleet.secret"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
    secret = base64.b64decode((tmp_path / "fleet.secret").read_bytes().strip())
    source, _ = letters.mqtt_source(f"fleet/{VIN}/telemetry".encode())
    assert source == f"mqtt:fleet/{Tokenizer(secret).token('vin', VIN)}/telemetry"
    value = letters.letter("s", "r", "d", 1.0, PAYLOAD)
    assert DeadLetters.load(config, create=False).open(_letter(value)) == PAYLOAD
    assert "m" * 8 not in repr(letters)


def _load_key(path: str) -> str:
    try:
        return load_or_create(Path(path)).hex()
    except VaultError as exc:
        return f"error: {exc}"


def test_services_starting_together_create_the_key_file_once(tmp_path: Path) -> None:
    # The bridge, the enricher and the scorer all create the key files when they are missing.
    # Not fork: a pytest worker may hold other tests' threads (a Kafka client's), whose locks a
    # forked child would inherit held. The fork server is a fresh process, this module loaded.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    with ctx.Pool(4) as pool:
        for i in range(20):
            keys = set(pool.map(_load_key, [str(tmp_path / f"k{i}")] * 8))
            assert len(keys) == 1 and not next(iter(keys)).startswith("error"), keys


def test_show_never_prints_a_letter_it_cannot_open() -> None:
    old_format = encode(
        {
            "schema": 1,
            "source": f"mqtt:fleet/{VIN}/payments",
            "reason": "x",
            "detail": "",
            "received_ts": 1.0,
            "payload": base64.b64encode(PAYLOAD).decode(),
        }
    )
    shown = _shown(DeadLetters(MASTER, TOK), 3, old_format)
    assert shown["offset"] == 3 and "older build" in shown["error"] and len(shown) == 2
    foreign = DeadLetters(b"n" * 32, TOK).letter("s", "r", "d", 1.0, PAYLOAD)
    shown = _shown(DeadLetters(MASTER, TOK), 4, foreign)
    assert "another master key" in shown["error"] and "payload" not in shown
