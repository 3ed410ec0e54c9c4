"""Reading the store back: pyarrow datasets for the dashboard, contract objects for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from cloud.store import layout
from cloud.store.writer import schema_of
from shared import contracts, streams, topics


class StoreReader:
    """Read-only view of a store folder (safe while the writer runs: files appear atomically).

    It also stands in for the trainer's Kafka source (``anon_records``, ``labels``,
    ``scores``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def dataset(self, name: str) -> pads.Dataset | None:
        """The finished Parquet files of dataset ``name``: a file still being written (or
        left half written by a crash) is never read."""
        folder = self.root / name
        files = (
            sorted(str(p) for p in folder.rglob("*.parquet") if not p.name.startswith("."))
            if folder.is_dir()
            else []
        )
        if not files:
            return None
        ds = layout.datasets()[name]
        schema = schema_of(ds).append(pa.field("day", pa.string()))
        return pads.dataset(
            files,
            format="parquet",
            schema=schema,
            partitioning=pads.partitioning(
                pa.schema([pa.field("day", pa.string())]), flavor="hive"
            ),
            partition_base_dir=str(folder),
            exclude_invalid_files=False,
        )

    def table(
        self, name: str, columns: list[str] | None = None, filter: pc.Expression | None = None
    ) -> pa.Table:
        """Rows of dataset ``name`` (e.g. ``anon.payments``), one per record id."""
        ds = self.dataset(name)
        if ds is None:
            schema = schema_of(layout.datasets()[name]).append(pa.field("day", pa.string()))
            table = schema.empty_table()
            return table.select(columns) if columns else table
        wanted = list(dict.fromkeys([*(columns or ds.schema.names), "record_id"]))
        table = ds.to_table(columns=wanted, filter=filter)
        # The writer never writes an id twice; this guards readers against a hand-copied file.
        first = pc.unique(table["record_id"]) if table.num_rows else None
        if first is not None and len(first) != table.num_rows:
            table = _first_per_id(table)
        return table.select(columns) if columns else table

    def records(self, name: str, filter: pc.Expression | None = None) -> list[Any]:
        kind = layout.datasets()[name].kind
        table = self.table(name, ["record"], filter)
        return [contracts.decode(kind, r) for r in table["record"].to_pylist()]

    # --- the trainer's DataSource -------------------------------------------------------

    def anon_records(self, stream: str) -> list[Any]:
        recs = self.records(streams.get(stream).anon_topic)
        return sorted(recs, key=lambda r: r.ts)

    def labels(self) -> list[contracts.Label]:
        return self.records(topics.LABELS)

    def scores(self, stream: str, since_ts: float) -> list[contracts.Score]:
        return self.records(streams.get(stream).scores_topic, pc.field("ts") >= since_ts)

    def gateway_alerts(self, since_ts: float) -> dict[str, list[contracts.Alert]]:
        """Alert records (every state) whose episode started at or after ``since_ts``, per
        gateway."""
        table = self.table(topics.ALERTS, ["edge_id", "record"], pc.field("start_ts") >= since_ts)
        out: dict[str, list[contracts.Alert]] = {}
        for edge_id, raw in zip(
            table["edge_id"].to_pylist(), table["record"].to_pylist(), strict=True
        ):
            out.setdefault(edge_id or "", []).append(contracts.decode(contracts.Alert, raw))
        return out

    def gateway_scores(self, stream: str, since_ts: float) -> dict[str, list[contracts.Score]]:
        """Scores at or after ``since_ts``, per gateway (the edge id they came from)."""
        table = self.table(
            streams.get(stream).scores_topic, ["edge_id", "record"], pc.field("ts") >= since_ts
        )
        out: dict[str, list[contracts.Score]] = {}
        for edge_id, raw in zip(
            table["edge_id"].to_pylist(), table["record"].to_pylist(), strict=True
        ):
            out.setdefault(edge_id or "", []).append(contracts.decode(contracts.Score, raw))
        return out


def _first_per_id(table: pa.Table) -> pa.Table:
    seen: set[str] = set()
    keep = []
    for i, rid in enumerate(table["record_id"].to_pylist()):
        if rid not in seen:
            seen.add(rid)
            keep.append(i)
    return table.take(keep)
