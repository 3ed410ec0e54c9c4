"""The shape of a stream declaration (as written in TOML) and of a loaded stream.

The ``*Decl`` structs mirror the file; unknown keys are refused everywhere. A loaded
:class:`Stream` adds what the loader resolves: every feature in model order with its
transform, inputs, parameters (defaults filled in) and label, and the feature-spec digest.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

FieldType = Literal["float", "int", "str", "bool", "enum"]
Pii = Literal["token", "cell", "vault", "drop"]
TimeUnit = Literal["s", "ms", "iso8601"]
Scale = Literal["linear", "log1p"]


class _Decl(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class DeviceDecl(_Decl, frozen=True, kw_only=True):
    """The field naming the device (the per-device state key) and the pattern its id matches."""

    field: str
    pattern: str
    # How labels call one device ("vehicle's rolling mean"); cosmetic.
    noun: str = "device"


class TimeDecl(_Decl, frozen=True, kw_only=True):
    field: str
    unit: TimeUnit = "s"


class EpisodeAlerts(_Decl, frozen=True, kw_only=True, tag_field="kind", tag="episodes"):
    """Alerts as episodes: open after ``open_events`` anomalous events within ``window_s``
    seconds, close after ``quiet_s`` quiet seconds (the gateway's defaults)."""

    open_events: int = 4
    window_s: float = 10.0
    quiet_s: float = 30.0


class EventAlerts(_Decl, frozen=True, kw_only=True, tag_field="kind", tag="event"):
    """Every anomalous event is an alert of its own (payments)."""


class StreamDecl(_Decl, frozen=True, kw_only=True):
    name: str
    # MQTT topic suffix: devices publish on fleet/{device}/{topic}. Default: the name.
    topic: str | None = None
    device: DeviceDecl
    time: TimeDecl
    alerts: EpisodeAlerts | EventAlerts = EpisodeAlerts()
    # Whether a decision goes back to the device (fleet/{device}/commands), as for payments.
    decision: bool = False
    # The latitude and longitude fields coarsened into one grid cell (in that order).
    cell: tuple[str, str] | None = None
    # A tokenized field whose token keys the anonymized records (default: the device field).
    anon_key: str | None = None
    # The field naming the person the stream's personal data belongs to (vault erasure).
    person: str | None = None
    # The devices' usual seconds between events: how long, in seconds, rolling features
    # remember an event (an alert episode's tail). Unset: the trainer measures it in its data.
    interval_s: float | None = None
    # A state this stream's devices keep for other streams' named transforms to read:
    # "vehicle" (its last position, model and fuel level, which payments read).
    shares: str | None = None


class FieldDecl(_Decl, frozen=True, kw_only=True):
    type: FieldType
    unit: str = ""
    range: tuple[float, float] | None = None
    required: bool = True
    label: str | None = None
    pii: Pii | None = None
    # enum: the allowed values, in the order onehot features take.
    values: tuple[str, ...] | None = None
    # str: a regular expression the value must match.
    pattern: str | None = None
    # The value's typical standard deviation: zscore's prior and floor, rate's unit.
    typical_std: float | None = None
    # pii = "token": the anonymized record's field and the token namespace.
    token_field: str | None = None
    token_kind: str | None = None
    # The field's name in recordings (a CSV or Parquet column, a JSON-lines key) when that
    # name is not a valid field name ("Speed (km/h)"); tools reading recordings map it to
    # this field. Devices publish the declared field name. Not in the digest.
    column: str | None = None


class FeatureDecl(_Decl, frozen=True, kw_only=True, omit_defaults=True):
    """The table form of a feature: exactly one transform key, its parameters, a label."""

    value: str | None = None
    zscore: str | None = None
    rate: str | None = None
    delta: str | None = None
    stuck: str | list[str] | None = None
    gap: bool | None = None
    spread: list[str] | None = None
    diff: list[str] | None = None
    ratio: list[str] | None = None
    ref_ratio: str | None = None
    time_of_day: bool | None = None
    onehot: str | None = None
    named: str | None = None
    # Parameters (each transform takes some; see transforms.PARAMS).
    alpha: float | None = None
    limit: float | None = None
    floor: float | None = None
    typical_std: float | None = None
    min_dt_s: float | None = None
    cap: float | None = None
    scale: Scale | None = None
    by: str | None = None
    table: str | None = None
    missing: float | None = None
    then: list[str] | None = None
    label: str | None = None


THRESHOLD_MODES = ("alert_rate", "precision", "false_episodes")


class TrainingDecl(_Decl, frozen=True, kw_only=True):
    """How the cloud trains the stream's model by default (``fleetsentry cloud train``'s
    options override it); not part of the feature spec."""

    # MODE=NUMBER, MODE one of THRESHOLD_MODES: a new stream has no labels, so the default
    # budget is how often it may alert on presumed-normal data (one event in a thousand).
    threshold: str = "alert_rate=0.001"
    # The int8 input tensor covers [-input_range, input_range] scaled units.
    input_range: float = 8.0


class FileDecl(_Decl, frozen=True, kw_only=True):
    stream: StreamDecl
    fields: dict[str, Any]
    features: dict[str, Any] = {}
    training: TrainingDecl = TrainingDecl()
    # Reference tables for ref_ratio: table name -> key -> reference value.
    refs: dict[str, dict[str, float]] = {}


class Feature(msgspec.Struct, frozen=True, kw_only=True):
    """One model input, resolved: a name, how it is computed, a plain-language label."""

    name: str
    transform: str
    # Declared fields it reads (empty for gap and time_of_day).
    inputs: tuple[str, ...]
    # Every parameter, defaults filled in (so writing a default changes nothing).
    params: dict[str, Any]
    # For transforms with several outputs (onehot, time_of_day), which one this is.
    output: str | None = None
    # Per-value steps applied to a derived value (diff, ratio, spread, ref_ratio), in order.
    then: str | None = None
    label: str


class Stream(msgspec.Struct, frozen=True, kw_only=True):
    """A loaded, validated stream declaration."""

    source: str
    name: str
    topic: str
    device: DeviceDecl
    time: TimeDecl
    alerts: EpisodeAlerts | EventAlerts
    decision: bool
    cell: tuple[str, str] | None
    anon_key: str
    person: str | None
    fields: dict[str, FieldDecl]
    refs: dict[str, dict[str, float]]
    features: tuple[Feature, ...]
    feature_spec: str
    training: TrainingDecl = TrainingDecl()
    interval_s: float | None = None
    shares: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def pii_fields(self) -> frozenset[str]:
        return frozenset(n for n, f in self.fields.items() if f.pii is not None)

    @property
    def tokens(self) -> dict[str, str]:
        """PII field -> the anonymized record's token field."""
        return {n: token_field(n, f) for n, f in self.fields.items() if f.pii == "token"}

    @property
    def columns(self) -> dict[str, str]:
        """A recording's column name -> the field it fills (``column``, else the field name)."""
        return {f.column or n: n for n, f in self.fields.items()}

    def token_kind(self, name: str) -> str:
        """The token namespace of a tokenized field (shared.tokens.Tokenizer's ``kind``)."""
        return self.fields[name].token_kind or name

    @property
    def raw_topic(self) -> str:
        return f"raw.{self.name}"

    @property
    def anon_topic(self) -> str:
        return f"anon.{self.name}"

    @property
    def scores_topic(self) -> str:
        return f"scores.{self.name}"

    def mqtt_topic(self, device: str) -> str:
        return f"fleet/{device}/{self.topic}"

    def label(self, feature: str) -> str:
        for f in self.features:
            if f.name == feature:
                return f.label
        return feature.replace("_", " ")


def token_field(name: str, decl: FieldDecl) -> str:
    return decl.token_field or f"{name}_token"
