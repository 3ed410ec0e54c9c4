"""``anonymize`` over a whole batch at once: the same records and states, computed vectorised.

:func:`anonymize_batch` gives exactly what calling :func:`~shared.features.anonymize` on each
event in turn (applying its updates before the next) would give, byte for byte: the telemetry
arithmetic runs in numpy over every vehicle of the batch at once, with the same IEEE operations
in the same order as :func:`~shared.features.telemetry.telemetry_step`, so no value changes.
A vehicle's frames still follow one another: the batch is cut into rounds, round ``r`` holding
each vehicle's ``r``-th frame. Payments (rare, and reading the vehicle's state as of their
place in the batch) go one by one through the engine running the shipped payments declaration
(:func:`~shared.features.anonymize.anonymize`).

The enricher calls it per consumed batch; the unit tests prove the equivalence on seeded runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from shared.contracts import (
    SCHEMA_VERSION,
    AnonPayment,
    AnonRecord,
    AnonTelemetry,
    Payment,
    Telemetry,
    decode,
)
from shared.declarations import named_columns as nc
from shared.features import telemetry as tel
from shared.features.anonymize import DRIVER_ID, VIN, _payment, anonymize
from shared.features.geo import cell
from shared.features.guard import BIG
from shared.features.guard import fin_array as _fin
from shared.features.guard import round3_array as _round
from shared.features.state import VEHICLE, KeyState, VehicleState, state_key
from shared.streams import StreamSpec
from shared.tokens import Tokenizer

# Below this many telemetry frames numpy's per-call overhead outweighs what it saves.
MIN_VECTOR = 8

_F = np.float64
_IDX = {name: i for i, name in enumerate(tel.READINGS)}
_ROLL = np.array(tel._ROLLING_IDX)
_TYRES = [_IDX[n] for n in ("tyre_fl_kpa", "tyre_fr_kpa", "tyre_rl_kpa", "tyre_rr_kpa")]
_MIN_STD = np.array(tel.MIN_STD)
_PRIOR_STD = np.array(tel.PRIOR_STD)
_NOISY = np.array(tel._IS_NOISY)
_KEEP = 1.0 - tel.ALPHA
_COOL = tel._COOLANT
# Feature names of a warm frame, in the order telemetry_step inserts them.
_ENVELOPE_NAMES = tuple(tel._NO_ENVELOPE)
_CROSS_NAMES = (
    "tyre_spread_kpa",
    "tyre_min_dev_kpa",
    "coolant_minus_ambient_c",
    "intake_minus_ambient_c",
    "accel_g",
)
_ZR_NAMES = tuple(n for pair in zip(tel._Z, tel._RATE, strict=True) for n in pair)
_WARM_NAMES = tel.READINGS + _CROSS_NAMES + _ENVELOPE_NAMES + _ZR_NAMES
_ALL_NAMES = (*_WARM_NAMES, "stuck_frames", "frame_gap_s", "history")
_floor = math.floor
_log1p = math.log1p


class BatchResult(NamedTuple):
    # One record per input event, in input order. Telemetry records are built as they are
    # read (a batch of them held at once costs tens of MB): iterate once.
    records: Iterable[AnonTelemetry | AnonPayment | AnonRecord]
    # Every changed key's state after the whole batch.
    updates: dict[str, KeyState]
    # Or, instead of ``records`` (iterate one of the two): per event its partition key (the
    # vehicle's token, or the card's for a payment) and the very bytes ``encode(record)``
    # gives, built without the record objects (the enricher's hot path).
    wire: Iterable[tuple[str, bytes]]


# Mirrors of AnonTelemetry with its two dicts as structs: msgspec writes a struct as a JSON
# object with its fields in order, so the bytes are those of the record with those dicts
# (tests/unit/test_features_batch.py compares them), at half the cost of building dicts.
_Readings = msgspec.defstruct("_Readings", [(n, float) for n in tel.READINGS])
_Features = msgspec.defstruct("_Features", [(n, float) for n in _ALL_NAMES])
_WIRE_FIELDS = (
    "schema",
    "event_id",
    "ts",
    "vehicle_token",
    "driver_token",
    "model",
    "firmware",
    "cell",
    "readings",
    "features",
)
_Wire = msgspec.defstruct("_Wire", [(n, Any) for n in _WIRE_FIELDS])
_WIRE_OK = tuple(f.name for f in msgspec.structs.fields(AnonTelemetry)) == _WIRE_FIELDS
_json = msgspec.json.Encoder()  # as shared.contracts.encode's


def _key(record: AnonTelemetry | AnonPayment | AnonRecord) -> str:
    if isinstance(record, AnonRecord):
        return record.key
    return record.card_token if isinstance(record, AnonPayment) else record.vehicle_token


def anonymize_batch(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
    state: Mapping[str, KeyState],
    tokenizer: Tokenizer,
) -> BatchResult:
    """Anonymize ``items`` in order as one sequence; ``state`` is read, never written."""
    tel_rows = [i for i, (spec, _) in enumerate(items) if spec.name == "telemetry"]
    if len(tel_rows) < MIN_VECTOR or len(tel_rows) + _payments(items) != len(items):
        return sequential_batch(items, state, tokenizer)
    try:
        return _Batch(items, tel_rows, state, tokenizer).run()
    except (OverflowError, ValueError, TypeError):
        # Values numpy will not take as float64 (a gear beyond any float): the scalar code
        # treats them exactly as it always has.
        return sequential_batch(items, state, tokenizer)


def declared_batch(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
    state: Mapping[str, KeyState],
    tokenizer: Tokenizer,
) -> BatchResult:
    """Declared streams' events: the generic transforms vectorised over the batch
    (shared/declarations/vector.py), each record keyed by its ``key``."""
    from shared.declarations.vector import anonymize_declared

    wire, updates = anonymize_declared(items, state, tokenizer, wire=True)
    records = (decode(AnonRecord, data) for _key, data in wire)
    return BatchResult(records, updates, wire)


def runs(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
) -> list[list[tuple[StreamSpec, msgspec.Struct]]]:
    """The batch as the parts to anonymize one after another (each by :func:`declared_batch`
    when its streams are declared, else :func:`anonymize_batch`), every part reading the
    states the parts before it left.

    Declared streams keep their own states apart from the built-in ones', so usually two parts
    do: the declared events, then the built-in ones. A declared stream with keyed state (a
    card's, the vehicle's last telemetry) shares states with other streams: then the batch is
    cut wherever it passes between declared and built-in streams, so each event sees the
    states of every event before it.
    """
    from shared.features.anonymize import plan_of

    declared = [item for item in items if item[0].declaration is not None]
    if not declared:
        return [list(items)] if items else []
    plans = {id(spec): plan_of(spec) for spec, _ in declared}
    if not any(plan.keyed for plan in plans.values()):
        builtin = [item for item in items if item[0].declaration is None]
        return [part for part in (declared, builtin) if part]
    out: list[list[tuple[StreamSpec, msgspec.Struct]]] = []
    for item in items:
        if out and (out[-1][0][0].declaration is None) == (item[0].declaration is None):
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _payments(items: Sequence[tuple[StreamSpec, msgspec.Struct]]) -> int:
    return sum(1 for spec, event in items if spec.name == "payments" and isinstance(event, Payment))


def sequential_batch(
    items: Sequence[tuple[StreamSpec, msgspec.Struct]],
    state: Mapping[str, KeyState],
    tokenizer: Tokenizer,
) -> BatchResult:
    """``anonymize`` event after event with the batch's own updates carried along (the
    declared streams' path, and the built-in streams' below MIN_VECTOR frames)."""
    overlay: dict[str, KeyState] = {}
    view = _Overlay(overlay, state)
    records: list[AnonTelemetry | AnonPayment | AnonRecord] = []
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
        value = self.top.get(key)
        return value if value is not None else self.base[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.top.get(key)
        return value if value is not None else self.base.get(key, default)

    def __iter__(self) -> Any:
        return iter({**dict.fromkeys(self.base), **dict.fromkeys(self.top)})

    def __len__(self) -> int:
        return len(set(self.base) | set(self.top))


def _clip(x: np.ndarray, limit: float) -> np.ndarray:
    # Like `limit if x > limit else -limit if x < -limit else x` (NaN passes through).
    return np.where(x > limit, limit, np.where(x < -limit, -limit, x))


class _Batch:
    """One batch's vectorised telemetry pass, then its payments in order."""

    def __init__(
        self,
        items: Sequence[tuple[StreamSpec, msgspec.Struct]],
        tel_rows: list[int],
        state: Mapping[str, KeyState],
        tok: Tokenizer,
    ) -> None:
        self.items, self.tel_rows, self.state, self.tok = items, tel_rows, state, tok
        self.records: list[Any] = [None] * len(items)

    def run(self) -> BatchResult:
        events: list[Telemetry] = [self.items[i][1] for i in self.tel_rows]  # type: ignore[misc]
        self.tables: list[np.ndarray] = []
        self.where: list[tuple[int, int]] = [(0, 0)] * len(events)
        self._slots(events)
        self._stateless(events)
        self._load_slots()
        for r, rows in enumerate(self.rounds):
            self._round(events, np.array(rows), r)
        updates: dict[str, KeyState] = {}
        for slot, key in enumerate(self.keys):
            updates[key] = self._materialize(slot)
        self._payments(updates)
        wire = (
            self._iter_wire(events)
            if _WIRE_OK
            else ((_key(r), _json.encode(r)) for r in self._iter_records(events))
        )
        return BatchResult(self._iter_records(events), updates, wire)

    # --- grouping --------------------------------------------------------------------

    def _slots(self, events: list[Telemetry]) -> None:
        """Give each vehicle a slot and each frame its round; note which frames payments see."""
        tok = self.tok
        slot_of: dict[str, int] = {}  # by VIN: the batch's frames name few vehicles, often
        self.keys: list[str] = []
        self.tokens: list[str] = []
        self.ev_slot: list[int] = []
        self.rounds: list[list[int]] = []
        counts: list[int] = []
        slot_tokens: list[str] = []
        for j, ev in enumerate(events):
            slot = slot_of.get(ev.vin)
            if slot is None:
                token = tok.token(VIN, ev.vin)
                slot = slot_of[ev.vin] = len(self.keys)
                self.keys.append(state_key(VEHICLE, token))
                slot_tokens.append(token)
                counts.append(0)
            r = counts[slot]
            counts[slot] = r + 1
            if r == len(self.rounds):
                self.rounds.append([])
            self.rounds[r].append(j)
            self.tokens.append(slot_tokens[slot])
            self.ev_slot.append(slot)
        # Frame (batch row) after which each payment reads its vehicle's state.
        self.seen_by_payment: dict[int, VehicleState | None] = {}
        self.payment_view: dict[int, int] = {}
        last: dict[str, int] = {}
        tel_pos = 0
        if len(self.tel_rows) == len(self.items):
            return
        for i, (spec, event) in enumerate(self.items):
            if spec.name == "telemetry":
                last[self.keys[self.ev_slot[tel_pos]]] = tel_pos
                tel_pos += 1
                continue
            vkey = state_key(VEHICLE, tok.token(VIN, event.vin))  # type: ignore[attr-defined]
            seen = last.get(vkey)
            if seen is not None:
                self.payment_view[i] = seen
                self.seen_by_payment[seen] = None

    # --- per-frame facts that need no history ------------------------------------------

    def _stateless(self, events: list[Telemetry]) -> None:
        raw = np.array([tel._readings_of(ev) for ev in events], dtype=_F)
        values = _round(np.where((raw > -BIG) & (raw < BIG), raw, _fin(raw)))
        self.values = values
        self.xs = values[:, _ROLL]

        def read(name: str) -> np.ndarray:
            return values[:, _IDX[name]]

        t = [values[:, i] for i in _TYRES]
        tmax = np.maximum(np.maximum(np.maximum(t[0], t[1]), t[2]), t[3])
        tmin = np.minimum(np.minimum(np.minimum(t[0], t[1]), t[2]), t[3])
        coolant, ambient = read("coolant_c"), read("ambient_c")
        facts = nc.facts([ev.model for ev in events])
        self.cross = _round(
            np.stack(
                [
                    _fin(tmax - tmin),
                    nc.tyre_min_dev(read, facts),
                    _fin(coolant - ambient),
                    _fin(read("intake_c") - ambient),
                    nc.accel_magnitude(read, facts),
                ],
                axis=1,
            )
        )
        self.over = coolant - facts.thermostat
        self.known = facts.known
        # Columns: over thermostat, (hot trend: filled per round), mean ratio, min ratio, low.
        self.envelope = np.stack(
            [
                nc.coolant_over_thermostat(read, facts),
                np.zeros(len(events)),
                nc.tyre_mean_ratio(read, facts),
                nc.tyre_min_ratio(read, facts),
                nc.battery_v_low(read, facts),
            ],
            axis=1,
        )
        self.ts = np.array([ev.ts for ev in events], dtype=_F)
        self.fuel = _fin(raw[:, _IDX["fuel_pct"]], 0.0, 100.0)

    # --- per-vehicle state as arrays ---------------------------------------------------

    def _load_slots(self) -> None:
        n_slots, width = len(self.keys), len(tel.ROLLING)
        self.mean = np.zeros((n_slots, width))
        self.var = np.zeros((n_slots, width))
        self.last = np.zeros((n_slots, width))
        self.same = np.zeros((n_slots, width), dtype=np.int64)
        self.n = [0] * n_slots
        self.s_ts = np.zeros(n_slots)
        self.trend = np.zeros(n_slots)
        self.s_fuel = np.zeros(n_slots)
        self.lat = [0.0] * n_slots
        self.lon = [0.0] * n_slots
        self.model = [""] * n_slots
        self.cold = np.zeros(n_slots, dtype=bool)
        for slot, key in enumerate(self.keys):
            before = self.state.get(key)
            if isinstance(before, VehicleState):
                self._set_slot(slot, before)
            else:
                self.cold[slot] = True

    def _set_slot(self, slot: int, s: VehicleState) -> None:
        self.mean[slot], self.var[slot], self.last[slot] = s.mean, s.var, s.last
        self.same[slot] = s.same
        self.n[slot], self.s_ts[slot], self.trend[slot] = s.n, s.ts, s.coolant_trend
        self.s_fuel[slot], self.lat[slot], self.lon[slot] = s.fuel_pct, s.lat, s.lon
        self.model[slot] = s.model

    def _materialize(self, slot: int) -> VehicleState:
        return VehicleState(
            n=self.n[slot],
            ts=float(self.s_ts[slot]),
            mean=tuple(self.mean[slot].tolist()),
            var=tuple(self.var[slot].tolist()),
            last=tuple(self.last[slot].tolist()),
            same=tuple(self.same[slot].tolist()),
            lat=self.lat[slot],
            lon=self.lon[slot],
            model=self.model[slot],
            fuel_pct=float(self.s_fuel[slot]),
            coolant_trend=float(self.trend[slot]),
        )

    # --- one round: each vehicle's next frame ------------------------------------------

    def _round(self, events: list[Telemetry], rows: np.ndarray, r: int) -> None:
        slots = np.array([self.ev_slot[j] for j in rows.tolist()])
        if r == 0 and self.cold.any():
            cold = self.cold[slots]
            for j in rows[cold].tolist():
                self._cold_frame(events, j)
            rows, slots = rows[~cold], slots[~cold]
            if not len(rows):
                return
        xs, ts = self.xs[rows], self.ts[rows]
        mean, var, last, same = (
            self.mean[slots],
            self.var[slots],
            self.last[slots],
            self.same[slots],
        )
        s_ts = self.s_ts[slots]
        gap = ts - s_ts
        dt = np.where(gap > tel.MIN_DT_S, gap, tel.MIN_DT_S)
        trend = nc.trend(xs[:, _COOL], ts, last[:, _COOL], s_ts, self.trend[slots])
        env = self.envelope[rows]
        env[:, 1] = np.where(self.known[rows] & (self.over[rows] > tel.HOT_MARGIN_C), trend, 0.0)
        std = np.sqrt(var)
        diff = xs - mean
        z = _round(_clip(diff / np.where(std > _MIN_STD, std, _MIN_STD), tel.Z_LIMIT))
        inv_dt = 1.0 / dt
        rate = _round(_clip((xs - last) * inv_dt[:, None] / _PRIOR_STD, tel.RATE_LIMIT))
        incr = tel.ALPHA * diff
        v = _KEEP * (var + diff * incr)
        equal = xs == last
        same = np.where(equal, np.where(same < tel.STUCK_CAP, same + 1, tel.STUCK_CAP), 0)
        stuck = np.where(_NOISY, same, 0).max(axis=1)
        zr = np.empty((len(rows), 2 * len(tel.ROLLING)))
        zr[:, 0::2], zr[:, 1::2] = z, rate
        newer = ts >= s_ts
        self.mean[slots] = mean + incr
        self.var[slots] = np.where(v < 1e12, v, 1e12)
        self.last[slots] = xs
        self.same[slots] = same
        self.s_ts[slots] = np.where(newer, ts, s_ts)
        self.s_fuel[slots] = np.where(newer, self.fuel[rows], self.s_fuel[slots])
        self.trend[slots] = trend
        rows_l = rows.tolist()
        logs = self._advance(
            events, rows_l, slots.tolist(), gap.tolist(), stuck.tolist(), newer.tolist()
        )
        # Kept as one compact float64 table per round; records are built as they are read.
        table_id = len(self.tables)
        self.tables.append(
            np.concatenate(
                [self.values[rows], self.cross[rows], _round(env), zr, np.array(logs)], axis=1
            )
        )
        for pos, j in enumerate(rows_l):
            self.where[j] = (table_id, pos)

    def _advance(
        self,
        events: list[Telemetry],
        rows: list[int],
        slots: list[int],
        gaps: list[float],
        stuck: list[int],
        newer: list[bool],
    ) -> list[tuple[float, float, float]]:
        """Per frame: the log-scaled features (math.log1p, as the scalar code) and the
        vehicle's count and position after it."""
        n_of, lat, lon, model, seen = self.n, self.lat, self.lon, self.model, self.seen_by_payment
        gap_log = _GAP_LOG
        logs: list[tuple[float, float, float]] = []
        for j, slot, gap, n_stuck, is_newer in zip(rows, slots, gaps, stuck, newer, strict=True):
            ev = events[j]
            n = n_of[slot]
            n_of[slot] = n + 1
            g = gap_log.get(gap)
            if g is None:
                g = gap_log[gap] = _log_round(gap, 86_400.0)
            logs.append(
                (_STUCK_LOG[n_stuck], g, _floor(_log1p(n if n < 1e9 else 1e9) * 1000 + 0.5) / 1000)
            )
            if is_newer:
                lat[slot], lon[slot] = ev.lat, ev.lon
            model[slot] = ev.model
            if j in seen:
                seen[j] = self._materialize(slot)
        if len(gap_log) > 4096:  # bound the memo; gaps are nearly always the send period
            gap_log.clear()
        return logs

    def _iter_records(self, events: list[Telemetry]) -> Iterator[AnonTelemetry | AnonPayment]:
        token, tokens, tables, where = self.tok.token, self.tokens, self.tables, self.where
        tel_pos = {i: j for j, i in enumerate(self.tel_rows)}
        for i, ready in enumerate(self.records):
            if ready is not None:
                yield ready
                continue
            j = tel_pos[i]
            table_id, pos = where[j]
            feats = tables[table_id][pos].tolist()
            ev = events[j]
            yield AnonTelemetry(
                event_id=ev.event_id,
                ts=ev.ts,
                vehicle_token=tokens[j],
                driver_token=token(DRIVER_ID, ev.driver_id),
                model=ev.model,
                firmware=ev.firmware,
                cell=cell(ev.lat, ev.lon),
                readings=dict(zip(tel.READINGS, feats, strict=False)),
                features=dict(zip(_ALL_NAMES, feats, strict=True)),
            )

    def _cold_frame(self, events: list[Telemetry], j: int) -> None:
        """A vehicle's very first frame goes through the scalar code."""
        ev = events[j]
        reads, features, after = tel.telemetry_step(ev, None)
        slot = self.ev_slot[j]
        self._set_slot(slot, after)
        self._emit(ev, j, reads, features)
        if j in self.seen_by_payment:
            self.seen_by_payment[j] = after

    def _emit(
        self, ev: Telemetry, j: int, reads: dict[str, float], features: dict[str, float]
    ) -> None:
        self.records[self.tel_rows[j]] = AnonTelemetry(
            event_id=ev.event_id,
            ts=ev.ts,
            vehicle_token=self.tokens[j],
            driver_token=self.tok.token(DRIVER_ID, ev.driver_id),
            model=ev.model,
            firmware=ev.firmware,
            cell=cell(ev.lat, ev.lon),
            readings=reads,
            features=features,
        )

    def _iter_wire(self, events: list[Telemetry]) -> Iterator[tuple[str, bytes]]:
        token, tokens, tables, where = self.tok.token, self.tokens, self.tables, self.where
        tel_pos = {i: j for j, i in enumerate(self.tel_rows)}
        encode, n_read = _json.encode, len(tel.READINGS)
        for i, ready in enumerate(self.records):
            if ready is not None:
                yield _key(ready), encode(ready)
                continue
            j = tel_pos[i]
            table_id, pos = where[j]
            feats = tables[table_id][pos].tolist()
            ev = events[j]
            yield (
                tokens[j],
                encode(
                    _Wire(
                        SCHEMA_VERSION,
                        ev.event_id,
                        ev.ts,
                        tokens[j],
                        token(DRIVER_ID, ev.driver_id),
                        ev.model,
                        ev.firmware,
                        cell(ev.lat, ev.lon),
                        _Readings(*feats[:n_read]),
                        _Features(*feats),
                    )
                ),
            )

    # --- payments, in batch order ------------------------------------------------------

    def _payments(self, updates: dict[str, KeyState]) -> None:
        """Each payment sees its vehicle as of its place in the batch, and earlier payments."""
        own: dict[str, KeyState] = {}
        for i, (spec, event) in enumerate(self.items):
            if spec.name == "telemetry":
                continue
            vkey = state_key(VEHICLE, self.tok.token(VIN, event.vin))  # type: ignore[attr-defined]
            j = self.payment_view.get(i)
            view: dict[str, Any] = {
                vkey: self.seen_by_payment[j] if j is not None else self.state.get(vkey)
            }
            result = _payment(event, _Overlay(own, _Overlay(view, self.state)), self.tok)  # type: ignore[arg-type]
            own.update(result.updates)
            self.records[i] = result.record
        updates.update(own)


def _log_round(x: float, hi: float) -> float:
    """``_round(log1p_pos(x, hi))`` of telemetry_step (math.log1p, not numpy's)."""
    v = float(x)
    v = 0.0 if v != v else 0.0 if v < 0.0 else hi if v > hi else v
    return _floor(_log1p(v) * 1000 + 0.5) / 1000


_STUCK_LOG = [_log_round(i, tel.STUCK_CAP) for i in range(tel.STUCK_CAP + 1)]
_GAP_LOG: dict[float, float] = {}
