"""A declared stream's event -> its anonymized record and its device's next feature state.

Built from the declaration once per stream (:class:`Plan`), then run per event:

- personal data: ``token`` fields become keyed tokens (and go to the vault), the ``cell``
  pair becomes a ~10 km grid cell, ``vault`` fields go to the vault only, ``drop`` fields
  go nowhere. :class:`VaultItems` lists what the vault keeps;
- every other field (but the device and time fields) travels in ``values``, floats rounded
  to 3 decimals;
- features: the declared generic transforms, per device, in declared order, rounded to 3
  decimals as the built-in streams' are. A feature whose input is missing (an optional field
  left out) is 0 and leaves its state as it was.

Like :func:`shared.features.anonymize`, it is pure: it reads the device's state and returns
the new one beside the record.

>>> from shared.declarations import load_text
>>> from shared.tokens import Tokenizer
>>> s = load_text('''
... [stream]
... name = "door"
... device = { field = "unit", pattern = "^[A-Z0-9-]{4,32}$" }
... time = { field = "t", unit = "ms" }
... [fields]
... unit = { type = "str" }
... t = { type = "int" }
... driver = { type = "str", pii = "token" }
... opens = { type = "int" }
... [features]
... opens = ["value", "delta"]
... ''', "door.toml")
>>> from shared.declarations.events import event_struct
>>> plan = Plan(s)
>>> e = event_struct(s)(event_id="e1", unit="BUS-7", t=1767600000123, driver="Ann", opens=2)
>>> record, state = plan.anonymize(e, None, Tokenizer(b"k" * 32))
>>> record.features, record.values, "Ann" in repr(record)
({'opens': 2.0, 'opens_delta': 0.0}, {'opens': 2}, False)
>>> plan.anonymize(e, state, Tokenizer(b"k" * 32))[0].features["opens_delta"]
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from operator import attrgetter
from typing import Any

import msgspec

from shared.contracts import SCHEMA_VERSION, AnonRecord
from shared.declarations import named
from shared.declarations import transforms as tf
from shared.declarations.events import event_time
from shared.declarations.schema import Feature, Stream
from shared.declarations.shapes import Shape
from shared.features.geo import cell
from shared.features.state import KeyState, StreamState, state_key
from shared.tokens import Tokenizer

Slot = tuple[float, ...] | None
# One feature: (event, its time, the feature's slot) -> (value, the slot's next value).
Step = Callable[[Any, float, Slot], tuple[float, Slot]]

_floor = math.floor


def _r(x: float) -> float:
    return _floor(x * 1000 + 0.5) / 1000


def state_kind(stream: str) -> str:
    """The state-key prefix of a declared stream's devices (``g/<stream>``)."""
    return f"g/{stream}"


def _nothing(_event: Any) -> None:
    return None


class VaultItems:
    """The values the vault keeps of a stream's event: ``(kind, value, person)`` of each
    tokenized or vault-only field. A token's kind is its namespace, so the vault reverses it;
    every value but the device's belongs to the event's person (when the stream names one)."""

    def __init__(self, stream: Stream) -> None:
        self._fields = [
            (n, stream.token_kind(n) if f.pii == "token" else n, n != stream.device.field)
            for n, f in stream.fields.items()
            if f.pii in ("token", "vault")
        ]
        self._person = stream.person
        names = [n for n, _, _ in self._fields] + ([self._person] if self._person else [])
        # The fields the items are made of, as one hashable value: events alike in it give
        # the same items (a batch checks it before making them again).
        self.key: Callable[[Any], Any] = attrgetter(*names) if names else _nothing

    def __call__(self, event: Any) -> list[tuple[str, str, str | None]]:
        person = getattr(event, self._person) if self._person else None
        return [
            (kind, str(value), person if personal else None)
            for name, kind, personal in self._fields
            if (value := getattr(event, name)) is not None
        ]


class _At:
    """An event whose ``ts`` is its time in epoch seconds (what keyed transforms read)."""

    __slots__ = ("_event", "ts")

    def __init__(self, event: Any, ts: float) -> None:
        self._event, self.ts = event, ts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


class Plan:
    """How one declared stream is anonymized; build once, run per event.

    :meth:`run` reads and writes every state an event touches: its device's, and the keyed
    states (a card's, a driver's, the vehicle's) its named transforms share with other
    devices and streams. :meth:`anonymize` takes the device's state alone, for a stream with
    no keyed state.
    """

    def __init__(self, stream: Stream, shape: type[msgspec.Struct] | None = None) -> None:
        """``shape``: the record type of a built-in stream's topic, when it is not
        ``AnonRecord`` (see shapes.py): :meth:`run` still gives the ``AnonRecord``, and the
        callers make it that shape (``self.shape.of``)."""
        self.stream = stream
        self.shape = Shape(shape, stream) if shape is not None else None
        self.names = stream.feature_names
        # Per feature: its step over the device's slot, or the keyed state computing it.
        self._steps: list[Step | None] = []
        self._keyed: list[tuple[int, named.Keyed, str]] = []
        for i, f in enumerate(stream.features):
            entry = named.get(f.params["named"]) if f.transform == "named" else None
            if entry is not None and entry.keyed is not None:
                self._steps.append(None)
                self._keyed.append((i, entry.keyed, entry.output))
            else:
                self._steps.append(_compile(stream, f))
        # The features computed from the device's own slots: (index, name, step).
        self._own = [
            (i, name, step)
            for i, (name, step) in enumerate(zip(self.names, self._steps, strict=True))
            if step is not None
        ]
        # Each keyed state once, in the order its first feature comes.
        self.keyed: list[named.Keyed] = list({k.name: k for _, k, _ in self._keyed}.values())
        # Keyed transforms read the time as ``ts`` in epoch seconds: an event whose ``ts``
        # is that already goes to them as it is.
        t = stream.time
        self._ts_is_time = t.field == "ts" and t.unit == "s" and stream.fields["ts"].type == "float"
        # The state its devices keep for other streams (the vehicle's), or None.
        self.shares = named.SHARED[stream.shares] if stream.shares is not None else None
        dev = stream.fields[stream.device.field]
        self._device_kind = stream.token_kind(stream.device.field) if dev.pii == "token" else None
        key = stream.fields[stream.anon_key]
        self._key_kind = stream.token_kind(stream.anon_key) if key.pii == "token" else None
        self._tokens = [(n, stream.token_kind(n), t) for n, t in stream.tokens.items()]
        skip = {stream.device.field, stream.time.field}
        self._values = [
            (n, f.type == "float")
            for n, f in stream.fields.items()
            if f.pii is None and n not in skip
        ]

    def device(self, event: Any, tok: Tokenizer) -> str:
        """The device's id as anonymized records carry it: its token, or itself."""
        value: str = getattr(event, self.stream.device.field)
        return tok.token(self._device_kind, value) if self._device_kind else value

    def state_key(self, device: str) -> str:
        if self.shares is not None:
            return state_key(self.shares.prefix, device)
        return state_key(state_kind(self.stream.name), device)

    def anonymize(
        self, event: Any, state: StreamState | None, tok: Tokenizer
    ) -> tuple[AnonRecord, StreamState]:
        """The record and the device's next state (a stream without keyed state)."""
        if self.keyed:
            raise ValueError(f"stream {self.stream.name!r} keeps keyed state: use Plan.run")
        record, after, _ = self._anonymize(event, state, tok, {})
        return record, after

    def run(
        self, event: Any, view: Mapping[str, KeyState], tok: Tokenizer
    ) -> tuple[AnonRecord, dict[str, KeyState]]:
        """The record and every state it changes (state key -> new state), reading the
        states before it from ``view``."""
        device = self.device(event, tok)
        key = self.state_key(device)
        before = state_of(view, key)
        record, after, changed = self._anonymize(event, before, tok, view, device)
        if (
            before is not None
            or self.shares is not None
            or after.slots.count(None) != len(after.slots)
        ):
            changed[key] = after  # (a stream of stateless features keeps no device state)
        return record, changed

    def _anonymize(
        self,
        event: Any,
        state: StreamState | None,
        tok: Tokenizer,
        view: Mapping[str, KeyState],
        device: str | None = None,
    ) -> tuple[AnonRecord, StreamState, dict[str, KeyState]]:
        stream = self.stream
        ts = event_time(stream, event)
        if device is None:
            device = self.device(event, tok)
        slots: list[Slot] = (
            list(state.slots)
            if state is not None and len(state.slots) == len(self._steps)
            else [None] * len(self._steps)
        )
        features: dict[str, float] = {}
        for i, name, step in self._own:
            value, slots[i] = step(event, ts, slots[i])
            features[name] = _r(value)
        changed: dict[str, KeyState] = {}
        if self._keyed:
            outputs = self._keyed_outputs(event, ts, tok, view, device, changed)
            for i, keyed, output in self._keyed:
                features[self.names[i]] = _r(outputs[keyed.name][output])
            features = {name: features[name] for name in self.names}
        tokens = {
            field: tok.token(kind, v)
            for name, kind, field in self._tokens
            if (v := getattr(event, name)) is not None
        }
        values: dict[str, float | int | str | bool | None] = {}
        for name, is_float in self._values:
            v = getattr(event, name)
            values[name] = _r(v) if is_float and v is not None and math.isfinite(v) else v
        where = None
        if stream.cell is not None:
            lat, lon = getattr(event, stream.cell[0]), getattr(event, stream.cell[1])
            if lat is not None and lon is not None:
                where = cell(float(lat), float(lon))
        key_value = getattr(event, stream.anon_key)
        key = tok.token(self._key_kind, key_value) if self._key_kind else str(key_value)
        record = AnonRecord(
            schema=SCHEMA_VERSION,
            event_id=event.event_id,
            ts=ts,
            stream=stream.name,
            device=device,
            key=key,
            tokens=tokens,
            cell=where,
            values=values,
            features=features,
        )
        if self.shares is not None:
            fix = self.shares.fix(state if isinstance(state, self.shares.kind) else None, event, ts)
            return record, self.shares.kind(tuple(slots), *fix), changed
        return record, StreamState(tuple(slots)), changed

    def _keyed_outputs(
        self,
        event: Any,
        ts: float,
        tok: Tokenizer,
        view: Mapping[str, KeyState],
        device: str,
        changed: dict[str, KeyState],
    ) -> dict[str, dict[str, float]]:
        """Each keyed state's outputs for ``event``, from the state before it; the states it
        keeps go to ``changed``."""
        at = event if self._ts_is_time else _At(event, ts)
        outputs: dict[str, dict[str, float]] = {}
        for keyed in self.keyed:
            value = getattr(event, keyed.field)
            key = (
                None
                if value is None
                else state_key(keyed.prefix, tok.token(keyed.token_kind, value))
            )
            before = view.get(key) if key is not None else None
            if not isinstance(before, keyed.kind):
                before = None
            outputs[keyed.name] = keyed.features(at, before, device)
            if keyed.update is not None and key is not None:
                changed[key] = keyed.update(before, at, device)
        return outputs


def _number(event: Any, name: str) -> float | None:
    v = getattr(event, name)
    return None if v is None else float(v)


def _compile(stream: Stream, f: Feature) -> Step:
    p = f.params
    if f.transform == "gap":

        def gap(_e: Any, ts: float, slot: Slot) -> tuple[float, Slot]:
            out, last = tf.gap_step(None if slot is None else slot[0], ts, p["cap"], p["scale"])
            return out, (last,)

        return gap
    if f.transform == "time_of_day":
        pick = 0 if f.output == "sin" or f.name.endswith("_sin") else 1
        return lambda _e, ts, slot: (tf.time_of_day(ts)[pick], slot)
    if f.transform == "onehot":
        field, want = f.inputs[0], f.output
        return lambda e, _ts, slot: (1.0 if getattr(e, field) == want else 0.0, slot)
    if f.transform == "stuck":
        return _stuck(f)
    if f.transform == "named":
        entry = named.get(p["named"])
        if entry is None or entry.step is None:
            raise ValueError(f"named transform {p['named']!r} has no step the engine runs")
        return entry.step
    derive = _deriver(f)
    then = f.then or f.transform
    return _per_value(then, p, derive)


def _deriver(f: Feature) -> Callable[[Any], float | None]:
    """The value a feature's per-value step reads: a field, or one derived from several."""
    inputs, p = f.inputs, f.params
    if f.transform in tf.PER_VALUE:
        name = inputs[0]
        return lambda e: _number(e, name)

    def derived(e: Any) -> float | None:
        xs = [_number(e, n) for n in inputs]
        if any(x is None for x in xs):
            return None
        vals = [x for x in xs if x is not None]
        if f.transform == "spread":
            return tf.spread(vals)
        if f.transform == "diff":
            return tf.diff(vals[0], vals[1])
        if f.transform == "ratio":
            return tf.ratio(vals[0], vals[1])
        by = getattr(e, p["by"])
        key = str(by).lower() if isinstance(by, bool) else str(by)
        return tf.ref_ratio(vals[0], key, p["values"], p["missing"])

    return derived


def _per_value(step: str, p: Mapping[str, Any], derive: Callable[[Any], float | None]) -> Step:
    if step == "value":
        lo, hi = p.get("range", (-tf.BIG, tf.BIG))
        scale = p.get("scale", "linear")

        def value(e: Any, _ts: float, slot: Slot) -> tuple[float, Slot]:
            x = derive(e)
            return (0.0 if x is None else tf.value(x, lo, hi, scale)), slot

        return value
    if step == "zscore":

        def zscore(e: Any, _ts: float, slot: Slot) -> tuple[float, Slot]:
            x = derive(e)
            if x is None or x != x:
                return 0.0, slot
            prev = None if slot is None else tf.ZState(int(slot[0]), slot[1], slot[2])
            z, s = tf.zscore_step(prev, x, p["alpha"], p["limit"], p["floor"], p["typical_std"])
            return z, (float(s.n), s.mean, s.var)

        return zscore
    if step == "rate":

        def rate(e: Any, ts: float, slot: Slot) -> tuple[float, Slot]:
            x = derive(e)
            if x is None or x != x:
                return 0.0, slot
            prev = None if slot is None else tf.Last(slot[0], slot[1])
            r, s = tf.rate_step(prev, ts, x, p["limit"], p["min_dt_s"], p["typical_std"])
            return r, (s.ts, s.x)

        return rate
    if step == "delta":

        def delta(e: Any, _ts: float, slot: Slot) -> tuple[float, Slot]:
            x = derive(e)
            if x is None or x != x:
                return 0.0, slot
            d, last = tf.delta_step(None if slot is None else slot[0], x)
            return d, (last,)

        return delta
    assert step == "stuck", step

    def stuck_one(e: Any, _ts: float, slot: Slot) -> tuple[float, Slot]:
        x = derive(e)
        if x is None:
            return 0.0, slot
        prev = None if slot is None else tf.Stuck(int(slot[0]), slot[1])
        run, s = tf.stuck_step(prev, x, p["cap"])
        return tf.stuck_value([run], p["cap"], p["scale"]), (float(s.run), s.last)

    return stuck_one


def _stuck(f: Feature) -> Step:
    """Stuck over one field or a group: the slot holds (run, last) per field, flattened."""
    names, p = f.inputs, f.params

    def stuck(e: Any, _ts: float, slot: Slot) -> tuple[float, Slot]:
        runs: list[int] = []
        out: list[float] = []
        for i, name in enumerate(names):
            x = _number(e, name)
            prev = None if slot is None else tf.Stuck(int(slot[2 * i]), slot[2 * i + 1])
            if x is None:
                runs.append(0 if prev is None else prev.run)
                out += [0.0, math.nan] if prev is None else [float(prev.run), prev.last]
                continue
            run, s = tf.stuck_step(prev, x, p["cap"])
            runs.append(run)
            out += [float(s.run), s.last]
        return tf.stuck_value(runs, p["cap"], p["scale"]), tuple(out)

    return stuck


def plans(streams: Mapping[str, Stream]) -> dict[str, Plan]:
    return {name: Plan(s) for name, s in streams.items()}


def state_of(state: Mapping[str, KeyState], key: str) -> StreamState | None:
    value = state.get(key)
    return value if isinstance(value, StreamState) else None
