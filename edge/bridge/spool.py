"""The bridge's outage spool: Kafka records kept in order on local disk until Kafka has them.

While the edge Kafka confirms nothing, the bridge appends what it would have produced here,
fsyncs, and only then acknowledges the MQTT messages; once Kafka is back it drains the spool
in order and deletes what Kafka confirmed. Without it, an outage longer than the broker's
queue for the bridge's session loses acknowledged messages (Mosquitto drops them silently).

On disk: ``DIR/<first record's number, 20 digits>.log`` segments of length-prefixed records::

    u32 length of the rest | u32 crc32 of the rest | u16 topic length | i32 key length (-1: none)
    | topic | key | value

and ``DIR/cursor`` (the segment and byte offset of the first record Kafka has not confirmed),
replaced atomically. A crash may cut the last record short: it was never acknowledged (acks
follow the fsync), so opening the spool drops it. Records confirmed by Kafka but not yet in
the cursor when the process died are produced again; the enricher drops such duplicates.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger("bridge.spool")
_HEAD = struct.Struct("<II")
_META = struct.Struct("<Hi")
SEGMENT_BYTES = 64 * 1024 * 1024
CURSOR = "cursor"


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, a corrupt cursor)."""


@dataclass(frozen=True, order=True)
class Position:
    """Where a record ends: segment base number and byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Record:
    ticket: int  # confirm(ticket) once Kafka has it
    topic: str
    key: bytes | None
    value: bytes


def _encode(topic: str, key: bytes | None, value: bytes) -> bytes:
    t = topic.encode()
    rest = _META.pack(len(t), -1 if key is None else len(key)) + t + (key or b"") + value
    return _HEAD.pack(len(rest), zlib.crc32(rest)) + rest


def _decode(rest: bytes) -> tuple[str, bytes | None, bytes]:
    tlen, klen = _META.unpack_from(rest)
    at = _META.size
    topic = rest[at : at + tlen].decode()
    at += tlen
    key = None
    if klen >= 0:
        key = rest[at : at + klen]
        at += klen
    return topic, key, rest[at:]


def _scan(path: Path) -> tuple[int, int]:
    """(bytes up to the end of the last whole, intact record of ``path``, records in them)."""
    good = n = 0
    with open(path, "rb") as fh:
        while True:
            head = fh.read(_HEAD.size)
            if len(head) < _HEAD.size:
                return good, n
            length, crc = _HEAD.unpack(head)
            rest = fh.read(length)
            if len(rest) < length or zlib.crc32(rest) != crc:
                return good, n
            good += _HEAD.size + length
            n += 1


class Spool:
    """An append-only, size-bounded log of Kafka records, read back in the order written.

    ``append`` + ``sync`` make records durable; ``read`` hands out durable records not yet
    read, each with a ticket; ``confirm(ticket)`` says Kafka has it (tickets may come back in
    any order); ``save`` persists how far the confirmed records reach without a gap and
    deletes the segments wholly behind that point.
    """

    def __init__(self, directory: Path, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise SpoolError(
                f"cannot use the bridge's spool directory {directory}: {exc}"
            ) from None

    def _open(self) -> None:
        self._reader: BinaryIO | None = None
        self._reader_seg = -1
        self._segments: list[int] = sorted(
            int(p.stem) for p in self.dir.glob("*.log") if p.stem.isdigit()
        )
        self._sizes = {seg: self._path(seg).stat().st_size for seg in self._segments}
        self._total = sum(self._sizes.values())
        cursor = self._load_cursor()
        # Segments wholly before the cursor were confirmed; a crash kept them.
        for seg in [s for s in self._segments[:-1] if s < cursor.segment]:
            self._delete(seg)
        if self._segments:
            last = self._segments[-1]
            good, records = _scan(self._path(last))
            if good != self._sizes[last]:
                log.warning(
                    "spool segment %s ends in a cut-off record (written, never "
                    "acknowledged): dropping its last %d bytes",
                    self._path(last),
                    self._sizes[last] - good,
                )
                os.truncate(self._path(last), good)
                self._total -= self._sizes[last] - good
                self._sizes[last] = good
            self._next_name = last + 1 + records
        else:
            self._segments, self._sizes, self._next_name = [0], {0: 0}, 1
            self._path(0).touch()
        if cursor.segment not in self._sizes:
            cursor = Position(self._segments[0], 0)
        self._cursor = self._saved = self._read_at = cursor
        self._writer: BinaryIO = open(self._path(self._segments[-1]), "ab")  # noqa: SIM115
        self._synced = self._sizes[self._segments[-1]]
        # Records read and not yet confirmed: their end positions from ticket _base on.
        self._pending: deque[Position] = deque()
        self._base = 0
        self._tickets = 0
        self._done: set[int] = set()

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:020d}.log"

    def _load_cursor(self) -> Position:
        path = self.dir / CURSOR
        if not path.exists():
            return Position(self._segments[0] if self._segments else 0, 0)
        try:
            seg_s, off_s = path.read_text().split()
            return Position(int(seg_s), int(off_s))
        except (OSError, ValueError) as exc:
            raise SpoolError(
                f"the spool's cursor {path} is unreadable ({exc}); its records "
                f"are still in {self.dir}"
            ) from None

    def _delete(self, seg: int) -> None:
        if self._reader_seg == seg and self._reader is not None:
            self._reader.close()
            self._reader, self._reader_seg = None, -1
        self._path(seg).unlink(missing_ok=True)
        self._segments.remove(seg)
        self._total -= self._sizes.pop(seg)

    # --- state ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Bytes on disk (confirmed records not yet deleted included)."""
        return self._total

    def _after(self, pos: Position) -> int:
        """Bytes written after ``pos``."""
        return (
            self._sizes[pos.segment]
            - pos.offset
            + sum(size for seg, size in self._sizes.items() if seg > pos.segment)
        )

    def empty(self) -> bool:
        """Kafka confirmed every record ever appended."""
        return not self._pending and self._after(self._cursor) == 0

    def caught_up(self) -> bool:
        """Every record appended has been synced and read."""
        return self._synced == self._sizes[self._segments[-1]] and self._after(self._read_at) == 0

    def unconfirmed(self) -> int:
        """Records read and not yet confirmed."""
        return len(self._pending)

    # --- writing ------------------------------------------------------------------------------

    def append(self, topic: str, key: bytes | None, value: bytes) -> bool:
        """Add a record (durable after ``sync``); False when it would exceed ``max_bytes``."""
        data = _encode(topic, key, value)
        if self.size + len(data) > self.max_bytes:
            return False
        if self._sizes[self._segments[-1]] + len(data) > self.segment_bytes:
            self._roll()
        self._writer.write(data)
        self._sizes[self._segments[-1]] += len(data)
        self._total += len(data)
        self._next_name += 1
        return True

    def _roll(self) -> None:
        self.sync()
        self._writer.close()
        seg = self._next_name
        self._segments.append(seg)
        self._sizes[seg] = 0
        self._writer = open(self._path(seg), "ab")  # noqa: SIM115
        self._synced = 0
        _fsync_dir(self.dir)

    def sync(self) -> None:
        """Make every appended record durable (flush and fsync)."""
        size = self._sizes[self._segments[-1]]
        if size != self._synced:
            self._writer.flush()
            os.fsync(self._writer.fileno())
            self._synced = size

    # --- reading ------------------------------------------------------------------------------

    def read(self, limit: int) -> list[Record]:
        """Up to ``limit`` durable records after those already read, in order."""
        out: list[Record] = []
        while len(out) < limit:
            seg, off = self._read_at.segment, self._read_at.offset
            last = seg == self._segments[-1]
            end = self._synced if last else self._sizes[seg]
            if off >= end:
                if last:
                    break
                self._read_at = Position(self._segments[self._segments.index(seg) + 1], 0)
                continue
            if self._reader_seg != seg or self._reader is None:
                if self._reader is not None:
                    self._reader.close()
                self._reader = open(self._path(seg), "rb")  # noqa: SIM115
                self._reader_seg = seg
            self._reader.seek(off)
            while len(out) < limit and off < end:
                length, _crc = _HEAD.unpack(self._reader.read(_HEAD.size))
                topic, key, value = _decode(self._reader.read(length))
                off += _HEAD.size + length
                self._pending.append(Position(seg, off))
                out.append(Record(self._tickets, topic, key, value))
                self._tickets += 1
            self._read_at = Position(seg, off)
        return out

    def confirm(self, ticket: int) -> None:
        """The record ``read`` handed out with ``ticket`` is in Kafka."""
        self._done.add(ticket)
        while self._base in self._done:
            self._done.remove(self._base)
            self._cursor = self._pending.popleft()
            self._base += 1

    def save(self) -> None:
        """Persist the cursor; delete segments every record of which Kafka confirmed."""
        if self._cursor == self._saved:
            return
        for seg in list(self._segments[:-1]):
            if seg < self._cursor.segment or (
                seg == self._cursor.segment and self._cursor.offset >= self._sizes[seg]
            ):
                self._delete(seg)
        if self._cursor.segment not in self._sizes:
            self._cursor = Position(self._segments[0], 0)
        if self._read_at.segment not in self._sizes:
            self._read_at = Position(self._segments[0], 0)
        if self.empty() and self._sizes[self._segments[-1]] >= self.segment_bytes // 4:
            # All confirmed: give the active segment's bytes back rather than keep them.
            old = self._segments[-1]
            self._roll()
            self._delete(old)
            self._cursor = self._read_at = Position(self._segments[-1], 0)
        tmp = self.dir / (CURSOR + ".tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{self._cursor.segment} {self._cursor.offset}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.dir / CURSOR)
        self._saved = self._cursor

    def close(self) -> None:
        self.sync()
        self.save()
        self._writer.close()
        if self._reader is not None:
            self._reader.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
