"""Recorded rows of a declared stream, made into the events its devices would publish.

A recording is a CSV, JSON-lines or Parquet file whose columns are the declared stream's field
names (or, for a field that names its source column with ``column``, that column).
:func:`load` reads it in
two passes: the first finds the recording's first and last times (for rebasing), the second
converts every row to the declared types, stamps it with an ``event_id`` and ``schema`` when
the file has none, shifts its time (:class:`Rebase`) and checks it with the stream's event
contract, exactly as the gateway's bridge will. A row that fails is kept out and counted with
the reason, field named. What passes is held per device, in file order, with the time it is
due relative to the recording's start (:class:`Recording`).

Conversion is lenient about representation, strict about meaning: CSV strings become numbers
and booleans, ``"3.0"`` an int, an empty cell a missing value (``None`` for an optional
field); a value that does not convert stays as it is, so the contract refuses it and says
which field it was.
"""

from __future__ import annotations

import csv
import heapq
import math
import re
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import msgspec
from firmware_sim.errors import SimError

from shared.contracts import SCHEMA_VERSION, decode
from shared.declarations.schema import FieldDecl, Stream
from shared.declarations.transforms import to_seconds
from shared.errors import ContractError
from shared.streams import StreamSpec

Format = Literal["csv", "jsonl", "parquet"]
RebaseMode = Literal["now", "end", "none"]
FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# Device ids log in to Mosquitto as user and client id and form a topic level: the broker's
# rule (shared.infra.mosquitto.DEVICE_ID), checked here without importing the broker code.
DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
MAX_EVENT_ID = 64
TRUE = frozenset({"true", "t", "yes", "y", "1"})
FALSE = frozenset({"false", "f", "no", "n", "0"})
NO_DEVICE = "(no device)"


class ReplayError(SimError):
    """A recording or labels file that cannot be read at all; the message says why."""


def file_format(path: Path, given: str | None = None) -> Format:
    """The recording's format: ``given``, or from the file name's suffix."""
    if given:
        if given not in ("csv", "jsonl", "parquet"):
            raise ReplayError(f"unknown format {given!r} (csv, jsonl or parquet)")
        return given  # type: ignore[return-value]
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ReplayError(
            f"{path}: cannot tell the format from the suffix {path.suffix!r} "
            "(.csv, .jsonl, .ndjson, .json, .parquet); pass --format"
        )
    return fmt


def read_rows(
    path: Path, fmt: Format, columns: list[str] | None = None
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(row number from 1, the row's columns) in file order; instead of the columns, the
    reason when one row cannot be read (a JSON line that is not an object)."""
    try:
        if fmt == "csv":
            yield from _csv_rows(path)
        elif fmt == "jsonl":
            yield from _jsonl_rows(path)
        else:
            yield from _parquet_rows(path, columns)
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror or exc}") from None


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            return
        try:
            yield from enumerate(reader, 1)
        except csv.Error as exc:
            raise ReplayError(f"{path}:{reader.line_num}: not CSV ({exc})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    decoder = msgspec.json.Decoder()
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            n += 1
            try:
                obj = decoder.decode(line)
            except msgspec.DecodeError:
                yield n, "not valid JSON"
                continue
            yield (n, obj) if isinstance(obj, dict) else (n, "not a JSON object")


def _parquet_rows(
    path: Path, columns: list[str] | None
) -> Iterator[tuple[int, dict[str, Any] | str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ReplayError(
            "reading Parquet needs the pyarrow package, which is not installed "
            "(pip install pyarrow, or install fleetsentry with the [cloud] "
            "extra); or convert the file to CSV or JSON lines"
        ) from None
    pf = pq.ParquetFile(path)
    present = set(pf.schema_arrow.names)
    wanted = [c for c in columns if c in present] if columns is not None else None
    n = 0
    for batch in pf.iter_batches(batch_size=65_536, columns=wanted):
        for row in batch.to_pylist():
            n += 1
            yield n, row


# --- conversion ---------------------------------------------------------------------------


def source_column(name: str, decl: FieldDecl) -> str:
    """The recording's column for a declared field: its ``column`` if it declares one."""
    return decl.column or name


def typed(value: Any, kind: str) -> Any:
    """``value`` as the declared type when it converts; otherwise unchanged (the event
    contract then refuses it, naming the field). Empty strings are handled by the caller."""
    if isinstance(value, str):
        text = value.strip()
        if kind == "float":
            try:
                return float(text)
            except ValueError:
                return value
        if kind == "int":
            try:
                return int(text)
            except ValueError:
                pass
            try:
                f = float(text)
            except ValueError:
                return value
            return int(f) if f.is_integer() else value
        if kind == "bool":
            low = text.lower()
            return True if low in TRUE else False if low in FALSE else value
        return value
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


class RowConverter:
    """Rows of the recording -> the stream's payload dicts (not yet checked)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.fields = [
            (name, source_column(name, decl), decl.type) for name, decl in stream.fields.items()
        ]
        self.device_column = source_column(stream.device.field, stream.fields[stream.device.field])
        time_decl = stream.fields[stream.time.field]
        self.time_column = source_column(stream.time.field, time_decl)
        self.time_type = time_decl.type

    @property
    def columns(self) -> list[str]:
        return [c for _, c, _ in self.fields] + ["event_id", "schema"]

    def convert(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, column, kind in self.fields:
            value = row.get(column)
            if value is None or value == "":
                continue  # missing: None for an optional field, refused for a required one
            out[name] = typed(value, kind)
        event_id = row.get("event_id")
        if event_id is not None and event_id != "":
            out["event_id"] = str(event_id)
        schema = row.get("schema")
        if schema is not None and schema != "":
            out["schema"] = typed(schema, "int")
        return out

    def time_of(self, row: dict[str, Any]) -> float | None:
        """The row's recorded time in epoch seconds; None when it is not one."""
        value = row.get(self.time_column)
        if value is None or value == "":
            return None
        return seconds_of(typed(value, self.time_type), self.stream.time.unit)


def seconds_of(value: Any, unit: str) -> float | None:
    if isinstance(value, bool) or (unit != "iso8601" and not isinstance(value, int | float)):
        return None
    try:
        seconds = to_seconds(value, unit)
    except (ValueError, TypeError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


# --- time ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rebase:
    """Shifts every time by ``offset_ms``, written back in the declared unit and type.

    ``now``: the recording's first time becomes the moment of loading; ``end``: its last
    time does (every event in the past); ``none``: times stay as recorded. The shift is a
    whole number of milliseconds, so integer millisecond times stay exact.
    """

    mode: RebaseMode
    offset_ms: int = 0

    @classmethod
    def plan(
        cls, mode: RebaseMode, first_s: float | None, last_s: float | None, now_s: float
    ) -> Rebase:
        if mode == "none" or first_s is None or last_s is None:
            return cls(mode, 0)
        anchor = first_s if mode == "now" else last_s
        return cls(mode, round((now_s - anchor) * 1000))

    @property
    def offset_s(self) -> float:
        return self.offset_ms / 1000.0

    def shift(self, value: Any, unit: str, kind: str) -> Any:
        """The shifted time, in the form it came in (``value`` is a valid time)."""
        if not self.offset_ms:
            return value
        if unit == "iso8601":
            moment = datetime.fromisoformat(str(value)) + timedelta(milliseconds=self.offset_ms)
            return moment.isoformat()
        if unit == "ms":
            return value + self.offset_ms if kind == "int" else round(value + self.offset_ms, 3)
        if kind == "int":
            return value + round(self.offset_ms / 1000)
        return round(value + self.offset_ms / 1000, 3)


# --- the recording ------------------------------------------------------------------------


@dataclass
class DeviceRows:
    """One device's accepted events, in file order, and what was refused."""

    device: str
    index: int
    # Seconds after the recording's first time each event is due: never less than the
    # previous one's, so the device's file order is its send order.
    due: array[float] = field(default_factory=lambda: array("d"))
    payloads: list[bytes] = field(default_factory=list)
    rows: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return len(self.payloads)


@dataclass
class Recording:
    stream: Stream
    path: Path
    rebase: Rebase
    devices: dict[str, DeviceRows] = field(default_factory=dict)
    # Rows refused before a device could be told (unreadable, no device id).
    no_device: DeviceRows = field(default_factory=lambda: DeviceRows(NO_DEVICE, -1))
    rows: int = 0
    first_s: float | None = None  # the recorded (not rebased) first and last times
    last_s: float | None = None
    # reason -> the first row refused for it
    first_row: dict[str, int] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(d.accepted for d in self.devices.values())

    @property
    def rejected(self) -> Counter[str]:
        total: Counter[str] = Counter(self.no_device.rejected)
        for d in self.devices.values():
            total.update(d.rejected)
        return total

    @property
    def span_s(self) -> float:
        return max((d.due[-1] for d in self.devices.values() if d.due), default=0.0)

    def topic(self, device: str) -> str:
        return self.stream.mqtt_topic(device)

    def in_time_order(self) -> Iterator[tuple[DeviceRows, int]]:
        """(device, event number) by due time across devices, each device in its order:
        the order a paced replay sends them in (ties: the device that appeared first)."""
        heap = [(d.due[0], d.index, 0) for d in self.devices.values() if d.payloads]
        heapq.heapify(heap)
        by_index = {d.index: d for d in self.devices.values()}
        while heap:
            _, idx, i = heapq.heappop(heap)
            d = by_index[idx]
            yield d, i
            if i + 1 < len(d.payloads):
                heapq.heappush(heap, (d.due[i + 1], idx, i + 1))


@dataclass(frozen=True)
class Accepted:
    """An accepted row, for whoever labels the replay."""

    device: str
    event_id: str
    recorded_s: float
    sent_s: float  # the time the event carries after rebasing


def event_id_for(device: str, row: int) -> str:
    """``<device>-<row>``: the same for the same file; an id too long for the contract
    (64 characters) uses a digest of the device id instead."""
    eid = f"{device}-{row}"
    if len(eid) <= MAX_EVENT_ID:
        return eid
    import hashlib

    return f"{hashlib.blake2b(device.encode(), digest_size=12).hexdigest()}-{row}"


def time_bounds(path: Path, fmt: Format, conv: RowConverter) -> tuple[float | None, float | None]:
    """The recording's first and last valid times (epoch seconds); None, None if none."""
    first = last = None
    for _, row in read_rows(path, fmt, [conv.time_column]):
        if isinstance(row, str):
            continue
        t = conv.time_of(row)
        if t is None:
            continue
        first = t if first is None or t < first else first
        last = t if last is None or t > last else last
    return first, last


def load(
    path: Path,
    spec: StreamSpec,
    rebase: RebaseMode = "now",
    now_s: float = 0.0,
    fmt: str | None = None,
    on_accepted: Callable[[Accepted], None] | None = None,
    on_row: Callable[[int], None] | None = None,
) -> Recording:
    """Read, convert, rebase and check every row of ``path`` for the declared ``spec``.

    ``now_s`` is the moment ``rebase="now"`` (or ``"end"``) maps the recording to.
    ``on_accepted`` sees every accepted row (labels); ``on_row(n)`` every 10,000 rows.
    """
    stream = spec.declaration
    if stream is None:
        raise ReplayError(
            f"stream {spec.name!r} is built in: its events come from the "
            "simulator (`sim run`); replay takes a declared stream"
        )
    form = file_format(path, fmt)
    if not path.is_file():
        raise ReplayError(f"no recording at {path}")
    conv = RowConverter(stream)
    first, last = time_bounds(path, form, conv)
    plan = Rebase.plan(rebase, first, last, now_s)
    rec = Recording(stream=stream, path=path, rebase=plan, first_s=first, last_s=last)
    rows = read_rows(path, form, conv.columns)
    _accept_rows(rec, spec.event, rows, conv, first or 0.0, on_accepted, on_row)
    return rec


def _accept_rows(
    rec: Recording,
    event: type,
    rows: Iterator[tuple[int, dict[str, Any] | str]],
    conv: RowConverter,
    origin: float,
    on_accepted: Callable[[Accepted], None] | None,
    on_row: Callable[[int], None] | None,
) -> None:
    """Each row converted, stamped, rebased and checked into its device's events (due
    ``origin`` seconds after the recording's start), or refused with the reason."""
    plan, stream = rec.rebase, rec.stream
    time_field, unit = stream.time.field, stream.time.unit
    time_type, device_field = stream.fields[time_field].type, stream.device.field
    encode = msgspec.json.Encoder().encode
    for n, row in rows:
        rec.rows = n
        if on_row is not None and n % 10_000 == 0:
            on_row(n)
        if isinstance(row, str):
            rec.no_device.rows += 1
            _refuse(rec, rec.no_device, n, row)
            continue
        payload = conv.convert(row)
        d = _device_of(rec, payload, device_field, n)
        if d is None:
            continue
        raw_time = payload.get(time_field)
        recorded = seconds_of(raw_time, unit) if raw_time is not None else None
        if recorded is None:
            _refuse(
                rec,
                d,
                n,
                f"missing time (at {time_field})"
                if raw_time is None
                else f"not a time in the declared unit {unit} (at {time_field})",
            )
            continue
        payload[time_field] = plan.shift(raw_time, unit, time_type)
        payload.setdefault("event_id", event_id_for(d.device, n))
        payload.setdefault("schema", SCHEMA_VERSION)
        data = encode(payload)
        try:
            decode(event, data)
        except ContractError as exc:
            _refuse(rec, d, n, str(exc))
            continue
        due = recorded - origin
        if d.due and due < d.due[-1]:
            due = d.due[-1]  # out of order in the file: sent in file order, at once
        d.due.append(due)
        d.payloads.append(data)
        if on_accepted is not None:
            on_accepted(Accepted(d.device, payload["event_id"], recorded, recorded + plan.offset_s))


def _refuse(rec: Recording, d: DeviceRows, n: int, reason: str) -> None:
    d.rejected[reason] += 1
    rec.first_row.setdefault(reason, n)


def _device_of(
    rec: Recording, payload: dict[str, Any], device_field: str, n: int
) -> DeviceRows | None:
    """The device of row ``n`` (its row counted), or None when the row is refused for its
    device id (none, or one that cannot log in to the broker)."""
    device = payload.get(device_field)
    if not isinstance(device, str) or not device:
        rec.no_device.rows += 1
        _refuse(rec, rec.no_device, n, f"no device id (at {device_field})")
        return None
    d = rec.devices.get(device) or _device(rec, device)
    d.rows += 1
    if not DEVICE_ID.fullmatch(device):
        reason = (
            "device id cannot log in to the broker (1-64 letters, digits, "
            f"'_', '.', ':', '-') (at {device_field})"
        )
        _refuse(rec, d, n, reason)
        return None
    return d


def _device(rec: Recording, device: str) -> DeviceRows:
    d = DeviceRows(device=device, index=len(rec.devices))
    rec.devices[device] = d
    return d


def top_reasons(counts: Counter[str], first_row: dict[str, int], n: int = 3) -> list[str]:
    """The ``n`` commonest reasons, with their count and the first row refused for each."""
    return [
        f"{reason} ×{count} (first: row {first_row.get(reason, '?')})"
        for reason, count in counts.most_common(n)
    ]
