"""A declared stream's batch, vectorised: what :class:`~shared.declarations.anonymize.Plan`
gives event by event, computed with numpy over every device of the batch at once.

The records, the states and the bytes are exactly those of the scalar plan (the unit tests
compare them on seeded batches with missing values, repeats and events out of order): each
transform does the same IEEE operations in the same order. A device's events still follow one
another: stateful transforms (zscore, rate, delta, stuck, gap) run in rounds, round ``r``
holding every device's ``r``-th event of the batch; the rest runs over the whole batch.
"""

from __future__ import annotations

import math
import weakref
from collections import ChainMap
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec
import numpy as np
from numpy.typing import NDArray

from shared.contracts import SCHEMA_VERSION, AnonRecord
from shared.declarations import named as named_registry
from shared.declarations import named_columns
from shared.declarations import transforms as tf
from shared.declarations.anonymize import Plan, Slot, state_of
from shared.declarations.events import event_time
from shared.declarations.schema import Feature
from shared.features.geo import CELL_DEG
from shared.features.guard import fin_array as _fin
from shared.features.guard import round3_array
from shared.features.state import KeyState, StreamState, state_key
from shared.tokens import Tokenizer

F64 = NDArray[np.float64]
BIG = tf.BIG
_NAN = math.nan


def _scaled(x: F64, scale: str, cap: float) -> F64:
    if scale == "log1p":
        return np.log1p(_fin(x, 0.0, cap))
    return _fin(x, -BIG, cap)


class Rounds:
    """Which rows of the batch are each device's 1st, 2nd, ... event."""

    def __init__(self, devices: Sequence[str]) -> None:
        index: dict[str, int] = {}
        seen: list[int] = []
        self.device_of = np.empty(len(devices), dtype=np.int64)
        rank = np.empty(len(devices), dtype=np.int64)
        for i, d in enumerate(devices):
            j = index.setdefault(d, len(index))
            if j == len(seen):
                seen.append(0)
            self.device_of[i] = j
            rank[i] = seen[j]
            seen[j] += 1
        self.devices = list(index)
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(max(seen, default=0) + 1))
        self.rows = [order[bounds[r] : bounds[r + 1]] for r in range(len(bounds) - 1)]


class Batch:
    """One declared stream's events of a batch; ``run`` gives records and new states."""

    def __init__(self, plan: Plan, events: Sequence[Any], state: Any, tok: Tokenizer) -> None:
        self.plan, self.events, self.tok = plan, events, tok
        self._raw: dict[str, tuple[Any, ...]] | None = None
        self._cols: dict[str, F64] = {}
        self._facts: named_columns.Facts | None = None
        stream = plan.stream
        self.n = len(events)
        ids = self.raw(stream.device.field)
        kind = plan._device_kind
        self.device = self.tokens(kind, ids, none=True) if kind else list(ids)
        self.ts = self._times()
        self.rounds = Rounds(self.device)
        slots = [state_of(state, plan.state_key(d)) for d in self.rounds.devices]
        self._before = slots
        # Per feature: the devices' slots as columns (NaN where a device has none yet).
        self.slots = [self._columns(i, slots) for i in range(len(stream.features))]

    def _times(self) -> F64:
        """Each event's time in epoch seconds, as ``event_time`` gives it (ValueError where
        one is no finite time: the batch then goes event by event, which says which)."""
        time = self.plan.stream.time
        if time.unit == "iso8601":
            return np.array([event_time(self.plan.stream, e) for e in self.events])
        ts = self.column(time.field)
        if time.unit == "ms":
            ts = ts / 1000.0
        if not np.isfinite(ts).all():
            raise ValueError(f"field {time.field}: not a finite time")
        return ts

    def tokens(self, kind: str, values: Sequence[Any], none: bool = False) -> list[Any]:
        """Each value's token, one tokenizer call per distinct value; None stays None unless
        ``none`` (then it is tokenized as the scalar path does)."""
        token = self.tok.token
        of = {v: token(kind, v) for v in set(values) if none or v is not None}
        return [of[v] for v in values] if none else [of.get(v) for v in values]

    def _columns(self, i: int, slots: list[StreamState | None]) -> F64:
        count = len(self.plan.stream.features)
        width = _width(self.plan.stream.features[i])
        empty = (_NAN,) * width
        # A state of another shape (the declaration changed) starts over, as in Plan.
        rows = [
            empty if s is None or len(s.slots) != count or (v := s.slots[i]) is None else v
            for s in slots
        ]
        try:
            whole = np.array(rows, dtype=np.float64)
        except ValueError:  # rows of several lengths
            whole = None
        if whole is not None and whole.shape == (len(rows), width):
            return whole
        out = np.full((len(rows), width), np.nan)
        for d, row in enumerate(rows):
            out[d, : min(len(row), width)] = row[:width]
        return out

    def raw(self, name: str) -> tuple[Any, ...]:
        """A field's values over the batch, as sent (None where an event left it out): every
        field read at the first call, one field at a time."""
        if self._raw is None:
            names = type(self.events[0]).__struct_fields__
            # Field by field: no tuple per event for the collector to track.
            self._raw = {name: tuple(map(attrgetter(name), self.events)) for name in names}
        return self._raw[name]

    def column(self, name: str) -> F64:
        """A number field over the batch, NaN where an event left it out (numpy turns None
        into NaN, and bools and ints into the floats ``float`` gives)."""
        col = self._cols.get(name)
        if col is None:
            col = self._cols[name] = np.array(self.raw(name), dtype=np.float64)
        return col

    # --- features -------------------------------------------------------------------------

    def run(self, wire: bool = False) -> tuple[Iterable[Any], dict[str, KeyState]]:
        """The records (or, with ``wire``, each record's key and bytes, built as they are
        read) and the states."""
        stream = self.plan.stream
        matrix = np.empty((self.n, len(stream.features)), dtype=np.float64)
        # Features of one stateful step run together, one column each, round by round.
        groups: dict[str, list[int]] = {"zscore": [], "rate": [], "delta": []}
        for i, f in enumerate(stream.features):
            step = f.then or f.transform
            if step in groups and f.transform != "stuck":
                groups[step].append(i)
            else:
                matrix[:, i] = self.feature(i, f)
        for step, idxs in groups.items():
            if idxs:
                xs = [self.derived(stream.features[i]) for i in idxs]
                matrix[:, idxs] = self.stateful(step, idxs, xs)
        matrix = round3_array(matrix)
        per_feature = [_slots(column) for column in self.slots]
        state_key = self.plan.state_key
        updates: dict[str, KeyState]
        if self.plan.shares is None:
            updates = {
                state_key(device): StreamState(tuple(slots))
                for device, slots in zip(
                    self.rounds.devices, zip(*per_feature, strict=True), strict=True
                )
            }
        else:
            kind = self.plan.shares.kind
            updates = {
                state_key(device): kind(tuple(slots), *fix)
                for device, slots, fix in zip(
                    self.rounds.devices,
                    zip(*per_feature, strict=True),
                    self._fixes(),
                    strict=True,
                )
            }
        if self.plan.shape is not None:
            return self.shaped(matrix, wire), updates
        return (self.wire(matrix) if wire else self.records(matrix)), updates

    def _fixes(self) -> Iterator[tuple[float, float, float, str, float]]:
        """Each device's kept values after its last event (``Shared.fix`` event after event,
        over every device at once, round by round): the position and fuel level of its
        newest event, the model of its latest."""
        shares = self.plan.shares
        assert shares is not None and list(shares.reads) == ["lat", "lon", "model", "fuel_pct"]
        n = len(self.rounds.devices)
        ts, lat, lon, fuel = (np.full(n, np.nan) for _ in range(4))
        model: list[Any] = [None] * n
        for d, before in enumerate(self._before):
            if isinstance(before, shares.kind):
                ts[d], lat[d], lon[d] = before.ts, before.lat, before.lon
                fuel[d], model[d] = before.fuel_pct, before.model
        e_lat, e_lon = self.column("lat"), self.column("lon")
        e_fuel = _fin(self.column("fuel_pct"), 0.0, 100.0)
        e_model = self.raw("model")
        device_of = self.rounds.device_of
        for rows in self.rounds.rows:
            at_d = device_of[rows]
            at = self.ts[rows]
            newer = (ts[at_d] != ts[at_d]) | (at >= ts[at_d])
            ts[at_d] = np.where(newer, at, ts[at_d])
            lat[at_d] = np.where(newer, e_lat[rows], lat[at_d])
            lon[at_d] = np.where(newer, e_lon[rows], lon[at_d])
            fuel[at_d] = np.where(newer, e_fuel[rows], fuel[at_d])
            for row, dev in zip(rows.tolist(), at_d.tolist(), strict=True):
                model[dev] = e_model[row]
        return zip(ts.tolist(), lat.tolist(), lon.tolist(), model, fuel.tolist(), strict=True)

    def feature(self, i: int, f: Feature) -> F64:
        p = f.params
        if f.transform == "gap":
            return self.gap(i, p)
        if f.transform == "time_of_day":
            pick = 0 if f.output == "sin" else 1
            return np.array([tf.time_of_day(t)[pick] for t in self.ts.tolist()])
        if f.transform == "onehot":
            want = f.output
            return np.array([1.0 if v == want else 0.0 for v in self.raw(f.inputs[0])])
        if f.transform == "stuck":
            return self.stuck(i, [self.column(n) for n in f.inputs], p, keep_missing=True)
        if f.transform == "named":
            return self.named(i, f)
        x = self.derived(f)
        step = f.then or f.transform
        if step == "stuck":
            return self.stuck(i, [x], p, keep_missing=False)
        if step != "value":
            return self.stateful(step, [i], [x])[:, 0]
        if step == "value":
            lo, hi = p.get("range", (-BIG, BIG))
            out = _fin(x, lo, hi)
            if p.get("scale", "linear") == "log1p":
                out = np.log1p(_fin(out, 0.0, BIG))
            return np.where(x != x, 0.0, out)
        raise AssertionError(step)

    def derived(self, f: Feature) -> F64:
        inputs, p = f.inputs, f.params
        if f.transform in tf.PER_VALUE:
            return self.column(inputs[0])
        cols = [self.column(n) for n in inputs]
        missing = np.zeros(self.n, dtype=bool)
        for c in cols:
            missing |= c != c
        with np.errstate(all="ignore"):
            if f.transform == "spread":
                stack = np.vstack(cols)
                raw = _fin(stack.max(axis=0) - stack.min(axis=0))
            elif f.transform == "diff":
                raw = _fin(cols[0] - cols[1])
            elif f.transform == "ratio":
                b = cols[1]
                raw = np.where(b != 0, _fin(cols[0] / np.where(b != 0, b, 1.0)), 0.0)
            else:
                table, by = p["values"], p["by"]
                keys = self.raw(by)
                ref = np.array(
                    [
                        table.get(str(k).lower() if isinstance(k, bool) else str(k)) or 0.0
                        for k in keys
                    ],
                    dtype=np.float64,
                )
                raw = np.where(
                    ref != 0, _fin(cols[0] / np.where(ref != 0, ref, 1.0)), float(p["missing"])
                )
        return np.where(missing, np.nan, raw)

    def stateful(self, step: str, idxs: list[int], xs: list[F64]) -> F64:
        """zscore, rate or delta features (one column each, their inputs ``xs``)."""
        features = self.plan.stream.features
        x = np.stack(xs, axis=-1)
        state = np.stack([self.slots[i] for i in idxs], axis=1)  # device x feature x slot
        p: dict[str, Any] = {
            k: np.array([float(features[i].params[k]) for i in idxs])
            for k in ("alpha", "limit", "floor", "typical_std", "min_dt_s")
            if k in features[idxs[0]].params
        }
        out = np.zeros_like(x)
        for rows in self.rounds.rows:
            d = self.rounds.device_of[rows]
            xr, s = x[rows], state[d]
            ok = xr == xr
            have = ok & (s[..., 0] == s[..., 0])
            first = ok & ~have
            with np.errstate(all="ignore"):
                if step == "zscore":
                    value, nxt = _zscore(s, xr, p)
                    start = np.stack(
                        [np.ones_like(xr), xr, np.broadcast_to(p["typical_std"] ** 2, xr.shape)], -1
                    )
                elif step == "rate":
                    ts = np.broadcast_to(self.ts[rows][:, None], xr.shape)
                    value, nxt = _rate(s, ts, xr, p)
                    start = np.stack([ts, xr], -1)
                else:  # delta
                    value, nxt = _fin(xr - s[..., 0]), xr[..., None]
                    start = nxt
            out[rows] = np.where(have, value, 0.0)
            state[d] = np.where(have[..., None], nxt, np.where(first[..., None], start, s))
        for j, i in enumerate(idxs):
            self.slots[i] = state[:, j, :]
        return out

    def reading(self, name: str) -> F64:
        """A field as telemetry's named transforms read it: cleaned (NaN and missing 0,
        clipped to +-BIG) and rounded to 3 decimals."""
        key = f"reading:{name}"
        col = self._cols.get(key)
        if col is None:
            x = self.column(name)
            col = self._cols[key] = round3_array(np.where(x != x, 0.0, np.clip(x, -BIG, BIG)))
        return col

    def named(self, i: int, f: Feature) -> F64:
        """A named transform over the batch (``named_columns``): the values and slots its
        scalar step gives. One without a vectorised form raises ValueError, and the batch
        goes event by event."""
        name = f.params["named"]
        columns = named_columns.COLUMNS.get(name)
        if columns is not None:
            return columns(self.reading, self.facts())
        in_rounds = named_columns.IN_ROUNDS.get(name)
        if in_rounds is None:
            raise ValueError(f"named transform {name!r} has no vectorised form")
        return in_rounds(self.reading, self.facts(), self.ts, self.rounds, self.slots[i])

    def facts(self) -> named_columns.Facts:
        """The catalogue's entry for each event's vehicle model, looked up once a batch."""
        if self._facts is None:
            self._facts = named_columns.facts(self.raw("model"))
        return self._facts

    def gap(self, i: int, p: dict[str, Any]) -> F64:
        out = np.zeros(self.n)
        slot = self.slots[i]
        for rows in self.rounds.rows:
            d = self.rounds.device_of[rows]
            ts, last = self.ts[rows], slot[d, 0]
            have = last == last
            with np.errstate(all="ignore"):
                value = _scaled(_fin(ts - last, 0.0, p["cap"]), p["scale"], p["cap"])
            out[rows] = np.where(have, value, 0.0)
            slot[d, 0] = np.where(have, np.maximum(ts, last), ts)
        return out

    def stuck(self, i: int, cols: list[F64], p: dict[str, Any], keep_missing: bool) -> F64:
        """Runs of exact repeats per field; the feature is the longest. A missing value keeps
        its field's run: counted in a stuck feature of fields, 0 for one derived value. The
        fields go side by side (a column each), round by round."""
        cap = float(int(p["cap"]))
        out = np.zeros(self.n)
        slot = self.slots[i]  # device x (run, last) per field
        xs = np.stack(cols, axis=1)
        for rows in self.rounds.rows:
            d = self.rounds.device_of[rows]
            x, run, last = xs[rows], slot[d, 0::2], slot[d, 1::2]
            ok = x == x
            have = run == run
            new_run = np.where(have & (x == last), np.minimum(run + 1, cap), 0.0)
            kept = np.where(have, run, 0.0)
            runs = np.maximum(np.where(ok, new_run, kept).max(axis=1), 0.0)
            if keep_missing:
                slot[d, 0::2] = np.where(ok, new_run, kept)
                slot[d, 1::2] = np.where(ok, x, np.where(have, last, np.nan))
            else:
                slot[d, 0::2] = np.where(ok, new_run, run)
                slot[d, 1::2] = np.where(ok, x, last)
            value = _scaled(runs, p["scale"], p["cap"])
            out[rows] = value if keep_missing else np.where(ok.any(axis=1), value, 0.0)
        return out

    # --- records --------------------------------------------------------------------------

    def _columns_out(self, matrix: F64, with_values: bool = True) -> _Out:
        """Everything a record holds: per record, in batch order, one at a time.

        Lazy on purpose: the per-record tuples and lists live only while their record is
        built, so the batch does not fill the garbage collector's young generations with
        thousands of containers (which made the collector, not the transforms, a fifth of
        this path's time)."""
        plan, stream, n = self.plan, self.plan.stream, self.n
        token_cols = [
            (field, self.tokens(kind, self.raw(name))) for name, kind, field in plan._tokens
        ]
        value_cols = [
            self._rounded(name) if is_float else self.raw(name)
            for name, is_float in (plan._values if with_values else ())
        ]
        cells = self._cells() if stream.cell is not None else [None] * n
        if plan._key_kind and (stream.anon_key, plan._key_kind) == (
            stream.device.field,
            plan._device_kind,
        ):
            keys = self.device
        elif plan._key_kind:
            keys = self.tokens(plan._key_kind, self.raw(stream.anon_key), none=True)
        else:
            keys = [str(k) for k in self.raw(stream.anon_key)]
        tokens: Iterable[tuple[Any, ...]] = (
            zip(*(col for _, col in token_cols), strict=True) if token_cols else repeat((), n)
        )
        values: Iterable[tuple[Any, ...]] = (
            zip(*value_cols, strict=True) if value_cols else repeat((), n)
        )
        return _Out(
            [field for field, _ in token_cols],
            zip(
                self.events,
                self.ts.tolist(),
                self.device,
                keys,
                tokens,
                cells,
                values,
                map(_tolist, matrix),
                strict=True,
            ),
        )

    def _cells(self) -> list[str | None]:
        """Each event's grid cell, as :func:`~shared.features.geo.cell` gives it (None where a
        coordinate is missing): the divisions and floors over the batch, each cell's text
        made once."""
        assert self.plan.stream.cell is not None
        lat, lon = (self.column(name) for name in self.plan.stream.cell)
        with np.errstate(all="ignore"):
            rows, cols = np.floor(lat / CELL_DEG).tolist(), np.floor(lon / CELL_DEG).tolist()
        text: dict[tuple[float, float], str] = {}
        out: list[str | None] = []
        for a, b in zip(rows, cols, strict=True):
            if a != a or b != b:
                out.append(None)
                continue
            c = text.get((a, b))
            if c is None:
                c = text[(a, b)] = f"c10:{int(a)}:{int(b)}"
            out.append(c)
        return out

    def records(self, matrix: F64) -> list[AnonRecord]:
        out, plan, name = self._columns_out(matrix), self.plan, self.plan.stream.name
        value_names, token_fields = [v for v, _ in plan._values], out.token_fields
        return [
            AnonRecord(
                schema=SCHEMA_VERSION,
                event_id=e.event_id,
                ts=ts,
                stream=name,
                device=device,
                key=key,
                tokens={f: t for f, t in zip(token_fields, toks, strict=True) if t is not None},
                cell=where,
                values=dict(zip(value_names, vals, strict=True)),
                features=dict(zip(plan.names, row, strict=True)),
            )
            for e, ts, device, key, toks, where, vals, row in out.rows
        ]

    def wire(self, matrix: F64) -> list[tuple[str, bytes]]:
        """Each record's key and the bytes ``encode(record)`` gives, built from structs that
        mirror AnonRecord's two dicts (msgspec writes a struct's fields in order, as a
        dict's keys): no dict per record."""
        out, name = self._columns_out(matrix), self.plan.stream.name
        kind = wire_types(self.plan)
        record, tokens, values, features = kind.record, kind.tokens, kind.values, kind.features
        encode = _json.encode
        return [
            (
                key,
                encode(
                    record(
                        SCHEMA_VERSION,
                        e.event_id,
                        ts,
                        name,
                        device,
                        key,
                        tokens(*toks),
                        where,
                        values(*vals),
                        features(*row),
                    )
                ),
            )
            for e, ts, device, key, toks, where, vals, row in out.rows
        ]

    def shaped(self, matrix: F64, wire: bool) -> Iterable[Any]:
        """The records in the plan's shape (a built-in stream's own record type), or with
        ``wire`` each one's key and bytes, built from structs that mirror the shape's dicts."""
        shape = self.plan.shape
        assert shape is not None
        out = self._columns_out(matrix, with_values=False)  # the shape takes the event's own
        kinds = shape_types(self.plan)
        readings: Iterable[tuple[Any, ...]] = repeat(())
        if any(source == "readings" for source, _ in shape.sources):
            cols = [round3_array(_fin(self.column(n))).tolist() for n in shape.readings]
            readings = zip(*cols, strict=True) if cols else repeat((), self.n)
        build, encode = kinds.build, _json.encode
        if wire:  # built as they are read: a batch of them held at once costs megabytes
            return (
                (row[3], encode(build(row, reads)))
                for row, reads in zip(out.rows, readings, strict=False)
            )
        kind = shape.kind
        return [
            msgspec.json.decode(encode(build(row, reads)), type=kind)
            for row, reads in zip(out.rows, readings, strict=False)
        ]

    def _rounded(self, name: str) -> list[float | None]:
        """A float field to 3 decimals, as Plan rounds it (None stays None)."""
        col = self.column(name)
        with np.errstate(all="ignore"):
            rounded = np.where(np.isfinite(col), round3_array(col), col)
        if not np.isnan(rounded).any():  # as nearly always: nothing to turn into None
            return rounded.tolist()
        return [None if v != v else v for v in rounded.tolist()]


class _Out(NamedTuple):
    token_fields: list[str]
    # Per record: (event, ts, device, key, tokens, cell, values, feature row).
    rows: Iterator[tuple[Any, float, Any, Any, tuple[Any, ...], Any, tuple[Any, ...], list[float]]]


_tolist = np.ndarray.tolist


class WireTypes(NamedTuple):
    record: type[msgspec.Struct]
    # A record's tokens: a field left out when its value had none, as the dict leaves it out.
    tokens: type[msgspec.Struct]
    values: type[msgspec.Struct]
    features: type[msgspec.Struct]


_json = msgspec.json.Encoder()  # as shared.contracts.encode's
_WIRE = tuple(f.name for f in msgspec.structs.fields(AnonRecord))
# By plan, for as long as the plan lives (a plan made later may take a freed one's id).
_wire_types: weakref.WeakKeyDictionary[Plan, WireTypes] = weakref.WeakKeyDictionary()


class ShapeTypes(NamedTuple):
    record: type[msgspec.Struct]
    features: type[msgspec.Struct]
    readings: type[msgspec.Struct]
    # (row, readings) -> the record's mirror (see ``_builder``).
    build: Any


def _builder(
    sources: list[tuple[str, str]],
    token_at: dict[str, int],
    record: type[msgspec.Struct],
    features: type[msgspec.Struct],
    readings: type[msgspec.Struct],
) -> Any:
    """``(row, readings) -> record``, one expression per shape field, compiled once: a row is
    ``Batch._columns_out``'s (event, ts, device, key, tokens, cell, values, features)."""
    assert all(name.isidentifier() for _s, name in sources)
    parts = []
    for source, name in sources:
        if source == "token":
            parts.append(f"row[4][{token_at[name]}]")
        elif source == "readings":
            parts.append("readings_(*reads)")
        elif name == "schema":
            parts.append(str(SCHEMA_VERSION))
        elif name == "ts":
            parts.append("row[1]")
        elif name == "cell":
            parts.append("row[5]")
        elif name == "features":
            parts.append("features_(*row[7])")
        else:  # the event's own (event_id too)
            parts.append(f"row[0].{name}")
    space = {"record_": record, "features_": features, "readings_": readings}
    exec(f"def build(row, reads):\n    return record_({', '.join(parts)})", space)  # noqa: S102
    return space["build"]


_shape_types: weakref.WeakKeyDictionary[Plan, ShapeTypes] = weakref.WeakKeyDictionary()


def shape_types(plan: Plan) -> ShapeTypes:
    """Structs mirroring a plan's record shape, its ``features`` and ``readings`` as structs
    (msgspec writes a struct's fields in order, as a dict's keys: the same bytes)."""
    kinds = _shape_types.get(plan)
    if kinds is None:
        assert plan.shape is not None
        shape = plan.shape
        record = msgspec.defstruct("_Shaped", [(n, Any) for _s, n in shape.sources])
        features = msgspec.defstruct("_Features", [(n, float) for n in plan.names])
        readings = msgspec.defstruct("_Readings", [(n, float) for n in shape.readings])
        # Token fields in the order the plan tokenizes them (``Batch._columns_out``).
        token_at = {field: i for i, (_n, _k, field) in enumerate(plan._tokens)}
        kinds = _shape_types[plan] = ShapeTypes(
            record,
            features,
            readings,
            _builder(shape.sources, token_at, record, features, readings),
        )
    return kinds


def wire_types(plan: Plan) -> WireTypes:
    kinds = _wire_types.get(plan)
    if kinds is None:
        kinds = _wire_types[plan] = WireTypes(
            msgspec.defstruct("_Wire", [(n, Any) for n in _WIRE]),
            msgspec.defstruct(
                "_Tokens", [(f, Any, None) for _n, _k, f in plan._tokens], omit_defaults=True
            ),
            msgspec.defstruct("_Values", [(n, Any) for n, _ in plan._values]),
            msgspec.defstruct("_Features", [(n, float) for n in plan.names]),
        )
    return kinds


def _zscore(s: F64, x: F64, p: dict[str, Any]) -> tuple[F64, F64]:
    n, mean, var = s[..., 0], s[..., 1], s[..., 2]
    std = np.sqrt(var)
    min_std = p["floor"] * p["typical_std"]
    diff = x - mean
    z = _fin(diff / np.where(std > min_std, std, min_std), -p["limit"], p["limit"])
    incr = p["alpha"] * diff
    new_var = (1.0 - p["alpha"]) * (var + diff * incr)
    new_var = np.where(new_var < tf.VAR_CAP, new_var, tf.VAR_CAP)
    return z, np.stack([n + 1, mean + incr, new_var], -1)


def _rate(s: F64, ts: F64, x: F64, p: dict[str, Any]) -> tuple[F64, F64]:
    last_ts, last_x = s[..., 0], s[..., 1]
    gap = ts - last_ts
    rate = (x - last_x) / np.where(gap > p["min_dt_s"], gap, p["min_dt_s"]) / p["typical_std"]
    return _fin(rate, -p["limit"], p["limit"]), np.stack([np.maximum(ts, last_ts), x], -1)


def _width(f: Feature) -> int:
    """How many numbers a feature's slot holds."""
    if f.transform == "stuck":
        return 2 * len(f.inputs)
    if f.transform == "named":
        entry = named_registry.get(f.params["named"])
        return entry.slot_width if entry is not None else 0
    step = f.then or f.transform
    return {"zscore": 3, "rate": 2, "delta": 1, "stuck": 2}.get(
        step, 1 if f.transform == "gap" else 0
    )


def _slots(column: F64) -> list[Slot]:
    """Each device's slot of one feature (a row of ``column``): None where it holds none."""
    if column.shape[1] == 0:
        return [None] * column.shape[0]
    return [None if row[0] != row[0] else tuple(row) for row in column.tolist()]


def anonymize_declared(
    items: Sequence[tuple[Any, Any]],
    state: Any,
    tok: Tokenizer,
    min_vector: int = 8,
    wire: bool = False,
) -> tuple[list[Any], dict[str, KeyState]]:
    """:func:`anonymize_lazily`, its records in a list."""
    records, updates = anonymize_lazily(items, state, tok, min_vector, wire)
    return list(records), updates


def anonymize_lazily(
    items: Sequence[tuple[Any, Any]],
    state: Any,
    tok: Tokenizer,
    min_vector: int = 8,
    wire: bool = False,
) -> tuple[Iterator[Any], dict[str, KeyState]]:
    """Every ``(spec, event)`` of ``items``, any stream: their records in order (with
    ``wire``: each record's key and bytes instead), in each stream's record shape, and the
    states they change.

    A stream whose features keep only its devices' own state goes all at once, vectorised (a
    stream with fewer than ``min_vector`` events in the batch event by event: numpy's per-call
    cost outweighs what it saves). The events of streams with keyed state (a card's or a
    driver's, shared across devices and streams) go one by one in batch order, after them:
    each reads the keyed states every keyed event before it left, and a state another stream
    shares (the vehicle's) as that stream's events before it in the batch left it.
    """
    from shared.features.anonymize import plan_of

    groups = _groups(items)
    # Per place: its stream's group (None: a keyed event, in ``keyed_out``).
    group_of: list[int | None] = [None] * len(items)
    outs: dict[int, Iterator[Any]] = {}
    keyed_out: dict[int, Any] = {}
    updates: dict[str, KeyState] = {}
    plans = {key: plan_of(items[rows[0]][0]) for key, rows in groups.items()}
    keyed = sorted(j for key, rows in groups.items() if plans[key].keyed for j in rows)
    shared: _Shared | None = _Shared(state, tok, items, keyed, plans) if keyed else None
    for key, rows in groups.items():
        plan: Plan = plans[key]
        if plan.keyed:
            continue
        events = [items[j][1] for j in rows]
        got, changed = _all_at_once(plan, events, state, tok, min_vector, wire)
        updates.update(changed)
        outs[key] = iter(got)
        for j in rows:
            group_of[j] = key
        if shared is not None and plan.shares is not None:
            shared.kept(plan, rows, events)
    if shared is not None:
        own: dict[str, KeyState] = {}
        for j in keyed:
            spec, event = items[j]
            plan = plans[id(spec)]
            view = ChainMap(own, shared.as_of(j, plan, event), state)
            record, changed = plan.run(event, view, tok)
            own.update(changed)
            keyed_out[j] = _out(plan, event, record, wire)
        updates.update(own)

    def in_order() -> Iterator[Any]:
        for j, key in enumerate(group_of):
            yield keyed_out[j] if key is None else next(outs[key])

    return in_order(), updates


def _groups(items: Sequence[tuple[Any, Any]]) -> dict[int, list[int]]:
    """The places of each stream's events, by its spec's id."""
    first = items[0][0] if items else None
    if all(spec is first for spec, _event in items):  # one stream: the common case
        return {id(first): list(range(len(items)))} if items else {}
    groups: dict[int, list[int]] = {}
    for j, (spec, _event) in enumerate(items):
        groups.setdefault(id(spec), []).append(j)
    return groups


def _all_at_once(
    plan: Plan, events: list[Any], state: Any, tok: Tokenizer, min_vector: int, wire: bool
) -> tuple[Iterable[Any], dict[str, KeyState]]:
    """One stream's events vectorised (event by event when they are few, or when numpy will
    not take a value as a float)."""
    if len(events) >= min_vector:
        try:
            return Batch(plan, events, state, tok).run(wire)
        except (OverflowError, ValueError, TypeError):
            pass
    return _one_by_one(plan, events, state, tok, wire)


class _Shared:
    """The states a stream shares (the vehicle's), as its events in the batch leave them,
    for the keyed events read at their place in the batch."""

    def __init__(
        self,
        state: Any,
        tok: Tokenizer,
        items: Sequence[tuple[Any, Any]],
        keyed: list[int],
        plans: dict[int, Plan],
    ) -> None:
        self.state, self.tok = state, tok
        # (token kind, value) of every shared state the keyed events read: a sharing
        # stream's events of other devices are of no interest.
        self.wanted = {
            (k.token_kind, value)
            for j in keyed
            for k in plans[id(items[j][0])].keyed
            if k.update is None and (value := getattr(items[j][1], k.field)) is not None
        }
        # State key -> the sharing stream's events of that device: (place, plan, event).
        self.events: dict[str, list[tuple[int, Plan, Any]]] = {}
        # State key -> (events folded so far, the kept values after them).
        self.done: dict[str, tuple[int, Any]] = {}

    def kept(self, plan: Plan, rows: list[int], events: list[Any]) -> None:
        assert plan.shares is not None
        kind, field, wanted = plan.shares.token_kind, plan.shares.field, self.wanted
        for j, event in zip(rows, events, strict=True):
            if (kind, getattr(event, field)) in wanted:
                key = plan.state_key(plan.device(event, self.tok))
                self.events.setdefault(key, []).append((j, plan, event))

    def as_of(self, place: int, plan: Plan, event: Any) -> dict[str, Any]:
        """The shared states ``event`` (at ``place``) reads that the batch changed before it."""
        out: dict[str, Any] = {}
        for keyed in plan.keyed:
            if keyed.update is not None:  # the keyed stream's own: read in batch order
                continue
            value = getattr(event, keyed.field)
            if value is None:
                continue
            key = state_key(keyed.prefix, self.tok.token(keyed.token_kind, value))
            kept = self.events.get(key)
            if not kept:
                continue
            folded, fix = self.done.get(key, (0, None))
            if folded == 0:
                before = self.state.get(key)
                fix = before if isinstance(before, keyed.kind) else None
            while folded < len(kept) and kept[folded][0] < place:
                _j, sharer, e = kept[folded]
                assert sharer.shares is not None
                fix = sharer.shares.kind(
                    (), *sharer.shares.fix(fix, e, event_time(sharer.stream, e))
                )
                folded += 1
            self.done[key] = (folded, fix)
            if fix is not None:
                out[key] = fix
        return out


def _out(plan: Plan, event: Any, record: AnonRecord, wire: bool) -> Any:
    shaped = record if plan.shape is None else plan.shape.of(event, record)
    return (record.key, _json.encode(shaped)) if wire else shaped


def _one_by_one(
    plan: Plan, events: Sequence[Any], state: Any, tok: Tokenizer, wire: bool = False
) -> tuple[list[Any], dict[str, KeyState]]:
    changed: dict[str, KeyState] = {}
    view = ChainMap(changed, state)
    out: list[Any] = []
    for e in events:
        record, updates = plan.run(e, view, tok)
        changed.update(updates)
        out.append(_out(plan, e, record, wire))
    return out, changed
