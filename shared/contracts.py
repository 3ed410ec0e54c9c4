"""Typed event contracts: what travels on MQTT and Kafka, as JSON with a ``schema`` version.

Decoding returns a typed object or raises :class:`~shared.errors.ContractError` naming the
offending field. Structs are frozen: features and stages build new records, never mutate.

>>> raw = b'{"schema":1,"event_id":"e1","vin":"1HGCM82633A004352","ts":1.0,"card_number":"4111111111111111"}'
>>> decode(Payment, raw)
Traceback (most recent call last):
...
shared.errors.ContractError: Object missing required field `driver_id` (at driver_id)
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from shared.errors import ContractError

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 16 * 1024

VIN_PATTERN = r"^[A-HJ-NPR-Z0-9]{17}$"
Vin = Annotated[str, Meta(pattern=VIN_PATTERN)]
EventId = Annotated[str, Meta(min_length=1, max_length=64)]
Token = Annotated[str, Meta(min_length=8, max_length=128)]
# What scores and alerts are keyed by: a built-in stream's token, or a declared stream's
# partition key, which may be a device id that is not personal data (``RT-0001``).
RecordKey = Annotated[str, Meta(min_length=1, max_length=128)]
Epoch = Annotated[float, Meta(gt=0)]
Latitude = Annotated[float, Meta(ge=-90, le=90)]
Longitude = Annotated[float, Meta(ge=-180, le=180)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Fields every event carries. ``ts`` is device time, never a receive clock."""

    schema: int = SCHEMA_VERSION
    event_id: EventId
    ts: Epoch


# --- vehicle -> edge (MQTT, then raw.*): carry PII --------------------------------------


class Telemetry(Event, frozen=True, kw_only=True):
    """One sensor frame from a vehicle (``fleet/{vin}/telemetry``)."""

    vin: Vin
    driver_id: Name
    model: Name
    firmware: Name
    lat: Latitude
    lon: Longitude
    speed_kmh: float
    rpm: float
    gear: int
    coolant_c: float
    intake_c: float
    oil_kpa: float
    battery_v: float
    soc_pct: float
    tyre_fl_kpa: float
    tyre_fr_kpa: float
    tyre_rl_kpa: float
    tyre_rr_kpa: float
    fuel_pct: float
    odometer_km: float
    accel_x_g: float
    accel_y_g: float
    accel_z_g: float
    ambient_c: float


# The frame's sensor readings, in the contract's order: every field from ``speed_kmh`` on.
TELEMETRY_READINGS: tuple[str, ...] = Telemetry.__struct_fields__[
    Telemetry.__struct_fields__.index("speed_kmh") :
]


PaymentCategory = Literal["fuel", "charging", "toll", "parking", "in_car"]


class Payment(Event, frozen=True, kw_only=True):
    """A card payment made from a vehicle's wallet (``fleet/{vin}/payments``)."""

    vin: Vin
    driver_id: Name
    driver_name: Name
    card_number: Annotated[str, Meta(pattern=r"^[0-9]{12,19}$")]
    cardholder: Name
    merchant_id: Name
    merchant_name: Name
    mcc: Annotated[str, Meta(pattern=r"^[0-9]{4}$")]
    category: PaymentCategory
    amount: Annotated[float, Meta(ge=0)]
    currency: Annotated[str, Meta(pattern=r"^[A-Z]{3}$")]
    lat: Latitude
    lon: Longitude
    volume_l: Annotated[float, Meta(ge=0)] | None = None


class VehicleStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Retained ``fleet/{vin}/status``; the last will publishes ``offline``."""

    schema: int = SCHEMA_VERSION
    vin: Vin
    state: Literal["online", "offline"]
    ts: Epoch
    firmware: str | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """Edge -> vehicle on ``fleet/{vin}/commands``: what to do with a payment."""

    schema: int = SCHEMA_VERSION
    kind: Literal["payment_decision"] = "payment_decision"
    event_id: EventId
    decision: Literal["approve", "decline", "hold"]
    reason: str
    score: float
    threshold: float
    model_version: str
    ts: Epoch


# --- edge Kafka, after the enricher: no PII ----------------------------------------------


class AnonTelemetry(Event, frozen=True, kw_only=True):
    """Telemetry with PII replaced: tokens, a coarse cell, sensor values and derived features."""

    vehicle_token: Token
    driver_token: Token
    model: Name
    firmware: Name
    cell: str
    readings: dict[str, float]
    features: dict[str, float]


class AnonPayment(Event, frozen=True, kw_only=True):
    """A payment with PII replaced; PII-derived facts travel as numbers in ``features``."""

    card_token: Token
    vehicle_token: Token
    driver_token: Token
    merchant_id: Name
    mcc: str
    category: PaymentCategory
    amount: float
    currency: str
    volume_l: float | None = None
    cell: str
    features: dict[str, float]


class AnonRecord(Event, frozen=True, kw_only=True):
    """A declared stream's event with its personal data replaced (``anon.{stream}``).

    ``ts`` is the device time in epoch seconds, whatever unit the device sent.
    """

    stream: str
    # The device's token (a tokenized device field) or its id (a device id that is not
    # personal data).
    device: str
    # The partition key: the token of the declaration's ``anon_key`` (default: ``device``).
    key: str
    # Each tokenized field's token, under its token field name.
    tokens: dict[str, str] = msgspec.field(default_factory=dict)
    cell: str | None = None
    # Every field that is not personal data (but the device and time fields), as sent;
    # floats rounded to 3 decimals.
    values: dict[str, float | int | str | bool | None] = msgspec.field(default_factory=dict)
    features: dict[str, float]


# An anonymized record of any stream (``StreamSpec.anon_event`` is one of these): each has
# ``event_id``, ``ts`` and ``features``; its key is the field its spec's ``anon_key`` names.
AnyAnon = AnonTelemetry | AnonPayment | AnonRecord


class Score(Event, frozen=True, kw_only=True):
    """Every scored event (``scores.{stream}``); ``ts`` is the scored event's time."""

    stream: str
    token: RecordKey
    score: float
    threshold: float
    model_version: str
    anomalous: bool


class Contribution(msgspec.Struct, frozen=True):
    feature: str
    error: float


AlertState = Literal["open", "update", "closed"]


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """An alert episode: one per run of anomalous events from one token."""

    schema: int = SCHEMA_VERSION
    alert_id: EventId
    stream: str
    token: RecordKey
    state: AlertState
    start_ts: Epoch
    peak_ts: Epoch
    end_ts: Epoch
    peak_score: float
    threshold: float
    event_ids: list[str]
    top_features: list[Contribution]
    model_version: str


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """Rejected input on ``dlq.ingest``: why, and the payload sealed for the gateway alone.

    Nothing personal is in the clear: ``source`` names a vehicle by its keyed token,
    ``detail`` quotes no values, and the payload is AES-GCM ciphertext that only the gateway
    that wrote it can open (``fleetsentry edge dlq show``).
    """

    schema: int = SCHEMA_VERSION
    source: str
    reason: str
    detail: str
    received_ts: Epoch
    # Bytes of the payload, and its HMAC-SHA256 under a gateway key (hex): equal payloads
    # match, yet a short one (a lone card number) cannot be found by hashing candidates.
    length: Annotated[int, Meta(ge=0)]
    digest: str
    # Format byte, key salt, nonce, ciphertext and tag (base64 in JSON).
    sealed: bytes
    # Messages this letter stands for. A vehicle's rate-limited excess is written as one
    # letter per short burst (the first message's payload sealed, the rest counted), so a
    # flooder costs the gateway one Kafka record per burst, not one per message.
    count: Annotated[int, Meta(ge=1)] = 1


class Label(msgspec.Struct, frozen=True, kw_only=True):
    """Ground truth from the simulator (chargebacks, workshop reports); joins on event_id."""

    schema: int = SCHEMA_VERSION
    event_id: EventId
    stream: str
    kind: str
    episode_id: str
    start_ts: Epoch
    end_ts: Epoch


# --- models ------------------------------------------------------------------------------


class Scaling(msgspec.Struct, frozen=True):
    mean: list[float]
    scale: list[float]


class ModelManifest(msgspec.Struct, frozen=True, kw_only=True):
    """``manifest.json`` of a model directory; signed together with ``model.tflite``."""

    schema: int = SCHEMA_VERSION
    stream: str
    version: str
    feature_spec: str
    features: list[str]
    scaling: Scaling
    threshold: float
    input_quant: tuple[float, int]
    output_quant: tuple[float, int]
    metrics: dict[str, Any]
    data_range: tuple[float, float]
    parent: str | None = None
    created_ts: Epoch


ModelState = Literal["received", "rejected", "shadowing", "active", "rolled_back", "missing"]


class ModelStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What an edge agent did with a model (``model-status``)."""

    schema: int = SCHEMA_VERSION
    edge_id: str
    stream: str
    version: str
    # "missing": the stream has no champion in the gateway's cloud.models (the gateway keeps
    # running the model it has).
    state: ModelState
    reason: str = ""
    ts: Epoch


T = TypeVar("T", bound=msgspec.Struct)

_decoders: dict[type, msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$\.?(.*)`$")


def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    return dec


def decode(kind: type[T], data: bytes | str) -> T:
    """Decode JSON into ``kind`` or raise ContractError naming the field that is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ContractError(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        obj = _decoder(kind).decode(data)
    except msgspec.ValidationError as exc:
        raise _contract_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ContractError(f"not valid JSON: {exc}") from None
    version = getattr(obj, "schema", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ContractError(
            f"schema version {version} is not supported (this build reads {SCHEMA_VERSION})",
            field="schema",
        )
    return obj


def _contract_error(text: str) -> ContractError:
    match = _PATH.search(text)
    field = None
    if match:
        field = match.group(1) or "$"
        text = text[: match.start()]
    elif text.startswith("Object missing required field"):
        field = text.split("`")[1]
    return ContractError(f"{text} (at {field})" if field else text, field=field)


def encode(obj: msgspec.Struct) -> bytes:
    """Encode a contract object as compact JSON."""
    return _encoder.encode(obj)


def to_dict(obj: msgspec.Struct) -> dict[str, Any]:
    """Plain-dict view of a contract object (a copy: the record itself stays frozen)."""
    result = msgspec.to_builtins(obj)
    assert isinstance(result, dict)
    return result
