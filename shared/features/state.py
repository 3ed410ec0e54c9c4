"""Per-key feature state: small frozen records, one per vehicle, card and driver.

Feature functions read a state and return a *new* state; nothing is updated in place, so the
same functions serve the enricher (state restored from its changelog) and the trainer (state
built while replaying a file). Each state encodes to compact msgpack for the changelog.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import msgspec

VEHICLE = "v"
CARD = "c"
DRIVER = "d"


def state_key(kind: str, token: str) -> str:
    """The key a state lives under in a FeatureState and the changelog, e.g. ``v:ab12...``."""
    return f"{kind}:{token}"


class VehicleState(msgspec.Struct, frozen=True, tag="v", array_like=True):
    """Rolling statistics of one vehicle's sensors (order of ``telemetry.ROLLING``)."""

    n: int
    ts: float
    mean: tuple[float, ...]
    var: tuple[float, ...]
    last: tuple[float, ...]
    same: tuple[int, ...]
    lat: float
    lon: float
    model: str
    fuel_pct: float
    # Smoothed coolant rate of change (°C/s, ~15 s time constant). Trailing with a default so
    # states written before it existed still decode.
    coolant_trend: float = 0.0


class CardUse(msgspec.Struct, frozen=True, array_like=True):
    ts: float
    amount: float
    merchant: str
    vehicle: str


class CardState(msgspec.Struct, frozen=True, tag="c", array_like=True):
    """One card's recent uses (bounded to the longest window) and where it was last used."""

    n: int
    last_ts: float
    last_lat: float
    last_lon: float
    recent: tuple[CardUse, ...]


class AmountStats(msgspec.Struct, frozen=True, array_like=True):
    """Welford running mean/variance of log(1 + amount)."""

    n: int
    mean: float
    m2: float


class DriverState(msgspec.Struct, frozen=True, tag="d", array_like=True):
    """A driver's usual spending, per payment category."""

    by_category: dict[str, AmountStats]


class StreamState(msgspec.Struct, frozen=True, tag="g", array_like=True):
    """One device's state in a declared stream: per stateful feature, its numbers (None
    before the device's first value; see shared/declarations/anonymize.py)."""

    slots: tuple[tuple[float, ...] | None, ...]


class VehicleStreamState(StreamState, frozen=True, tag="t"):
    """The device state of a declared stream that keeps the vehicle's state for others
    (``shares = "vehicle"``, the shipped telemetry), under the vehicle's key ``v:<token>``:
    its features' slots, and the vehicle's last known position, time, model and fuel level,
    which payments' vehicle transforms read (as they read a ``VehicleState``)."""

    ts: float
    lat: float
    lon: float
    model: str
    fuel_pct: float


KeyState = VehicleState | CardState | DriverState | StreamState | VehicleStreamState

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(KeyState)


def encode_state(state: KeyState) -> bytes:
    return _encoder.encode(state)


def decode_state(data: bytes) -> KeyState:
    result: KeyState = _decoder.decode(data)
    return result


class FeatureState(Mapping[str, KeyState]):
    """A store of per-key states: what ``anonymize`` reads (and never writes).

    The owner applies the updates ``anonymize`` returns with :meth:`apply`. The store
    serializes as a whole (``to_bytes``) for files, or key by key (``encode_state``) for a
    compacted changelog topic.
    """

    def __init__(self, states: Mapping[str, KeyState] | None = None) -> None:
        self._states: dict[str, KeyState] = dict(states or {})

    def __getitem__(self, key: str) -> KeyState:
        return self._states[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def apply(self, updates: Mapping[str, KeyState]) -> None:
        self._states.update(updates)

    def drop(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._states.pop(key, None)

    def to_bytes(self) -> bytes:
        return _encoder.encode(self._states)

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureState:
        states = msgspec.msgpack.decode(data, type=dict[str, KeyState])
        return cls(states)
