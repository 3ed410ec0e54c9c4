"""The built-in declarations say what today's code does: fields, personal data, tokens,
feature names, order and labels, and (for generic transforms) the very values."""

from __future__ import annotations

import random
from typing import Any, get_args

import msgspec
import pytest

from shared import contracts, streams
from shared.declarations import Feature, Stream, builtin
from shared.declarations import named as named_registry
from shared.declarations import transforms as tf
from shared.declarations.loader import ENVELOPE
from shared.declarations.schema import EpisodeAlerts, EventAlerts
from shared.episodes import EpisodeSettings
from shared.features import payments as pay
from shared.features import telemetry as tel
from shared.features.anonymize import CARD_NUMBER, DRIVER_ID, VIN
from shared.features.spec import feature_label, model_features

BUILTIN = builtin()
NAMES = ("telemetry", "payments")


def test_the_package_ships_both_streams() -> None:
    assert sorted(BUILTIN) == sorted(NAMES)
    assert {s.source for s in BUILTIN.values()} == {"telemetry.toml", "payments.toml"}


def _declared_type(info: Any) -> tuple[str, bool, Any, Any, Any]:
    """(type, nullable, range, pattern, enum values) of a msgspec field type."""
    nullable = isinstance(info, msgspec.inspect.UnionType)
    if nullable:
        info = next(t for t in info.types if not isinstance(t, msgspec.inspect.NoneType))
    if isinstance(info, msgspec.inspect.LiteralType):
        return "enum", nullable, None, None, frozenset(info.values)  # msgspec sorts them
    if isinstance(info, msgspec.inspect.StrType):
        return "str", nullable, None, info.pattern, None
    kind = {
        msgspec.inspect.FloatType: "float",
        msgspec.inspect.IntType: "int",
        msgspec.inspect.BoolType: "bool",
    }[type(info)]
    bounds = (info.ge, info.le) if info.ge is not None and info.le is not None else None
    return kind, nullable, bounds, None, None


@pytest.mark.parametrize("name", NAMES)
def test_fields_are_the_event_contracts(name: str) -> None:
    stream, spec = BUILTIN[name], streams.get(name)
    info = msgspec.inspect.type_info(spec.event)
    assert isinstance(info, msgspec.inspect.StructType)
    contract = {f.name: f for f in info.fields if f.name not in ENVELOPE}
    assert list(stream.fields) == list(contract)
    for field_name, decl in stream.fields.items():
        kind, nullable, bounds, pattern, values = _declared_type(contract[field_name].type)
        assert decl.type == kind, field_name
        assert decl.required == contract[field_name].required == (not nullable), field_name
        assert decl.range == bounds, field_name
        assert decl.pattern == pattern, field_name
        assert (frozenset(decl.values) if decl.values else None) == values, field_name
    if name == "payments":  # the order the onehot features take
        assert stream.fields["category"].values == get_args(contracts.PaymentCategory)
        assert stream.fields["category"].values == pay.CATEGORIES


# What the built-in streams' specs were when they were written out in code; they are read from
# the shipped declarations now, so these pin the files to what gateways and models expect.
TODAYS = {
    "telemetry": {
        "pii": {"vin", "driver_id", "lat", "lon"},
        "tokens": {"vin": "vehicle_token", "driver_id": "driver_token"},
        "readings": contracts.TELEMETRY_READINGS,
        "anon_key": "vehicle_token",
    },
    "payments": {
        "pii": {"vin", "driver_id", "driver_name", "card_number", "cardholder", "lat", "lon"},
        "tokens": {
            "card_number": "card_token",
            "vin": "vehicle_token",
            "driver_id": "driver_token",
        },
        "readings": ("amount", "volume_l"),
        "anon_key": "card_token",
    },
}


@pytest.mark.parametrize("name", NAMES)
def test_device_time_topic_and_personal_data_are_todays(name: str) -> None:
    stream, spec, today = BUILTIN[name], streams.get(name), TODAYS[name]
    assert stream.topic == spec.mqtt_suffix == name
    assert (spec.raw_topic, spec.anon_topic, spec.scores_topic) == (
        f"raw.{name}",
        f"anon.{name}",
        f"scores.{name}",
    )
    assert spec.mqtt_topic("1HGCM82633A004352") == f"fleet/1HGCM82633A004352/{name}"
    assert stream.device.field == spec.key_field == "vin"
    assert stream.device.pattern == contracts.VIN_PATTERN
    assert (stream.time.field, stream.time.unit) == ("ts", "s")
    assert stream.pii_fields == spec.pii_fields == today["pii"]
    assert stream.tokens == spec.tokens == today["tokens"]
    assert spec.numeric_fields == today["readings"]
    assert spec.anon_key == today["anon_key"]
    assert spec.declaration is None and spec.decides == stream.decision
    anon_fields = set(spec.anon_event.__struct_fields__)
    assert set(stream.tokens.values()) <= anon_fields
    assert stream.cell == ("lat", "lon") and "cell" in anon_fields
    namespaces = {"vin": VIN, "driver_id": DRIVER_ID, "card_number": CARD_NUMBER}
    for field_name in stream.tokens:
        assert stream.token_kind(field_name) == namespaces[field_name]


def test_keys_alerts_and_decisions_are_todays() -> None:
    telemetry, payments = BUILTIN["telemetry"], BUILTIN["payments"]
    # The scorer keys telemetry by the vehicle's token and payments by the card's.
    assert telemetry.tokens[telemetry.anon_key] == "vehicle_token"
    assert payments.tokens[payments.anon_key] == "card_token"
    defaults = EpisodeSettings()
    assert telemetry.alerts == EpisodeAlerts(
        open_events=defaults.open_events,
        window_s=defaults.open_window_s,
        quiet_s=defaults.quiet_gap_s,
    )
    assert payments.alerts == EventAlerts()
    assert (telemetry.decision, payments.decision) == (False, True)


def _payment() -> contracts.Payment:
    return contracts.Payment(
        event_id="p1",
        ts=1_767_600_000.0,
        vin="1HGCM82633A004352",
        driver_id="D-7",
        driver_name="Ada Driver",
        card_number="4111111111111111",
        cardholder="ADA DRIVER",
        merchant_id="M1",
        merchant_name="Fuel Stop",
        mcc="5541",
        category="fuel",
        amount=61.5,
        currency="EUR",
        lat=52.5,
        lon=13.4,
        volume_l=40.0,
    )


def test_the_vault_can_reverse_every_token_a_builtin_record_carries() -> None:
    # The enricher's vault items come from the declarations; their kinds must be the very
    # namespaces the built-in anonymizer tokenizes with, or the vault could not reverse them.
    from shared.features.anonymize import anonymize, vault_of
    from shared.tokens import Tokenizer

    tok = Tokenizer(b"k" * 32)
    for spec, event in ((streams.PAYMENTS, _payment()), (streams.TELEMETRY, _frames(1, 3)[0])):
        record = anonymize(spec, event, {}, tok).record
        carried = {getattr(record, t) for t in spec.tokens.values()}
        reversible = {tok.token(kind, value) for kind, value, _ in vault_of(spec)(event)}
        assert carried and carried <= reversible, spec.name
        assert {v for _, v, _ in vault_of(spec)(event)} >= {getattr(event, f) for f in spec.tokens}


@pytest.mark.parametrize("name", NAMES)
def test_the_models_features_and_their_words_are_the_declarations(name: str) -> None:
    # One place holds them: shared.features.spec reads the shipped declaration.
    assert model_features(name) == BUILTIN[name].feature_names
    for feature in BUILTIN[name].features:
        assert feature_label(feature.name) == feature.label != feature.name.replace("_", " ")


def test_the_built_in_digests_are_pinned() -> None:
    # A change here is a new feature spec: every model trained on the old one is refused.
    # Update the pin only on purpose, together with the models.
    assert BUILTIN["telemetry"].feature_spec == "fs-4836888ce6f1"
    assert BUILTIN["payments"].feature_spec == "fs-9053e80737bc"


def _telemetry(i: int, ts: float, values: dict[str, float]) -> contracts.Telemetry:
    return contracts.Telemetry(
        event_id=f"e{i}",
        ts=ts,
        vin="1HGCM82633A004352",
        driver_id="D-7",
        model="no such model",
        firmware="1.0",
        lat=52.5,
        lon=13.4,
        **values,  # type: ignore[arg-type]
    )


def _frames(n: int, seed: int) -> list[contracts.Telemetry]:
    """A vehicle's frames with exact repeats (stuck sensors), gaps and one out of order."""
    rng = random.Random(seed)
    values = {r: rng.uniform(0.0, 300.0) for r in tel.READINGS}
    frames, ts = [], 1_767_600_000.0
    for i in range(n):
        for r in tel.READINGS:
            if rng.random() < 0.6:
                values[r] = round(values[r] + rng.gauss(0.0, 3.0), rng.choice((1, 4)))
        values["gear"] = float(rng.randint(0, 6))
        ts += rng.choice((1.0, 1.0, 1.0, 0.2, 7.5, -2.0))
        frames.append(_telemetry(i, ts, dict(values, gear=int(values["gear"]))))
    return frames


class _Generic:
    """A minimal per-device evaluator of the generic transforms (the stages do not run one
    yet): enough to compare their values with today's telemetry code."""

    def __init__(self, stream: Stream) -> None:
        self.features = [f for f in stream.features if f.transform != "named"]
        self.state: dict[str, Any] = {}

    def step(self, xs: dict[str, float], ts: float) -> dict[str, float]:
        return {f.name: self._one(f, xs, ts) for f in self.features}

    def _one(self, f: Feature, xs: dict[str, float], ts: float) -> float:
        p, prev = f.params, self.state.get(f.name)
        lo, hi = p.get("range", (-1e6, 1e6))
        if f.transform == "value":
            return tf.value(xs[f.inputs[0]], lo, hi, p["scale"])
        if f.transform == "spread":
            return tf.spread([xs[n] for n in f.inputs])
        if f.transform == "diff":
            return tf.diff(xs[f.inputs[0]], xs[f.inputs[1]])
        if f.transform == "gap":
            out, self.state[f.name] = tf.gap_step(prev, ts, p["cap"], p["scale"])
            return out
        if f.transform == "stuck":
            runs = [tf.stuck_step(prev and prev[n], xs[n], p["cap"]) for n in f.inputs]
            self.state[f.name] = {n: s for n, (_, s) in zip(f.inputs, runs, strict=True)}
            return tf.stuck_value([r for r, _ in runs], p["cap"], p["scale"])
        if f.transform == "zscore":
            out, self.state[f.name] = tf.zscore_step(
                prev, xs[f.inputs[0]], p["alpha"], p["limit"], p["floor"], p["typical_std"]
            )
            return out
        assert f.transform == "rate", f.transform
        out, self.state[f.name] = tf.rate_step(
            prev, ts, xs[f.inputs[0]], p["limit"], p["min_dt_s"], p["typical_std"]
        )
        return out


def test_generic_transforms_give_todays_telemetry_values() -> None:
    generic = _Generic(BUILTIN["telemetry"])
    assert {f.transform for f in generic.features} == {
        "value",
        "spread",
        "diff",
        "stuck",
        "gap",
        "zscore",
        "rate",
    }
    state = None
    compared = 0
    for frame in _frames(400, seed=17):
        reads, today, state = tel.telemetry_step(frame, state)
        # Today's code computes on readings rounded to 3 decimals, and rounds what it emits.
        ours = generic.step(reads, frame.ts)
        for name, value in ours.items():
            assert tel._round(value) == today[name], (frame.event_id, name)
            compared += 1
    assert compared == 400 * len(generic.features)


def test_named_transforms_point_at_the_code_computing_them() -> None:
    telemetry_frame = _frames(1, seed=3)[0]
    results = {
        "telemetry": {**tel.cross_sensor(telemetry_frame), **tel.envelope(telemetry_frame, None)},
        "payments": {},
    }
    payment = _payment()
    for fn in (pay.amount_features, pay.position_features, pay.fuel_features):
        results["payments"].update(fn(payment, None))
    results["payments"].update(pay.card_features(payment, None, "vehicle-token"))
    for name in NAMES:
        for feature in BUILTIN[name].features:
            if feature.transform != "named":
                continue
            entry = named_registry.get(feature.params["named"])
            assert entry is not None
            assert entry.output == feature.name
            assert entry.output in results[name], feature.name
