"""A first stream declaration from a recording of an operator's own vehicles.

:func:`read_sample` reads the first rows of a CSV (delimiter sniffed), JSON-lines or Parquet
file; :func:`infer` guesses, per column, the field type, whether it is required, its observed
range and typical deviation, which column names the device and which carries the time (and its
unit), which columns are personal data and what should become of them, and a starting
``[features]`` block that never reads personal data. :func:`render` writes the declaration as
TOML with every guess explained in a comment beside its line, so an operator edits a file that
already loads instead of a blank page. See docs/streams.md, "Inferring a declaration from a
recording".

>>> sample = Sample(source="door.csv", fmt="csv", typed=False, note="",
...                 columns={"unit": ["BUS-7", "BUS-8"] * 30,
...                          "ts": [str(1767600000 + i) for i in range(60)],
...                          "opens": [str(i % 3) for i in range(60)]})
>>> d = infer(sample)
>>> d.device.source, d.time.source, d.time.unit, d.fields["opens"].type
('unit', 'ts', 's', 'int')
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from shared.declarations.catalog import BUILTIN_NAMES
from shared.declarations.loader import ENVELOPE, FIELD_PATTERN, NAME_PATTERN
from shared.declarations.transforms import to_seconds
from shared.errors import ConfigError

SAMPLE_ROWS = 10_000
FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# CSV cells that mean "no value".
MISSING = {"", "null", "none", "nan", "na", "n/a"}
# An enum has at most this many distinct values, each seen often enough to be a category.
ENUM_MAX = 12
ENUM_MIN_ROWS = 30
ENUM_VALUE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
# A share of the values matching a pattern that makes the column of that kind.
MOST = 0.9
# What devices may use as an id (the MQTT user name and client id, docs/streams.md).
DEVICE_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
VIN = re.compile(r"^[A-HJ-NPR-Z0-9]{17}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
PHONE = re.compile(r"^\+?[0-9][0-9 ().-]{5,22}[0-9]$")
PERSON = re.compile(r"^[A-Z][a-z'’-]+(?: [A-Z][a-z'’.-]*)+$")
IPV4 = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}$")

DEVICE_NAMES = (
    "vin",
    "device_id",
    "device",
    "vehicle_id",
    "vehicle",
    "unit_id",
    "unit",
    "truck_id",
    "truck",
    "car_id",
    "car",
    "bus_id",
    "bus",
    "trailer_id",
    "trailer",
    "asset_id",
    "asset",
    "fleet_no",
    "imei",
    "id",
)
NOUNS = {
    "vin": "vehicle",
    "vehicle": "vehicle",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "trailer": "trailer",
    "asset": "asset",
    "unit": "unit",
}
TIME_NAMES = (
    "time",
    "ts",
    "timestamp",
    "t",
    "datetime",
    "date_time",
    "event_time",
    "time_utc",
    "timestamp_utc",
    "time_ms",
    "ts_ms",
    "timestamp_ms",
    "time_s",
    "epoch",
    "recorded_at",
    "created_at",
    "date",
)
TIME_SUFFIXES = ("_time", "_ts", "_at", "_timestamp")
LAT_WORDS = {"lat", "latitude"}
LON_WORDS = {"lon", "lng", "long", "longitude"}
# Name words that say a column is about a person, and what becomes of it.
PERSON_WORDS = {
    "driver",
    "name",
    "owner",
    "cardholder",
    "holder",
    "customer",
    "passenger",
    "person",
    "firstname",
    "lastname",
    "surname",
    "fullname",
    "employee",
    "user",
    "username",
}
THING_WORDS = {
    "model",
    "product",
    "brand",
    "make",
    "firmware",
    "file",
    "host",
    "station",
    "route",
    "site",
    "depot",
    "stream",
    "type",
    "sensor",
    "signal",
    "fuel",
}
NAME_HINTS: tuple[tuple[set[str], str, str], ...] = (
    (PERSON_WORDS, "token", "names a person"),
    ({"card", "pan", "iban", "account"}, "token", "names a payment card or account"),
    (
        {"vin", "plate", "registration", "licence", "license"},
        "token",
        "identifies a vehicle and so its keeper",
    ),
    ({"email", "mail"}, "vault", "is an e-mail address"),
    ({"phone", "tel", "mobile", "msisdn"}, "vault", "is a phone number"),
    ({"address", "street", "postcode", "zip", "ip"}, "vault", "is an address"),
    ({"birth", "dob", "ssn", "passport"}, "vault", "is an identity document or birth date"),
)
UNIT_SUFFIXES = {
    "c": "°C",
    "degc": "°C",
    "f": "°F",
    "kpa": "kPa",
    "bar": "bar",
    "psi": "psi",
    "kmh": "km/h",
    "kph": "km/h",
    "mph": "mph",
    "pct": "%",
    "percent": "%",
    "rpm": "rpm",
    "v": "V",
    "kw": "kW",
    "km": "km",
    "m": "m",
    "l": "L",
    "ms": "ms",
    "s": "s",
    "deg": "°",
    "mps": "m/s",
}


class InferError(ConfigError):
    """A recording cannot be read or yields no declaration; the message says what to do."""


@dataclass
class Sample:
    """The first rows of a recording, column by column (None: no value in that row)."""

    source: str
    fmt: str
    # False for CSV: every cell is text, and the types are guessed from it.
    typed: bool
    columns: dict[str, list[Any]]
    note: str = ""

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()), []))


@dataclass
class FieldGuess:
    source: str  # the column's name in the recording
    name: str  # the field name
    type: str
    required: bool = True
    unit: str = ""
    range: tuple[float, float] | None = None
    typical_std: float | None = None
    values: list[str] | None = None
    pii: str | None = None
    label: str | None = None
    features: list[str] = field(default_factory=list)
    token_field: str | None = None
    why: list[str] = field(default_factory=list)


@dataclass
class Role:
    source: str
    name: str
    why: str
    unit: str = ""  # time: s, ms, iso8601
    pattern: str = ""  # device: the ids' pattern
    noun: str = "device"


@dataclass
class Declaration:
    name: str
    sample: Sample
    device: Role
    time: Role
    fields: dict[str, FieldGuess]
    cell: tuple[str, str] | None = None
    cell_why: str = ""
    person: str | None = None
    person_why: str = ""
    skipped: list[str] = field(default_factory=list)
    gap_name: str = "gap_s"
    # The median time between one device's consecutive events (None: no device sent twice).
    interval_s: float | None = None


# -- reading -----------------------------------------------------------------------------------


def read_sample(path: str | Path, fmt: str | None = None, rows: int = SAMPLE_ROWS) -> Sample:
    """The first ``rows`` rows of a CSV, JSON-lines or Parquet file (``fmt``: from the suffix)."""
    path = Path(path)
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InferError(
            f"cannot tell the format of {path.name} from its suffix: "
            "pass --format csv, jsonl or parquet"
        )
    if not path.is_file():
        raise InferError(f"no file {path}")
    if rows < 1:
        raise InferError("the sample needs at least one row")
    reader = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet}.get(fmt)
    if reader is None:
        raise InferError(f"unknown format {fmt!r} (known: csv, jsonl, parquet)")
    sample = reader(path, rows)
    if not sample.columns or sample.rows == 0:
        raise InferError(f"{path.name}: no rows to infer from")
    return sample


def _read_csv(path: Path, rows: int) -> Sample:
    with path.open(newline="", encoding="utf-8-sig") as f:
        head = f.read(65536)
        try:
            dialect: Any = csv.Sniffer().sniff(head, delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        f.seek(0)
        reader = csv.reader(f, dialect)
        header = next(reader, None)
        if not header:
            raise InferError(f"{path.name}: no header row")
        _unique_columns(path.name, header)
        cols: dict[str, list[Any]] = {h: [] for h in header}
        for n, row in enumerate(reader):
            if n >= rows:
                break
            for i, h in enumerate(header):
                cols[h].append(row[i] if i < len(row) else None)
    delim = {"\t": "tab"}.get(dialect.delimiter, repr(dialect.delimiter))
    return Sample(path.name, "csv", False, cols, f"CSV, delimiter {delim}")


def _unique_columns(source: str, header: list[str]) -> None:
    twice = [h for h, n in Counter(header).items() if n > 1]
    if twice:
        raise InferError(f"{source}: column {twice[0]!r} appears twice: rename one")


def _read_jsonl(path: Path, rows: int) -> Sample:
    records: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if len(records) >= rows:
                break
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise InferError(f"{path.name}: line {n} is not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise InferError(f"{path.name}: line {n} is not a JSON object")
            records.append(obj)
    return Sample(path.name, "jsonl", True, _by_column(records), "JSON lines")


def _by_column(records: list[dict[str, Any]]) -> dict[str, list[Any]]:
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r))
    return {n: [r.get(n) for r in records] for n in names}


def _read_parquet(path: Path, rows: int) -> Sample:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InferError(
            "reading Parquet needs the pyarrow package (in fleetsentry[cloud]); "
            "or convert the recording to CSV or JSON lines"
        ) from None
    try:
        pf = pq.ParquetFile(path)
        records: list[dict[str, Any]] = []
        for batch in pf.iter_batches(batch_size=min(rows, 65536)):
            records += batch.to_pylist()[: rows - len(records)]
            if len(records) >= rows:
                break
        names = list(pf.schema_arrow.names)
    except Exception as exc:  # pyarrow raises its own zoo (ArrowInvalid, OSError, ...)
        raise InferError(f"{path.name}: not a readable Parquet file: {exc}") from None
    _unique_columns(path.name, names)
    cols = {n: [_plain(r.get(n)) for r in records] for n in names}
    return Sample(path.name, "parquet", True, cols, "Parquet")


def _plain(v: Any) -> Any:
    """A Parquet value as JSON would carry it: times as ISO 8601 text, decimals as floats."""
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
        return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, Decimal):
        return float(v)
    return v


# -- one column ----------------------------------------------------------------------------------


@dataclass
class Column:
    """A column's values, typed (CSV text parsed), with what the guesses need."""

    source: str
    name: str
    values: list[Any]  # None where missing
    texts: list[str]  # the non-missing values as text
    kind: str  # bool, int, float, str, nested, empty
    missing: int

    @property
    def present(self) -> list[Any]:
        return [v for v in self.values if v is not None]

    def share(self, pattern: re.Pattern[str]) -> float:
        return sum(1 for t in self.texts if pattern.match(t)) / max(1, len(self.texts))


def column(source: str, name: str, raw: list[Any], typed: bool) -> Column:
    values = (
        [_cell(v) for v in raw]
        if not typed
        else [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in raw]
    )
    present = [v for v in values if v is not None]
    texts = [_text(v) for v in present]
    kind = _kind(present, texts, typed)
    if kind == "str" and not typed:
        values = [None if v is None else _text(v) for v in values]
    return Column(source, name, values, texts, kind, len(values) - len(present))


def _cell(text: Any) -> Any:
    """A CSV cell as bool, int, float or str (None for an empty cell or a null word)."""
    if text is None or text.strip().lower() in MISSING:
        return None
    s = text.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if re.fullmatch(r"[+-]?\d+", s):
        return int(s)
    try:
        x = float(s)
    except ValueError:
        return s
    return x if math.isfinite(x) else s


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)


def _kind(present: list[Any], texts: list[str], typed: bool) -> str:
    if not present:
        return "empty"
    kinds = {type(v) for v in present}
    if kinds & {dict, list, bytes}:
        return "nested"
    if kinds == {bool}:
        return "bool"
    if bool in kinds or str in kinds:
        return "str"
    # "0042" is an id, not the number 42.
    if not typed and any(re.fullmatch(r"[+-]?0\d+", t) for t in texts):
        return "str"
    return "int" if kinds == {int} else "float"


def field_name(source: str) -> str:
    """A column name as a declaration field name (``Speed (km/h)`` -> ``speed_km_h``).

    >>> field_name("Speed (km/h)"), field_name("tire_pressure_1_1"), field_name("CoolantTemp")
    ('speed_km_h', 'tire_pressure_1_1', 'coolant_temp')
    """
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", source.strip())
    s = re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_") or "column"
    if s[0].isdigit():
        s = f"f_{s}"
    return s[:64].rstrip("_")


def _words(name: str) -> set[str]:
    return set(name.split("_"))


def luhn(digits: str) -> bool:
    """The Luhn checksum of a card number.

    >>> luhn("4111111111111111"), luhn("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(col: Column) -> float:
    digits = [re.sub(r"[ -]", "", t) for t in col.texts]
    return sum(1 for d in digits if d.isdigit() and 12 <= len(d) <= 19 and luhn(d)) / max(
        1, len(digits)
    )


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def _num(x: float) -> str:
    return f"{x:,.6g}" if abs(x) < 1e15 else f"{x:.6g}"


# -- roles: device and time ------------------------------------------------------------------


def _device_pattern(texts: Iterable[str]) -> str:
    """A pattern matching every observed id: their character classes, their lengths."""
    ids = list(texts)
    chars = set("".join(ids))
    parts = [
        c
        for c, test in (("A-Z", str.isupper), ("a-z", str.islower), ("0-9", str.isdigit))
        if any(test(ch) and ch.isascii() for ch in chars)
    ]
    other = sorted(ch for ch in chars if not (ch.isascii() and ch.isalnum()))
    # "-" last, where it needs no escape; every other sign escaped ("[", "]", "^", "\\")
    cls = (
        "".join(parts)
        + "".join(re.escape(ch) for ch in other if ch != "-")
        + ("-" if "-" in other else "")
    )
    lo, hi = min(map(len, ids)), max(map(len, ids))
    return f"^[{cls}]{{{lo}}}$" if lo == hi else f"^[{cls}]{{{lo},{hi}}}$"


def _device_like(col: Column) -> bool:
    """Ids repeat (several events per device) and are fit to log in to the broker."""
    if col.kind not in ("str", "int") or not col.texts:
        return False
    distinct = len(set(col.texts))
    return distinct < len(col.texts) and all(DEVICE_ID.match(t) for t in col.texts)


def find_device(cols: list[Column], forced: str | None) -> tuple[Column, str]:
    if forced is not None:
        col = _by_source(cols, forced, "--device")
        return col, "named with --device"
    for name in DEVICE_NAMES:
        for col in cols:
            if col.name == name and _device_like(col):
                return col, f"by name ({col.source!r})"
    content = [
        c
        for c in cols
        if c.kind == "str"
        and _device_like(c)
        and c.share(re.compile(r".*\d")) >= MOST
        and _cards(c) < MOST
        and len(set(c.texts)) <= len(c.texts) / 2
    ]
    if content:
        col = max(content, key=lambda c: len(set(c.texts)))
        return col, "by content (a repeating id with digits; no column is named like a device)"
    raise InferError(
        "no column looks like the device id (named vin, device_id, vehicle, car, "
        "truck, unit, asset, ... with repeating ids): name it with --device COLUMN"
    )


def _by_source(cols: list[Column], wanted: str, option: str) -> Column:
    for col in cols:
        if wanted in (col.source, col.name):
            return col
    raise InferError(
        f"{option} {wanted!r}: no such column (columns: {', '.join(c.source for c in cols)})"
    )


def time_unit(col: Column) -> tuple[str, str] | None:
    """("s" | "ms" | "iso8601", why) when every value is a time, else None."""
    if not col.texts:
        return None
    if col.kind in ("int", "float"):
        xs = [float(v) for v in col.present]
        lo, hi = min(xs), max(xs)
        if 1e9 <= lo and hi <= 4.2e9:
            return "s", f"numbers from {_num(lo)} to {_num(hi)}: epoch seconds (2001-2103)"
        if 1e12 <= lo and hi <= 4.2e12:
            return "ms", f"numbers from {_num(lo)} to {_num(hi)}: epoch milliseconds"
        return None
    if col.kind != "str":
        return None
    try:
        for t in col.texts:
            datetime.fromisoformat(t)
    except ValueError:
        return None
    zoned = sum(1 for t in col.texts if datetime.fromisoformat(t).tzinfo is not None)
    zone = (
        "all with a zone"
        if zoned == len(col.texts)
        else (
            "none with a zone (read as UTC)" if not zoned else f"{zoned} with a zone, the rest UTC"
        )
    )
    return "iso8601", (
        f"every value is ISO 8601 (datetime.fromisoformat), e.g. {col.texts[0]!r}; {zone}"
    )


def _time_named(name: str) -> int | None:
    if name in TIME_NAMES:
        return TIME_NAMES.index(name)
    return len(TIME_NAMES) if name.endswith(TIME_SUFFIXES) else None


def find_time(cols: list[Column], forced: str | None) -> tuple[Column, str, str]:
    if forced is not None:
        col = _by_source(cols, forced, "--time")
        unit = time_unit(col)
        if unit is None:
            raise InferError(
                f"--time {forced!r}: its values are neither epoch seconds, epoch "
                "milliseconds nor ISO 8601 times"
            )
        return col, unit[0], f"named with --time; {unit[1]}"
    named = sorted((r, i, c) for i, c in enumerate(cols) if (r := _time_named(c.name)) is not None)
    for _, _, col in named:
        unit = time_unit(col)
        if unit is not None:
            return col, unit[0], f"by name ({col.source!r}); {unit[1]}"
    timed = [(c, u) for c in cols if (u := time_unit(c)) is not None]
    if timed:
        col, unit = max(timed, key=lambda cu: len(set(cu[0].texts)))
        return col, unit[0], f"by content; {unit[1]}"
    raise InferError(
        "no column holds times (epoch seconds, epoch milliseconds or ISO 8601 "
        "text): name it with --time COLUMN"
    )


# -- personal data -------------------------------------------------------------------------------


def pii_of(col: Column) -> tuple[str | None, str]:
    """(pii handling or None, why): by content first, then by the column's name."""
    if col.kind in ("bool", "float") and not _words(col.name) & PERSON_WORDS:
        by_name = _pii_by_name(col)
        return by_name if by_name[0] else (None, "")
    n = len(col.texts)
    checks = (
        (
            VIN,
            "token",
            "17-character VINs (no I, O or Q): a VIN identifies the vehicle and so its keeper",
        ),
        (
            EMAIL,
            "vault",
            'e-mail addresses: kept in the gateway\'s vault only (use "token" '
            "to follow one address across events)",
        ),
        (PERSON, "token", "two or more capitalized words: people's names"),
        (IPV4, "vault", "IPv4 addresses"),
    )
    for pattern, pii, what in checks:
        share = col.share(pattern)
        if share >= MOST:
            return pii, f"{_pct(share)} of {n:,} values are {what}"
    cards = _cards(col)
    if cards >= MOST:
        return "token", (
            f"{_pct(cards)} of {n:,} values are Luhn-valid 12-19 digit numbers (card numbers)"
        )
    phones = sum(
        1
        for t in col.texts
        if PHONE.match(t)
        and sum(ch.isdigit() for ch in t) >= 7
        and not t.isdigit()
        or (t.isdigit() and t.startswith("0") and len(t) >= 9)
    )
    if n and phones / n >= MOST:
        return "vault", f"{_pct(phones / n)} of {n:,} values look like phone numbers"
    return _pii_by_name(col)


def _pii_by_name(col: Column) -> tuple[str | None, str]:
    words = _words(col.name)
    if words & THING_WORDS:  # "model_name", "station_name": a thing's name, not a person's
        words -= {"name", "user", "holder", "owner"}
    for hint, pii, what in NAME_HINTS:
        if words & hint:
            word = sorted(words & hint)[0]
            return pii, (
                f"the name says it {what} ({word!r}), whatever the values look like; "
                "personal until you say otherwise"
            )
    return None, ""


def _not_personal(col: Column) -> str:
    distinct = len(set(col.texts))
    free = sum(1 for t in col.texts if " " in t) / max(1, len(col.texts))
    return (
        f"not judged personal: no VIN, card number, e-mail, phone, IP address or "
        f"personal-name pattern among its {distinct:,} distinct values and no personal "
        f"word in its name"
        + (f"; {_pct(free)} have spaces (free text?): check them" if free else "")
    )


# -- numbers -------------------------------------------------------------------------------------


def _nice(x: float, step: float, up: bool) -> float:
    q = x / step
    q = math.ceil(q) if up else math.floor(q)
    return float(f"{q * step:.10g}")


def widened_range(lo: float, hi: float) -> tuple[float, float]:
    """The observed [lo, hi] widened by half its span each side (not below 0 when no value
    was), rounded outward: ``value`` features are clipped to the range, and an anomaly is a
    value the sample never held.

    >>> widened_range(71.2, 104.9)
    (54.0, 122.0)
    >>> widened_range(0.0, 120.0)
    (0.0, 180.0)
    """
    pad = (hi - lo) / 2
    step = 10.0 ** math.floor(math.log10(hi - lo)) / 10
    new_lo = lo - pad if lo < 0 else max(0.0, lo - pad)
    return _nice(new_lo, step, False), _nice(hi + pad, step, True)


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def typical_std(col: Column, devices: list[Any]) -> tuple[float | None, str]:
    """The root mean of the per-device variances (devices with 2+ values), else the overall
    standard deviation; None when the values never vary."""
    by: dict[Any, list[float]] = defaultdict(list)
    for dev, v in zip(devices, col.values, strict=True):
        if v is not None and dev is not None:
            by[dev].append(float(v))
    variances = [statistics.pvariance(xs) for xs in by.values() if len(xs) > 1]
    if variances and (per := math.sqrt(statistics.fmean(variances))) > 0:
        return _sig(per), f"typical_std: within-device std over {len(variances)} devices"
    xs = [float(v) for v in col.present]
    if len(xs) > 1 and (overall := statistics.pstdev(xs)) > 0:
        return _sig(overall), "typical_std: std over all rows (no device varies alone)"
    return None, "no typical_std: the value never varies in the sample"


def _unit(source: str, name: str) -> str:
    inner = re.search(r"\(([^)]{1,12})\)\s*$", source) or re.search(r"\[([^]]{1,12})\]\s*$", source)
    if inner:
        return inner.group(1).strip()
    last = name.rsplit("_", 1)[-1]
    # a lone "v" or "s" is no unit; "rpm" or "kpa" alone is
    return UNIT_SUFFIXES.get(last, "") if "_" in name or len(last) > 2 else ""


# -- the whole declaration -----------------------------------------------------------------------


def stream_name(source: str) -> str:
    """A stream name from a file name (``Fleet trips 2026.csv`` -> ``fleet_trips_2026``)."""
    name = field_name(Path(source).stem)[:32].rstrip("_")
    return name if name[0].isalpha() else f"s_{name}"[:32]


def infer(
    sample: Sample, name: str | None = None, device: str | None = None, time: str | None = None
) -> Declaration:
    """Every guess about ``sample``; ``device`` and ``time`` force those columns."""
    if name is None:
        name = stream_name(sample.source)
        if name in BUILTIN_NAMES:  # a declared stream may not take a built-in stream's name
            name = f"{name}_own"
    elif name in BUILTIN_NAMES:
        raise InferError(f"stream name {name!r} is a built-in stream's: pass another --name")
    if not NAME_PATTERN.match(name):
        raise InferError(f"stream name {name!r} does not match {NAME_PATTERN.pattern}: pass --name")
    cols, skipped = _columns(sample)
    if not cols:
        raise InferError(f"{sample.source}: no column to declare")
    dev, dev_why = find_device(cols, device)
    tcol, unit, t_why = find_time([c for c in cols if c is not dev], time)
    decl = Declaration(
        name=name,
        sample=sample,
        fields={},
        skipped=skipped,
        device=Role(
            dev.source, dev.name, dev_why, pattern=_device_pattern(dev.texts), noun=_noun(dev.name)
        ),
        time=Role(tcol.source, tcol.name, t_why, unit=unit),
    )
    devices = dev.values
    decl.interval_s = _interval(devices, tcol.values, unit)
    cell = _cell_pair(cols, (dev, tcol))
    for col in cols:
        decl.fields[col.name] = _guess(col, decl, devices, cell)
    _mark_cell(decl, cell)
    _person(decl)
    _features(decl)
    return decl


def _columns(sample: Sample) -> tuple[list[Column], list[str]]:
    cols: list[Column] = []
    skipped: list[str] = []
    taken: set[str] = set()
    for source, raw in sample.columns.items():
        if source in ENVELOPE:
            skipped.append(f"{source!r}: every event carries it (the envelope)")
            continue
        base = field_name(source)
        name, n = base, 2
        while name in taken or name in ENVELOPE:
            name, n = f"{base}_{n}", n + 1
        col = column(source, name, raw, sample.typed)
        if col.kind in ("empty", "nested"):
            why = "no value" if col.kind == "empty" else "nested values (objects or lists)"
            skipped.append(f"{source!r}: {why} in the sample; a declaration holds flat values")
            continue
        taken.add(name)
        cols.append(col)
    return cols, skipped


def _noun(name: str) -> str:
    return next((noun for word, noun in NOUNS.items() if word in _words(name)), "device")


def _cell_pair(cols: list[Column], roles: tuple[Column, ...]) -> tuple[Column, Column] | None:
    def fits(col: Column, words: set[str], bound: float) -> bool:
        return (
            col not in roles
            and bool(_words(col.name) & words)
            and col.kind in ("int", "float")
            and all(-bound <= float(v) <= bound for v in col.present)
        )

    lats = [c for c in cols if fits(c, LAT_WORDS, 90.0)]
    lons = [c for c in cols if fits(c, LON_WORDS, 180.0)]
    return (lats[0], lons[0]) if lats and lons else None


def _guess(
    col: Column, decl: Declaration, devices: list[Any], cell: tuple[Column, Column] | None
) -> FieldGuess:
    g = FieldGuess(source=col.source, name=col.name, type=col.kind, required=not col.missing)
    if col.name != col.source:
        g.label = col.source
        g.why.append(
            f"column: {col.source!r} (renamed: a field name matches "
            f"{FIELD_PATTERN.pattern}; `column` keeps the recording's name)"
        )
    g.why.append(
        _type_why(col)
        + ("" if g.required else f"; required = false: {col.missing:,} rows have no value")
    )
    if col.name == decl.device.name:
        _device_field(g, col, decl)
    elif col.name == decl.time.name:
        g.type = "str" if decl.time.unit == "iso8601" else col.kind
        g.unit = decl.time.unit if decl.time.unit != "iso8601" else ""
        g.why.append("the event time (see [stream] time)")
        if col.missing:
            g.required = True
            g.why.append(f"{col.missing:,} sample rows have no time: the bridge refuses those")
    elif cell is not None and col in cell:
        g.type = "float"
        g.why.append("pii: one of the [stream] cell pair (a position)")
    else:
        _plain_field(g, col, decl, devices)
    return g


def _type_why(col: Column) -> str:
    n = len(col.texts)
    if col.kind == "bool":
        return f"type bool: all {n:,} values are true/false"
    if col.kind == "int":
        return f"type int: all {n:,} values are whole numbers"
    if col.kind == "float":
        return f"type float: all {n:,} values are numbers, some with decimals"
    return f"type str: {len(set(col.texts)):,} distinct text values over {n:,} rows"


def _device_field(g: FieldGuess, col: Column, decl: Declaration) -> None:
    g.type = "str"
    g.why.append(
        "the device id (see [stream] device): names a vehicle or unit, not a person, "
        "unless marked pii below"
    )
    if col.kind == "int":
        g.why.append(
            "the ids are numbers in the recording; a device id is a str: devices "
            'send it as text ("17")'
        )
    pii, why = pii_of(col)
    if pii == "token":
        g.pii = "token"
        g.why.append(f"pii: {why}")
    if col.missing:
        g.required = True
        g.why.append(f"{col.missing:,} sample rows have no device id: the bridge refuses those")


def _plain_field(g: FieldGuess, col: Column, decl: Declaration, devices: list[Any]) -> None:
    if time_unit(col) is not None and col.kind != "bool":
        g.type = "str" if col.kind == "str" else col.kind
        g.why.append("looks like a time too (not the event time): no feature")
        return
    pii, why = pii_of(col)
    if pii is not None:
        g.pii = pii
        g.why.append(f"pii: {why}")
        if not decl.sample.typed and g.type in ("int", "float"):
            g.type = "str"
            g.why.append("declared str: an identifier, not a quantity (and CSV is text)")
        return
    if col.kind == "str":
        _text_field(g, col)
    elif col.kind in ("int", "float"):
        _number_field(g, col, devices)


def _text_field(g: FieldGuess, col: Column) -> None:
    distinct = sorted(set(col.texts))
    if len(distinct) <= ENUM_MAX and len(col.texts) >= ENUM_MIN_ROWS:
        if all(ENUM_VALUE.match(v) for v in distinct):
            g.type, g.values = "enum", distinct
            g.why[-1] = (
                f"type enum: {len(distinct)} distinct values over {len(col.texts):,} "
                "rows" + ("" if g.required else "; required = false")
            )
            return
        g.why.append(
            "few distinct values, but not all are simple words (onehot names a "
            "feature after each): kept as str"
        )
    g.why.append(_not_personal(col))


def _number_field(g: FieldGuess, col: Column, devices: list[Any]) -> None:
    xs = [float(v) for v in col.present]
    lo, hi = min(xs), max(xs)
    g.unit = _unit(col.source, col.name)
    if g.unit:
        g.why.append(f"unit {g.unit!r}: from the column name")
    if hi > lo:
        g.range = widened_range(lo, hi)
        g.why.append(
            f"observed {_num(lo)} .. {_num(hi)}; range widened by half the span "
            "each side (value features are clipped to it)"
        )
    else:
        g.why.append(f"every value is {_num(lo)}: no range")
    g.typical_std, why = typical_std(col, devices)
    g.why.append(why)


def _mark_cell(decl: Declaration, cell: tuple[Column, Column] | None) -> None:
    if cell is None:
        for g in decl.fields.values():
            words = _words(g.name)
            if g.pii is None and words & (LAT_WORDS | LON_WORDS) and g.type in ("int", "float"):
                g.pii, g.features = "vault", []
                g.why.append(
                    "pii: named like a coordinate, but no latitude/longitude pair "
                    "within ±90/±180 was found: kept in the vault"
                )
        return
    lat, lon = cell
    decl.cell = (lat.name, lon.name)
    decl.cell_why = (
        f"cell: {lat.source!r} and {lon.source!r} are named latitude and longitude "
        "and stay within ±90 and ±180: a position, coarsened to a ~10 km cell"
    )
    for col in cell:
        decl.fields[col.name].pii = "cell"
    for g in decl.fields.values():
        if g.pii is None and _words(g.name) & (LAT_WORDS | LON_WORDS) and g.type == "float":
            g.pii, g.features = "vault", []
            g.why.append("pii: a second coordinate (the cell takes one pair): kept in the vault")


def _person(decl: Declaration) -> None:
    for g in decl.fields.values():
        if (
            g.pii == "token"
            and g.name != decl.device.name
            and (_words(g.name) & PERSON_WORDS or any("people's names" in w for w in g.why))
        ):
            decl.person = g.name
            decl.person_why = (
                f"person: {g.source!r} names the person this stream's personal "
                "data belongs to (erasing them erases it)"
            )
            return


def _features(decl: Declaration) -> None:
    roles = (decl.device.name, decl.time.name)
    names: set[str] = set(decl.fields)
    for g in decl.fields.values():
        if g.name in roles or g.pii is not None or any("looks like a time" in w for w in g.why):
            continue
        steps = {
            "int": ["value", "zscore", "rate"],
            "float": ["value", "zscore", "rate"],
            "bool": ["value"],
            "enum": ["onehot"],
        }.get(g.type, [])
        suffix = {
            "value": [""],
            "zscore": ["_z"],
            "rate": ["_rate"],
            "onehot": [f"_{v}" for v in g.values or ()],
        }
        made = {g.name + s for step in steps for s in suffix[step]}
        if made & (names - {g.name}):
            g.why.append("no feature: its names would clash with another field's")
            continue
        names |= made
        g.features = steps
    gap = "gap_s"
    while gap in names:
        gap = f"event_{gap}"
    decl.gap_name = gap
    for g in decl.fields.values():
        if g.pii == "token" and f"{g.name}_token" in names:
            out, n = f"{g.name}_token_2", 3
            while out in names:
                out, n = f"{g.name}_token_{n}", n + 1
            g.token_field = out
            names.add(out)


# -- TOML --------------------------------------------------------------------------------------


def _s(text: str) -> str:
    return msgspec.json.encode(text).decode()


def _f(x: float) -> str:
    return repr(float(x))


def _comment(lines: list[str]) -> list[str]:
    return [f"# {line}" for line in lines]


def render(decl: Declaration) -> str:
    """The declaration as TOML, every guess in a comment above its line."""
    s = decl.sample
    out = [
        f"# Inferred by `fleetsentry streams infer` from {s.source} ({s.note}, "
        f"first {s.rows:,} rows).",
        "# Every guess is in a comment above its line: check them, then run",
        "# `fleetsentry streams check` on this file. Devices publish JSON objects on",
        "# fleet/{device}/{topic} whose keys are the [fields] names.",
        *(f"# skipped column {why}" for why in decl.skipped),
        "",
        "[stream]",
        f"name = {_s(decl.name)}",
        f"topic = {_s(decl.name)}",
        f"# device: {decl.device.source!r} {decl.device.why}; the pattern covers the "
        f"{len(set(_dev_ids(decl))):,} ids seen (their characters and lengths)",
        f"device = {{ field = {_s(decl.device.name)}, pattern = {_s(decl.device.pattern)}, "
        f"noun = {_s(decl.device.noun)} }}",
        f"# time: {decl.time.source!r} {decl.time.why}",
        f"time = {{ field = {_s(decl.time.name)}, unit = {_s(decl.time.unit)} }}",
        "# alerts: the defaults; tune them once the stream has scores",
        'alerts = { kind = "episodes", open_events = 4, window_s = 10, quiet_s = 30 }',
    ]
    if decl.cell:
        out += [f"# {decl.cell_why}", f"cell = [{_s(decl.cell[0])}, {_s(decl.cell[1])}]"]
    if decl.person:
        out += [f"# {decl.person_why}", f"person = {_s(decl.person)}"]
    if decl.interval_s is not None:
        out += [
            f"# interval_s: the median time between one {decl.device.noun}'s events in the "
            "sample (how long rolling features remember, in seconds)",
            f"interval_s = {decl.interval_s!r}",
        ]
    out += ["", "[fields]"]
    for g in decl.fields.values():
        out += [*_comment(g.why), f"{g.name} = {{ {_field_body(g)} }}"]
    out += [
        "",
        "[features]",
        "# Each number: its value, its z-score against the device's rolling mean and its",
        "# rate of change; booleans their value; enums one-hot. Never personal data.",
    ]
    for g in decl.fields.values():
        if g.features:
            out.append(f"{g.name} = [{', '.join(_s(f) for f in g.features)}]")
    out += [f'{decl.gap_name} = {{ gap = true, scale = "log1p" }}', ""]
    return "\n".join(out)


def _interval(devices: list[Any], times: list[Any], unit: str) -> float | None:
    """The median gap between one device's consecutive events in the sample, in seconds
    (rows of several devices interleave, so a gap over all rows would be too short)."""
    by_device: dict[Any, list[float]] = {}
    for device, raw in zip(devices, times, strict=True):
        if device is None or raw is None:
            continue
        try:
            t = to_seconds(raw, unit)
        except (TypeError, ValueError):
            continue
        if math.isfinite(t):
            by_device.setdefault(device, []).append(t)
    gaps = [b - a for ts in by_device.values() for a, b in itertools.pairwise(sorted(ts)) if b > a]
    if not gaps:
        return None
    return round(statistics.median(gaps), 3) or None


def _dev_ids(decl: Declaration) -> list[str]:
    return [_text(v) for v in decl.sample.columns[decl.device.source] if v not in (None, "")]


def _field_body(g: FieldGuess) -> str:
    parts = [f"type = {_s(g.type)}"]
    if g.values is not None:
        parts.append(f"values = [{', '.join(_s(v) for v in g.values)}]")
    if g.unit:
        parts.append(f"unit = {_s(g.unit)}")
    if g.range is not None:
        parts.append(f"range = [{_f(g.range[0])}, {_f(g.range[1])}]")
    if g.typical_std is not None:
        parts.append(f"typical_std = {_f(g.typical_std)}")
    if not g.required:
        parts.append("required = false")
    if g.pii is not None:
        parts.append(f"pii = {_s(g.pii)}")
    if g.token_field is not None:
        parts.append(f"token_field = {_s(g.token_field)}")
    if g.label is not None:
        parts.append(f"label = {_s(g.label)}")
    if g.name != g.source:
        parts.append(f"column = {_s(g.source)}")
    return ", ".join(parts)
