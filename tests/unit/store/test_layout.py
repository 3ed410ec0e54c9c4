"""Pure routing rules of the cloud store."""

from __future__ import annotations

from cloud.store import layout
from shared import topics


def test_mirrored_topics_route_to_their_dataset_with_the_edge_id() -> None:
    edge, ds = layout.route("edge-1.anon.payments") or ("", None)
    assert edge == "edge-1" and ds is not None and ds.name == topics.ANON_PAYMENTS
    assert layout.route("edge-2.alerts")[1].name == topics.ALERTS  # type: ignore[index]
    assert layout.route(topics.LABELS) == ("", layout.datasets()[topics.LABELS])


def test_raw_internal_and_unknown_topics_are_not_stored() -> None:
    for topic in (
        "edge-1.raw.payments",
        "raw.payments",
        "edge-1.heartbeats",
        "mm2-offsets.edge-1.internal",
        "edge-1.labels",
        "cloud.models",
    ):
        assert layout.route(topic) is None, topic


def test_columns_are_the_contracts_scalar_fields() -> None:
    cols = dict(layout.datasets()[topics.ANON_PAYMENTS].columns())
    assert cols["amount"] is float and cols["event_id"] is str and cols["volume_l"] is float
    assert "features" not in cols


def test_day_is_the_utc_date_of_event_time() -> None:
    assert layout.day_of(0.0) == "1970-01-01"
    assert layout.day_of(86_399.0) == "1970-01-01"


def test_an_event_is_known_by_its_vehicle_and_its_id() -> None:
    from shared import contracts

    ds = layout.datasets()
    base = dict(
        event_id="e-1",
        ts=1.0,
        card_token="c" * 16,
        driver_token="d" * 16,
        merchant_id="m",
        mcc="5541",
        category="fuel",
        amount=1.0,
        currency="EUR",
        cell="u0",
        features={},
    )
    one = contracts.AnonPayment(vehicle_token="a" * 16, **base)  # type: ignore[arg-type]
    two = contracts.AnonPayment(vehicle_token="b" * 16, **base)  # type: ignore[arg-type]
    pay = ds[topics.ANON_PAYMENTS]
    assert pay.record_id(one, "edge-1") != pay.record_id(two, "edge-1")
    assert pay.record_id(one, "edge-1") == pay.record_id(one, "edge-2")  # a roaming vehicle
    assert ds[topics.SCORES_TELEMETRY].device == "token"
    assert ds[topics.ANON_TELEMETRY].device == "vehicle_token"
