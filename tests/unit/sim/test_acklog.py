"""The acknowledged-events log: a line per PUBACK, written in batches."""

from __future__ import annotations

import json
import time
from pathlib import Path

from firmware_sim.acklog import AckLog, stream_of


def test_a_line_per_acknowledged_event_once_flushed(tmp_path: Path) -> None:
    log = AckLog(tmp_path / "sub" / "acked.jsonl")
    log.start()
    log.record("1HGCM82633A004352", "fleet/1HGCM82633A004352/telemetry", "t-1")
    log.record("1HGCM82633A004352", "fleet/1HGCM82633A004352/payments", "p-1")
    assert log.path.read_text() == ""  # buffered until the loop's once-a-second flush
    log.flush()
    log.record("1HGCM82633A004352", "fleet/1HGCM82633A004352/telemetry", "t-2")
    log.close()
    lines = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert all(abs(line.pop("ts") - time.time()) < 60 for line in lines)
    assert lines == [
        {"event_id": "t-1", "vin": "1HGCM82633A004352", "stream": "telemetry"},
        {"event_id": "p-1", "vin": "1HGCM82633A004352", "stream": "payments"},
        {"event_id": "t-2", "vin": "1HGCM82633A004352", "stream": "telemetry"},
    ]
    assert log.written == 3


def test_stream_is_the_topics_last_level() -> None:
    assert stream_of("fleet/VIN/payments") == "payments"
