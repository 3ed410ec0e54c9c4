"""The enricher's batch: every event of it anonymized at once, in the declarations' engine.

:func:`anonymize_batch` gives what calling :func:`~shared.features.anonymize` on each event in
turn (applying its updates before the next) would give, byte for byte: each stream's
generic transforms run vectorised over the batch (``shared/declarations/vector.py``), the
events of streams with keyed state one by one in batch order, each reading the vehicle's
state as the batch's telemetry before it left it. The unit tests prove the equivalence on
seeded runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from shared.contracts import AnonPayment, AnonRecord, AnonTelemetry, decode
from shared.features.anonymize import anonymize
from shared.features.state import KeyState
from shared.streams import StreamSpec
from shared.tokens import Tokenizer


class BatchResult(NamedTuple):
    # One record per input event, in input order, decoded from ``wire`` as it is read:
    # iterate once.
    records: Iterable[AnonTelemetry | AnonPayment | AnonRecord]
    # Every changed key's state after the whole batch.
    updates: dict[str, KeyState]
    # Or, instead of ``records`` (iterate one of the two): per event its partition key (the
    # vehicle's token, or the card's for a payment) and the very bytes ``encode(record)``
    # gives (the enricher's hot path).
    wire: Iterable[tuple[str, bytes]]


_json = msgspec.json.Encoder()  # as shared.contracts.encode's


def _key(record: Any) -> str:
    if isinstance(record, AnonRecord):
        return record.key
    return record.card_token if isinstance(record, AnonPayment) else record.vehicle_token


def anonymize_batch(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
    state: Mapping[str, KeyState],
    tokenizer: Tokenizer,
) -> BatchResult:
    """Anonymize ``items`` in order as one sequence; ``state`` is read, never written."""
    from shared.declarations.vector import anonymize_lazily

    wire, updates = anonymize_lazily(items, state, tokenizer, wire=True)
    records: Iterable[Any] = (
        decode(spec.anon_event, data) for (spec, _e), (_k, data) in zip(items, wire, strict=True)
    )
    return BatchResult(records, updates, wire)


def sequential_batch(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
    state: Mapping[str, KeyState],
    tokenizer: Tokenizer,
) -> BatchResult:
    """``anonymize`` event after event with the batch's own updates carried along."""
    overlay: dict[str, KeyState] = {}
    view = _Overlay(overlay, state)
    records: list[Any] = []
    for spec, event in items:
        result = anonymize(spec, event, view, tokenizer)
        overlay.update(result.updates)
        records.append(result.record)
    return BatchResult(records, overlay, ((_key(r), _json.encode(r)) for r in records))


class _Overlay(Mapping[str, KeyState]):
    """The batch's own updates over the state it started from."""

    def __init__(self, top: dict[str, KeyState], base: Mapping[str, KeyState]) -> None:
        self.top, self.base = top, base

    def __getitem__(self, key: str) -> KeyState:
        v = self.top.get(key)
        return v if v is not None else self.base[key]

    def get(self, key: str, default: Any = None) -> Any:
        v = self.top.get(key)
        return v if v is not None else self.base.get(key, default)

    def __iter__(self) -> Any:
        return iter({**dict.fromkeys(self.base), **self.top})

    def __len__(self) -> int:
        return len({**dict.fromkeys(self.base), **self.top})
