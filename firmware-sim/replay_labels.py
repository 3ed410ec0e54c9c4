"""Labels for a replayed recording: what an operator knows about it, as the trainer reads it.

An operator's labels file (CSV or JSON lines) holds rows of one of two kinds:

- ``event_id,kind``: that event is anomalous (its ``event_id`` as in the recording, or
  ``<device>-<row>`` as the replay gives one to rows that have none);
- ``device,start,end,kind``: every event of that device from ``start`` to ``end`` (both
  included, recorded times: ISO 8601, or a number in the stream's time unit, epoch seconds
  for an ``iso8601`` stream) is anomalous.

An optional ``episode_id`` column groups labels into episodes (default: one episode per
range, or per labelled event). Each labelled event that is replayed becomes one
:class:`shared.contracts.Label` line (the repository's labels file, as ``sim run`` writes
it), its times rebased like the events, so ``fleetsentry cloud train --labels`` and
``fleetsentry eval`` join them on ``event_id``.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from firmware_sim.replay import Accepted, ReplayError, seconds_of

from shared.contracts import Label, encode
from shared.declarations.schema import Stream


@dataclass(frozen=True)
class RangeLabel:
    device: str
    start_s: float
    end_s: float
    kind: str
    episode_id: str


@dataclass
class _Matched:
    event_id: str
    kind: str
    episode_id: str
    sent_s: float


@dataclass
class LabelSet:
    """The labels file, matched against the rows as the replay accepts them."""

    stream: Stream
    events: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    ranges: dict[str, list[RangeLabel]] = field(default_factory=dict)
    matched: list[_Matched] = field(default_factory=list)
    hit: Counter[str] = field(default_factory=Counter)  # label row key -> events matched

    def match(self, row: Accepted) -> None:
        """Label ``row`` if a label names it (an event label wins over a range)."""
        ev = self.events.get(row.event_id)
        if ev is not None:
            kind, episode = ev
            self.matched.append(_Matched(row.event_id, kind, episode or row.event_id, row.sent_s))
            self.hit[f"event {row.event_id}"] += 1
            return
        for r in self.ranges.get(row.device, ()):
            if r.start_s <= row.recorded_s <= r.end_s:
                self.matched.append(_Matched(row.event_id, r.kind, r.episode_id, row.sent_s))
                self.hit[r.episode_id] += 1
                return

    @property
    def unmatched(self) -> list[str]:
        """Label rows no replayed event matched (a typo, a refused row, another file)."""
        keys = [f"event {e}" for e in self.events]
        keys += [r.episode_id for rs in self.ranges.values() for r in rs]
        return [k for k in keys if not self.hit[k]]

    def labels(self, offset_s: float) -> list[Label]:
        """One Label per labelled event; an episode spans its range (rebased by
        ``offset_s``) or, for event labels, its first to its last labelled event."""
        spans: dict[str, tuple[float, float]] = {}
        for r in (r for rs in self.ranges.values() for r in rs):
            lo, hi = spans.get(r.episode_id, (r.start_s + offset_s, r.end_s + offset_s))
            spans[r.episode_id] = (min(lo, r.start_s + offset_s), max(hi, r.end_s + offset_s))
        ranged = set(spans)
        for m in self.matched:
            if m.episode_id not in ranged:
                lo, hi = spans.get(m.episode_id, (m.sent_s, m.sent_s))
                spans[m.episode_id] = (min(lo, m.sent_s), max(hi, m.sent_s))
        out = []
        for m in self.matched:
            start, end = spans[m.episode_id]
            out.append(
                Label(
                    event_id=m.event_id,
                    stream=self.stream.name,
                    kind=m.kind,
                    episode_id=m.episode_id,
                    start_ts=round(start, 3),
                    end_ts=round(end, 3),
                )
            )
        return out


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as fh:
                return list(enumerate(csv.DictReader(fh), 2))  # line 1 is the header
        out = []
        for n, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise ReplayError(f"{path}:{n}: not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise ReplayError(f"{path}:{n}: not a JSON object")
            out.append((n, obj))
        return out
    except OSError as exc:
        raise ReplayError(f"cannot read labels file {path}: {exc.strerror or exc}") from None


def _text(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    return "" if value is None else str(value).strip()


def parse_time(value: Any, unit: str) -> float | None:
    """A label's start or end as epoch seconds: ISO 8601, or a number in the stream's unit
    (epoch seconds for an ``iso8601`` stream)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = float(text)
        except ValueError:
            return seconds_of(text, "iso8601")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return seconds_of(value, "s" if unit == "iso8601" else unit)


def read_labels(path: Path, stream: Stream) -> LabelSet:
    """Read an operator's labels file; a malformed row is an error naming its line."""
    out = LabelSet(stream)
    unit = stream.time.unit
    for line, row in _rows(path):
        kind = _text(row, "kind")
        where = f"{path}:{line}"
        if not kind:
            raise ReplayError(f"{where}: no kind (columns: event_id,kind or device,start,end,kind)")
        episode = _text(row, "episode_id") or _text(row, "episode") or None
        event_id = _text(row, "event_id")
        if event_id:
            out.events[event_id] = (kind, episode)
            continue
        device = _text(row, "device")
        if not device:
            raise ReplayError(
                f"{where}: neither an event_id nor a device (columns: "
                "event_id,kind or device,start,end,kind)"
            )
        start, end = parse_time(row.get("start"), unit), parse_time(row.get("end"), unit)
        if start is None or end is None:
            raise ReplayError(
                f"{where}: start and end must be ISO 8601 times or numbers in "
                f"the stream's unit ({unit})"
            )
        if end < start:
            raise ReplayError(f"{where}: end {_iso(end)} is before start {_iso(start)}")
        ep = episode or f"{device}@{_iso(start)}"
        out.ranges.setdefault(device, []).append(RangeLabel(device, start, end, kind, ep))
    return out


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_labels(path: Path, labels: list[Label]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(b"".join(encode(lab) + b"\n" for lab in labels))
    tmp.replace(path)
