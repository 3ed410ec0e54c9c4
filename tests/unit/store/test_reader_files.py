"""The store's reader sees only finished Parquet files: a file being written (or left half
written by a crash) never breaks a read, and the trainer's drift check never reads one."""

from __future__ import annotations

from pathlib import Path

from cloud.store import layout
from cloud.store.reader import StoreReader
from cloud.store.writer import ParquetFiles, schema_of
from shared import contracts, topics


def _row(event_id: str, ts: float) -> dict[str, object]:
    score = contracts.Score(
        event_id=event_id,
        ts=ts,
        stream="telemetry",
        token="tok-0001",
        score=0.1,
        threshold=1.0,
        model_version="m1",
        anomalous=False,
    )
    return {
        "record_id": f"tok-0001/{event_id}",
        "edge_id": "edge-1",
        "topic": f"edge-1.{topics.SCORES_TELEMETRY}",
        "kafka_partition": 0,
        "kafka_offset": 0,
        "event_id": event_id,
        "ts": ts,
        "stream": "telemetry",
        "token": "tok-0001",
        "score": 0.1,
        "threshold": 1.0,
        "model_version": "m1",
        "anomalous": False,
        "schema": 1,
        "record": contracts.encode(score).decode(),
    }


def test_files_in_progress_are_not_read(tmp_path: Path) -> None:
    files = ParquetFiles(tmp_path)
    files.open()
    ds = layout.datasets()[topics.SCORES_TELEMETRY]
    path = files.write(ds.name, "2026-12-03", [_row("e1", 1796270000.0)], schema_of(ds))
    files.index([(path, 1)], {(ds.name, "tok-0001/e1")})
    folder = tmp_path / ds.name / "day=2026-12-03"
    # Another flush in progress, as the writer names it, and one a crash left half written.
    for name in next(iter(folder.glob("*.parquet"))).name, "part-9-dead.parquet":
        (folder / (name + ".tmp")).write_bytes(b"PAR1 half written")
    reader = StoreReader(tmp_path)
    assert [s.event_id for s in reader.scores("telemetry", 0.0)] == ["e1"]
    assert list(reader.gateway_scores("telemetry", 0.0)) == ["edge-1"]
