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
    for topic in ("edge-1.raw.payments", "raw.payments", "edge-1.heartbeats",
                  "mm2-offsets.edge-1.internal", "edge-1.labels", "cloud.models"):
        assert layout.route(topic) is None, topic


def test_columns_are_the_contracts_scalar_fields() -> None:
    cols = dict(layout.datasets()[topics.ANON_PAYMENTS].columns())
    assert cols["amount"] is float and cols["event_id"] is str and cols["volume_l"] is float
    assert "features" not in cols


def test_day_is_the_utc_date_of_event_time() -> None:
    assert layout.day_of(0.0) == "1970-01-01"
    assert layout.day_of(86_399.0) == "1970-01-01"
