"""Kafka -> Parquet, durable first, offsets after, one row per record id.

The order of a flush makes a crash at any point lose nothing and duplicate nothing:

1. write each (dataset, day) batch to a temporary file, fsync it, rename it into its
   partition folder, fsync the folder;
2. record the file and its record ids in the index (SQLite, one transaction);
3. commit the Kafka offsets.

A crash before 2 leaves a file the index does not know: it is deleted at the next start, and
its records come again from Kafka (their offsets were never committed). A crash between 2
and 3 replays records whose ids the index holds: they are skipped.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud.store import layout
from cloud.store.errors import StoreError
from shared import contracts
from shared.errors import ContractError

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - depends on the installed extra
    from shared.errors import MissingExtraError

    raise MissingExtraError("pyarrow", "cloud") from None

INDEX = "_index.sqlite"
_ARROW = {str: pa.string(), float: pa.float64(), int: pa.int64(), bool: pa.bool_()}
META = [
    ("record_id", pa.string()),
    ("edge_id", pa.string()),
    ("topic", pa.string()),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
]


def schema_of(ds: layout.Dataset) -> pa.Schema:
    cols = [pa.field(n, t) for n, t in META]
    cols += [pa.field(name, _ARROW[kind]) for name, kind in ds.columns() if name not in dict(META)]
    cols.append(pa.field("record", pa.string()))
    return pa.schema(cols)


REJECTED_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string()),
        pa.field("kafka_partition", pa.int32()),
        pa.field("kafka_offset", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("payload", pa.binary()),
    ]
)


@dataclass
class Batch:
    """Rows waiting for the next flush, keyed by (dataset, day)."""

    rows: dict[tuple[str, str], list[dict[str, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    ids: set[tuple[str, str]] = field(default_factory=set)
    count: int = 0


class ParquetFiles:
    """The store's folder and its index. Constructing it does no I/O; ``open`` does."""

    def __init__(self, root: Path, compression: str = "zstd") -> None:
        self.root = root
        self.compression = compression
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.root / INDEX)
        except OSError as exc:
            raise StoreError(
                f"cannot create the store at {self.root}: {exc}; set [store] root "
                "to a writable folder"
            ) from None
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (dataset TEXT, record_id TEXT, "
            "PRIMARY KEY (dataset, record_id)) WITHOUT ROWID"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, rows INTEGER, "
            "written_ts REAL)"
        )
        self._db.commit()
        self.remove_orphans()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the store is not open; call open() first")
        return self._db

    def remove_orphans(self) -> list[Path]:
        """Delete Parquet files a crash left unindexed (their records will come again)."""
        known = {row[0] for row in self.db.execute("SELECT path FROM files")}
        removed = []
        for path in self.root.rglob("*.parquet*"):
            rel = str(path.relative_to(self.root))
            if rel not in known:
                path.unlink()
                removed.append(path)
        return removed

    def seen(self, dataset: str, record_ids: list[str]) -> set[str]:
        out: set[str] = set()
        for i in range(0, len(record_ids), 500):
            chunk = record_ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            out.update(
                r[0]
                for r in self.db.execute(
                    f"SELECT record_id FROM records WHERE dataset=? AND record_id IN ({marks})",
                    [dataset, *chunk],
                )
            )
        return out

    def write(self, dataset: str, day: str, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
        """Write one file durably and return its path relative to the root (not yet indexed)."""
        folder = self.root / dataset / f"day={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = folder / f".{name}.tmp"  # hidden: readers list finished files only
        table = pa.Table.from_pylist(rows, schema=schema)
        pq.write_table(table, tmp, compression=self.compression)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, folder / name)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return (folder / name).relative_to(self.root)

    def index(self, files: list[tuple[Path, int]], ids: set[tuple[str, str]]) -> None:
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO files VALUES (?, ?, ?)", [(str(p), n, now) for p, n in files]
            )
            self.db.executemany("INSERT OR IGNORE INTO records VALUES (?, ?)", sorted(ids))


def to_rows(batch: Batch, files: ParquetFiles, msgs: list[Any]) -> int:
    """Decode, route and deduplicate ``msgs`` into ``batch``; returns rows added."""
    added = 0
    decoded: list[tuple[Any, str, layout.Dataset, Any]] = []
    for msg in msgs:
        routed = layout.route(msg.topic())
        if routed is None:
            continue
        edge_id, ds = routed
        try:
            rec = contracts.decode(ds.kind, msg.value() or b"")
        except ContractError as exc:
            batch.rows[(layout.REJECTED, layout.day_of(time.time()))].append(
                {
                    "topic": msg.topic(),
                    "kafka_partition": msg.partition(),
                    "kafka_offset": msg.offset(),
                    "reason": str(exc),
                    "payload": msg.value(),
                }
            )
            continue
        decoded.append((msg, edge_id, ds, rec))
    by_ds: dict[str, list[str]] = defaultdict(list)
    for _, edge_id, ds, rec in decoded:
        by_ds[ds.name].append(ds.record_id(rec, edge_id))
    already = {(name, rid) for name, ids in by_ds.items() for rid in files.seen(name, ids)}
    for msg, edge_id, ds, rec in decoded:
        key = (ds.name, ds.record_id(rec, edge_id))
        if key in already or key in batch.ids:
            continue
        batch.ids.add(key)
        row = {name: getattr(rec, name) for name, _ in ds.columns()}
        row.update(
            record_id=key[1],
            edge_id=edge_id,
            topic=msg.topic(),
            kafka_partition=msg.partition(),
            kafka_offset=msg.offset(),
            record=contracts.encode(rec).decode(),
        )
        batch.rows[(ds.name, layout.day_of(ds.event_ts(rec)))].append(row)
        added += 1
    batch.count += len(msgs)
    return added


def flush(batch: Batch, files: ParquetFiles, commit: Callable[[], None]) -> int:
    """Steps 1-3 of the module docstring. Returns rows written."""
    schemas = {name: schema_of(ds) for name, ds in layout.datasets().items()}
    schemas[layout.REJECTED] = REJECTED_SCHEMA
    written: list[tuple[Path, int]] = []
    for (dataset, day), rows in batch.rows.items():
        if rows:
            written.append((files.write(dataset, day, rows, schemas[dataset]), len(rows)))
    files.index(written, batch.ids)
    commit()
    return sum(n for _, n in written)
