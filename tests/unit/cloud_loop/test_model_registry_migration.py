"""An existing registry database, made before the registry had schema versions, is upgraded in
place when it is opened: its rows are kept and training runs may then await approval."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from cloud.registry import Registry, RegistryError
from cloud.registry.registry import SCHEMA_VERSION
from tests.unit.cloud_loop.test_model_registry import model_dir

# The registry's tables as the first released version created them (PRAGMA user_version 0).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    version TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    parent TEXT,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    manifest TEXT NOT NULL,
    metrics TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('candidate', 'champion', 'retired')),
    run_id INTEGER REFERENCES runs(id),
    created_ts REAL NOT NULL,
    registered_ts REAL NOT NULL,
    updated_ts REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS models_one_champion ON models(stream)
    WHERE state = 'champion';
CREATE INDEX IF NOT EXISTS models_by_stream ON models(stream, registered_ts);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    trigger TEXT NOT NULL CHECK (trigger IN ('schedule', 'drift', 'manual')),
    triggered_by TEXT NOT NULL,
    trigger_reason TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    started_ts REAL NOT NULL,
    finished_ts REAL,
    duration_s REAL,
    params TEXT NOT NULL DEFAULT '{}',
    data_from REAL,
    data_to REAL,
    records INTEGER,
    metrics TEXT NOT NULL DEFAULT '{}',
    curves TEXT NOT NULL DEFAULT '{}',
    champion TEXT,
    challenger TEXT,
    decision TEXT CHECK (decision IN ('promoted', 'kept', 'failed')),
    decision_reason TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_stream ON runs(stream, started_ts);
CREATE TABLE IF NOT EXISTS trainer_status (
    stream TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    drift TEXT NOT NULL DEFAULT '{}',
    since_ts REAL NOT NULL,
    updated_ts REAL NOT NULL,
    next_ts REAL,
    failures INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS releases (
    stream TEXT NOT NULL,
    number INTEGER NOT NULL,
    version TEXT NOT NULL,
    key_id TEXT NOT NULL,
    fleet TEXT NOT NULL,
    issued_ts REAL NOT NULL,
    expires_ts REAL NOT NULL,
    PRIMARY KEY (stream, number)
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    stream TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('register', 'promote', 'rollback')),
    version TEXT NOT NULL,
    previous TEXT,
    actor TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
"""


def old_database(root: Path) -> int:
    """A registry in the old schema with a champion and a finished run; the run's id."""
    root.mkdir(parents=True)
    db = sqlite3.connect(root / "registry.sqlite", isolation_level=None)
    db.executescript(OLD_SCHEMA)
    now = time.time()
    cur = db.execute(
        "INSERT INTO runs (stream, trigger, triggered_by, status, started_ts, "
        "decision, decision_reason, challenger) VALUES ('payments', 'drift', "
        "'drift-monitor', 'finished', ?, 'promoted', 'better', 'v1')",
        (now,),
    )
    run_id = int(cur.lastrowid or 0)
    db.execute(
        "INSERT INTO models (version, stream, path, sha256, manifest, metrics, state, "
        "run_id, created_ts, registered_ts, updated_ts) VALUES ('v1', 'payments', "
        "'/nowhere', 'ab', '{}', '{}', 'champion', ?, ?, ?, ?)",
        (run_id, now, now, now),
    )
    db.execute(
        "INSERT INTO actions (ts, stream, action, version, actor) VALUES "
        "(?, 'payments', 'promote', 'v1', 'alice')",
        (now,),
    )
    with pytest.raises(sqlite3.IntegrityError):  # what the old CHECK refused
        db.execute("UPDATE runs SET decision = 'awaiting approval' WHERE id = ?", (run_id,))
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()
    return run_id


def test_an_old_registry_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    run_id = old_database(root)
    with Registry(root) as reg:
        assert reg.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert reg.champion("payments").version == "v1"  # type: ignore[union-attr]
        run = reg.run(run_id)
        assert (run.decision, run.decision_reason, run.challenger) == ("promoted", "better", "v1")
        assert reg.actions("payments")[0]["actor"] == "alice"
        assert reg.db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert reg.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # What the new version adds: a run awaiting approval, and operators' requests.
        waiting = reg.start_run("payments", "drift", "drift-monitor", "PSI 0.4")
        reg.finish_run(
            waiting, decision="awaiting approval", decision_reason="better", challenger="v1"
        )
        assert [r.id for r in reg.awaiting_approval("payments")] == [waiting]
        req = reg.add_request("approve", "alice", "operator", run_id=waiting, reason="looks good")
        assert reg.request(req.id).state == "pending"
        with pytest.raises(sqlite3.IntegrityError):  # the new CHECK still refuses nonsense
            reg.db.execute("UPDATE runs SET decision = 'maybe' WHERE id = ?", (waiting,))
    with Registry(root) as again:  # opening an up-to-date database changes nothing
        assert again.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert again.run(waiting).decision == "awaiting approval"


def test_a_new_registry_starts_at_the_current_version(tmp_path: Path) -> None:
    with Registry(tmp_path / "registry") as reg:
        assert reg.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        reg.register(model_dir(tmp_path / "src", "v1"), state="champion")
        assert reg.champion("payments").version == "v1"  # type: ignore[union-attr]


def test_a_registry_newer_than_this_code_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "registry"
    with Registry(root) as reg:
        reg.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(RegistryError, match="newer"):
        Registry(root).start()
