"""Nothing acknowledged is ever lost: ``bench/chaos.py``, shortened, holds 0 lost / 0 duplicated.

The same code as the chaos run (one gateway, the 3-node cloud, the store, a fleet publishing
throughout), with fewer vehicles and one fault of each kind: kill -9 of the bridge, enricher,
scorer, agent, MirrorMaker and store; kill -9 and restart of the edge Kafka and of Mosquitto;
one cloud broker down for 20 s; the gateway cut off from the cloud for 30 s. The verdict is
the run's own reconciliation of every PUBACKed event id with anon.*, scores.*, the cloud
copies and the store's Parquet files, and of every declined payment with its vehicle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "bridge",
    "enricher",
    "scorer",
    "agent",
    "mirrormaker",
    "store",
    "edge-kafka",
    "mosquitto",
    "cloud-broker",
    "cloud-cut",
}
ARGS = [
    "--minutes",
    "2.5",
    "--vehicles",
    "40",
    "--seed",
    "15",
    "--kills",
    "1",
    "--edge-kafka",
    "1",
    "--mosquitto",
    "1",
    "--cloud-brokers",
    "1",
    "--broker-down",
    "20",
    "--cuts",
    "1",
    "--outage",
    "30",
    "--recover-gap",
    "10",
    "--drain-timeout",
    "480",
]


@pytest.mark.timeout(1800)
def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    figures = tmp_path / "chaos.json"
    out = tmp_path / "chaos.out"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "chaos.py"),
        *ARGS,
        "--home",
        str(tmp_path / "home"),
        "--json-out",
        str(figures),
    ]
    with open(out, "wb") as fh:
        proc = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            proc.wait(timeout=1680)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the run stops everything it started on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise AssertionError(
                "the chaos run did not end in 28 minutes:\n" + out.read_text()[-5000:]
            ) from None
    text = out.read_text()
    print(text)
    assert figures.exists(), text[-5000:]
    result = json.loads(figures.read_text())
    assert set(result["faults_by_kind"]) == KINDS, result["faults_by_kind"]
    assert all(f["injected"] is not None and not f["note"] for f in result["faults"]), [
        f for f in result["faults"] if f["injected"] is None or f["note"]
    ]
    assert result["acked"] > 0
    stages = {
        k: (v["lost"], v["duplicated"]) for k, v in result["stages"].items() if k != "decisions"
    }
    assert result["duplicated"] == 0, (stages, result["duplicated_by_fault"])
    assert result["lost"] == 0, (stages, result["lost_by_fault"])
    assert result["decisions_missing"] == 0, result["stages"]["decisions"]
    assert proc.returncode == 0, text[-3000:]
