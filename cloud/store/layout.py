"""Pure rules of the store: which topic feeds which dataset, a record's id, its day."""

from __future__ import annotations

import datetime as dt
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import msgspec

from shared import contracts, streams, topics

REJECTED = "rejected"
# Topics MirrorMaker 2 writes into the cloud for each gateway, plus the cloud's own labels.
SUBSCRIPTION = [
    r"^[A-Za-z0-9_-]+\.(anon|scores)\.[A-Za-z0-9_-]+$",
    r"^[A-Za-z0-9_-]+\.(alerts|model-status)$",
    topics.LABELS,
]
_EDGE = re.compile(r"^([A-Za-z0-9_-]+)\.(.+)$")


@dataclass(frozen=True)
class Dataset:
    """One folder of the store: the records of one topic family, from every gateway."""

    name: str
    kind: type[msgspec.Struct]
    # The field naming the vehicle (its token) a record is about, where there is one.
    device: str | None = None

    def record_id(self, rec: Any, edge_id: str) -> str:
        """The deduplication key. Events are (vehicle, event_id); the rest combine fields.

        Vehicles choose their event ids, so an id alone would let one vehicle (or one gateway)
        suppress another's records. Tokens are fleet-wide, so the same event replicated by
        two gateways is still stored once.
        """
        if isinstance(rec, contracts.Alert):
            return f"{rec.alert_id}/{rec.state}/{rec.end_ts!r}"
        if isinstance(rec, contracts.ModelStatus):
            return f"{rec.edge_id or edge_id}/{rec.stream}/{rec.version}/{rec.state}/{rec.ts!r}"
        if self.device is not None:
            return f"{getattr(rec, self.device)}/{rec.event_id}"
        return str(rec.event_id)  # labels: the cloud's own, one per event

    def event_ts(self, rec: Any) -> float:
        for field in ("ts", "start_ts"):
            value = getattr(rec, field, None)
            if isinstance(value, (int, float)):
                return float(value)
        return 0.0

    def columns(self) -> list[tuple[str, type]]:
        """Scalar fields of the contract become columns; nested ones stay in ``record``."""
        out = []
        hints = typing.get_type_hints(self.kind, include_extras=False)
        for field in msgspec.structs.fields(self.kind):
            base = _scalar(hints[field.name])
            if base is not None:
                out.append((field.name, base))
        return out


def _scalar(hint: Any) -> type | None:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return _scalar(non_none[0]) if len(non_none) == 1 else None
    if typing.get_origin(hint) is typing.Literal:
        return str
    return hint if hint in (str, float, int, bool) else None


def datasets() -> dict[str, Dataset]:
    out = {}
    for spec in streams.all_streams():
        # The field naming the device: the token of the VIN the built-in streams are keyed by,
        # a declared stream's ``device`` (its token or its id).
        device = "device" if spec.declaration is not None else spec.tokens.get(spec.key_field)
        out[spec.anon_topic] = Dataset(spec.anon_topic, spec.anon_event, device)
        # A score's token is what the scorer keys it by (vehicle, or card for payments).
        out[spec.scores_topic] = Dataset(spec.scores_topic, contracts.Score, "token")
    out[topics.ALERTS] = Dataset(topics.ALERTS, contracts.Alert)
    out[topics.MODEL_STATUS] = Dataset(topics.MODEL_STATUS, contracts.ModelStatus)
    out[topics.LABELS] = Dataset(topics.LABELS, contracts.Label)
    return out


def route(topic: str) -> tuple[str, Dataset] | None:
    """``(edge_id, dataset)`` for a cloud topic; the cloud's own topics have edge_id ``""``."""
    known = datasets()
    if topic in known:
        return "", known[topic]
    match = _EDGE.match(topic)
    if match and match.group(2) in known and match.group(2) != topics.LABELS:
        return match.group(1), known[match.group(2)]
    return None


def day_of(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).date().isoformat()
