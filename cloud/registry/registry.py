"""The model registry: SQLite tables of model versions, training runs and registry actions.

Schema (the dashboard and scripts read these tables directly; JSON columns hold objects):

``models`` — one row per model version ever registered
    version TEXT PK · stream · parent (version it was trained to replace, or NULL) ·
    path (the signed model directory, copied into the registry's own ``artifacts/``) ·
    sha256 (of model.tflite) · manifest (manifest.json as JSON) · metrics (JSON: the
    manifest's holdout metrics) · state: ``candidate`` (registered, never served),
    ``champion`` (served; at most one per stream), ``retired`` (served before, replaced) ·
    run_id (the training run that produced it, or NULL for imported models) ·
    created_ts · registered_ts · updated_ts

``runs`` — one row per training run (including failed and not-promoted ones)
    id PK · stream · trigger: ``schedule`` | ``drift`` | ``manual`` · triggered_by (user or
    ``scheduler``/``drift-monitor``) · trigger_reason (e.g. the drift figures) ·
    status: ``running`` | ``finished`` | ``failed`` · started_ts · finished_ts · duration_s ·
    params (JSON: training settings) · data_from / data_to (event time) · records ·
    metrics (JSON: ``{"challenger": {...}, "champion": {...}}`` on the same holdout) ·
    curves (JSON: ``{"challenger": {"roc": [[fpr, tpr], ...], "pr": [[recall, precision],
    ...]}, "champion": {...}, "loss": [epoch losses]}``) · champion (version serving when the
    run started) · challenger (version trained) · decision: ``promoted`` | ``kept`` |
    ``failed`` | ``awaiting approval`` (better, held for an operator: ``[trainer]
    require_approval``) | ``rejected`` (an operator said no) · decision_reason · error

``trainer_status`` — what the trainer service is doing about each stream, now
    stream PK · state: ``watching`` (champion serving, drift checked) | ``waiting for data`` |
    ``waiting for labels`` | ``training`` | ``backing off`` · detail (why, in words: the
    last drift check, the records it still needs, the failure it backs off from) ·
    drift (JSON: the last drift report, per gateway) · since_ts (in this state since) ·
    updated_ts · next_ts (when it will try again, or NULL) · failures (automatic runs
    failed or kept in a row; the back-off doubles with each)

``actions`` — audit trail of registry changes
    id PK · ts · stream · action: ``register`` | ``promote`` | ``rollback`` · version ·
    previous (the champion it replaced) · actor · reason

``requests`` — what operators asked for on the dashboard, carried out by the signer (the
    process holding the signing key; the dashboard holds none)
    id PK · ts · kind: ``promote`` | ``rollback`` | ``retrain`` | ``approve`` | ``reject`` ·
    stream · version (promote: the version; rollback: the target, or NULL) · run_id
    (approve, reject) · actor · role (the actor's dashboard role when recorded) · reason ·
    state: ``pending`` | ``running`` | ``done`` | ``refused`` | ``failed`` · outcome (in
    words) · result_version · picked_ts · finished_ts

The schema is versioned (``PRAGMA user_version``); opening an older database upgrades it in
place (``MIGRATIONS``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from cloud.registry.errors import RegistryError
from shared.contracts import ModelManifest
from shared.signing import MANIFEST_FILE, MODEL_FILE, SIGNATURE_FILE

State = Literal["candidate", "champion", "retired"]
Trigger = Literal["schedule", "drift", "manual"]
# Files copied into the registry beside the signed ones (the float reference weights, the
# training window's feature profile drift is measured against); nothing else is kept.
_EXTRA_FILES = ("reference.npz", "profile.json")
# How long opening the registry waits for other connections holding its database locked.
_LOCK_TIMEOUT_S = 30.0

# Version 1: the tables as first released (databases made then have user_version 0).
_V1 = """
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

# Version 2: a run may await an operator's approval (and be rejected), and operators'
# requests wait in ``requests`` for the signer. SQLite cannot change a CHECK constraint, so
# ``runs`` is rebuilt (the documented way: new table, copy, drop, rename).
_V2 = """
CREATE TABLE runs_v2 (
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
    decision TEXT CHECK (decision IN ('promoted', 'kept', 'failed', 'awaiting approval',
                                      'rejected')),
    decision_reason TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT ''
);
INSERT INTO runs_v2 SELECT id, stream, trigger, triggered_by, trigger_reason, status,
    started_ts, finished_ts, duration_s, params, data_from, data_to, records, metrics, curves,
    champion, challenger, decision, decision_reason, error FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v2 RENAME TO runs;
CREATE INDEX IF NOT EXISTS runs_by_stream ON runs(stream, started_ts);
CREATE TABLE requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('promote', 'rollback', 'retrain', 'approve', 'reject')),
    stream TEXT NOT NULL DEFAULT '',
    version TEXT,
    run_id INTEGER,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'running', 'done', 'refused', 'failed')),
    outcome TEXT NOT NULL DEFAULT '',
    result_version TEXT,
    picked_ts REAL,
    finished_ts REAL
);
CREATE INDEX requests_open ON requests(state, kind, id);
"""
# MIGRATIONS[i] takes a database from user_version i to i + 1.
MIGRATIONS = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True)
class ModelRecord:
    version: str
    stream: str
    parent: str | None
    path: Path
    sha256: str
    manifest: dict[str, Any]
    metrics: dict[str, Any]
    state: State
    run_id: int | None
    created_ts: float
    registered_ts: float
    updated_ts: float

    @property
    def threshold(self) -> float:
        return float(self.manifest["threshold"])


@dataclass(frozen=True)
class RunRecord:
    id: int
    stream: str
    trigger: Trigger
    triggered_by: str
    trigger_reason: str
    status: str
    started_ts: float
    finished_ts: float | None
    duration_s: float | None
    params: dict[str, Any]
    data_from: float | None
    data_to: float | None
    records: int | None
    metrics: dict[str, Any]
    curves: dict[str, Any]
    champion: str | None
    challenger: str | None
    decision: str | None
    decision_reason: str
    error: str


StatusState = Literal[
    "watching",
    "waiting for data",
    "waiting for labels",
    "training",
    "backing off",
    "awaiting approval",
]
Decision = Literal["promoted", "kept", "failed", "awaiting approval", "rejected"]
RequestKind = Literal["promote", "rollback", "retrain", "approve", "reject"]
RequestState = Literal["pending", "running", "done", "refused", "failed"]
OPEN_REQUESTS: tuple[RequestState, ...] = ("pending", "running")


@dataclass(frozen=True)
class RequestRecord:
    """An operator's request, recorded by the dashboard and carried out by the signer."""

    id: int
    ts: float
    kind: RequestKind
    stream: str
    version: str | None
    run_id: int | None
    actor: str
    role: str
    reason: str
    state: RequestState
    outcome: str
    result_version: str | None
    picked_ts: float | None
    finished_ts: float | None


@dataclass(frozen=True)
class TrainerStatus:
    stream: str
    state: StatusState
    detail: str
    drift: dict[str, Any]
    since_ts: float
    updated_ts: float
    next_ts: float | None
    failures: int


_JSON_COLUMNS = {"manifest", "metrics", "params", "curves", "drift"}


def _row(kind: type[Any], row: sqlite3.Row) -> Any:
    values = {k: (json.loads(row[k]) if k in _JSON_COLUMNS else row[k]) for k in row.keys()}
    if kind is ModelRecord:
        values["path"] = Path(values["path"])
    return kind(**values)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, allow_nan=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class Registry:
    """The registry at ``root`` (``registry.sqlite`` + ``artifacts/<stream>/<version>/``).

    Constructing it does no I/O; ``start()`` opens (and creates) the database.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()
        self.db_path = self.root / "registry.sqlite"
        self.artifacts = self.root / "artifacts"
        self._db: sqlite3.Connection | None = None

    def start(self) -> Registry:
        self.artifacts.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.db_path, timeout=_LOCK_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        try:
            _use_wal(db)
            _migrate(db, self.db_path)
        except sqlite3.OperationalError as exc:
            db.close()
            if _is_busy(exc):
                raise RegistryError(
                    f"{self.db_path}: database is locked (held by another connection for "
                    f"over {_LOCK_TIMEOUT_S:g} s)"
                ) from exc
            raise
        except BaseException:
            db.close()
            raise
        db.execute("PRAGMA foreign_keys=ON")  # after migrating: rebuilding a table drops it
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Registry:
        return self.start() if self._db is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RegistryError("registry not started: call start() first")
        return self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE: two processes promoting at once serialize instead of racing.
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- models ------------------------------------------------------------------------------

    def register(
        self,
        model_dir: Path,
        run_id: int | None = None,
        actor: str = "system",
        state: State = "candidate",
    ) -> ModelRecord:
        """Copy a signed model directory into the registry and record it as a candidate.

        Registering the same version twice is refused unless the model bytes are identical
        (then the existing record is returned: registering is idempotent).
        """
        model_dir = Path(model_dir)
        manifest = _read_manifest(model_dir)
        sha = hashlib.sha256((model_dir / MODEL_FILE).read_bytes()).hexdigest()
        existing = self.find(manifest.version)
        if existing is not None:
            if existing.sha256 != sha:
                raise RegistryError(
                    f"version {manifest.version} is already registered with different model bytes"
                )
            return existing
        dest = self._copy_artifacts(model_dir, manifest)
        now = time.time()
        manifest_json = json.loads(msgspec.json.encode(manifest))
        with self._tx() as db:
            db.execute(
                "INSERT INTO models (version, stream, parent, path, sha256, manifest, metrics, "
                "state, run_id, created_ts, registered_ts, updated_ts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'candidate', ?, ?, ?, ?)",
                (
                    manifest.version,
                    manifest.stream,
                    manifest.parent,
                    str(dest),
                    sha,
                    _json(manifest_json),
                    _json(manifest.metrics),
                    run_id,
                    manifest.created_ts,
                    now,
                    now,
                ),
            )
            self._action(db, manifest.stream, "register", manifest.version, None, actor, "")
        if state == "champion":
            return self.promote(manifest.version, actor, "registered as champion")
        return self.get(manifest.version)

    def _copy_artifacts(self, model_dir: Path, manifest: ModelManifest) -> Path:
        dest = self.artifacts / manifest.stream / _safe_name(manifest.version)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        for name in (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE, *_EXTRA_FILES):
            src = model_dir / name
            if src.exists():
                shutil.copy2(src, tmp / name)
        if dest.exists():  # left by a crash between copy and insert: replace it
            shutil.rmtree(dest)
        tmp.rename(dest)
        return dest

    def find(self, version: str) -> ModelRecord | None:
        row = self.db.execute("SELECT * FROM models WHERE version = ?", (version,)).fetchone()
        return _row(ModelRecord, row) if row else None

    def get(self, version: str) -> ModelRecord:
        rec = self.find(version)
        if rec is None:
            raise RegistryError(f"no model version {version!r} in the registry at {self.root}")
        return rec

    def models(self, stream: str | None = None) -> list[ModelRecord]:
        """Every version (of ``stream``), newest first."""
        sql, args = "SELECT * FROM models", ()  # type: tuple[str, tuple[str, ...]]
        if stream:
            sql, args = sql + " WHERE stream = ?", (stream,)
        rows = self.db.execute(sql + " ORDER BY registered_ts DESC, rowid DESC", args)
        return [_row(ModelRecord, r) for r in rows]

    def streams(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT DISTINCT stream FROM models ORDER BY 1")]

    def champion(self, stream: str) -> ModelRecord | None:
        row = self.db.execute(
            "SELECT * FROM models WHERE stream = ? AND state = 'champion'", (stream,)
        ).fetchone()
        return _row(ModelRecord, row) if row else None

    def lineage(self, version: str) -> list[ModelRecord]:
        """``version`` and its ancestors through ``parent``, newest first."""
        out: list[ModelRecord] = []
        seen: set[str] = set()
        current: str | None = version
        while current and current not in seen:
            seen.add(current)
            rec = self.find(current)
            if rec is None:
                break
            out.append(rec)
            current = rec.parent
        return out

    def promote(self, version: str, actor: str = "system", reason: str = "") -> ModelRecord:
        """Make ``version`` the champion of its stream; the old champion is retired."""
        rec = self.get(version)
        with self._tx() as db:
            old = self._demote(db, rec.stream, rec.version)
            self._set_state(db, version, "champion")
            self._action(db, rec.stream, "promote", version, old, actor, reason)
        return self.get(version)

    def rollback(
        self, stream: str, actor: str = "system", reason: str = "", to: str | None = None
    ) -> ModelRecord:
        """Put back the champion before the current one (or ``to``); the current is retired."""
        current = self.champion(stream)
        if current is None:
            raise RegistryError(f"stream {stream!r} has no champion to roll back")
        target = self.get(to) if to else self._previous_champion(stream, current.version)
        if target.stream != stream:
            raise RegistryError(f"{target.version} is a {target.stream} model, not {stream}")
        if target.version == current.version:
            raise RegistryError(f"{target.version} is already the champion of {stream}")
        with self._tx() as db:
            self._demote(db, stream, target.version)
            self._set_state(db, target.version, "champion")
            self._action(db, stream, "rollback", target.version, current.version, actor, reason)
        return self.get(target.version)

    def _previous_champion(self, stream: str, current: str) -> ModelRecord:
        # The champion `current` replaced when it was last promoted. Rollbacks are not
        # followed: rolling back twice goes two promotions back, not back and forth.
        rows = self.db.execute(
            "SELECT previous FROM actions WHERE stream = ? AND action = 'promote' AND "
            "version = ? ORDER BY id DESC LIMIT 1",
            (stream, current),
        ).fetchall()
        for row in rows:
            if row["previous"] and row["previous"] != current:
                return self.get(row["previous"])
        raise RegistryError(
            f"{stream}: no earlier champion than {current} to roll back to; "
            f"name one with --to VERSION"
        )

    def _demote(self, db: sqlite3.Connection, stream: str, keep: str) -> str | None:
        row = db.execute(
            "SELECT version FROM models WHERE stream = ? AND state = 'champion'", (stream,)
        ).fetchone()
        if row is None or row["version"] == keep:
            return None
        self._set_state(db, row["version"], "retired")
        return str(row["version"])

    @staticmethod
    def _set_state(db: sqlite3.Connection, version: str, state: State) -> None:
        db.execute(
            "UPDATE models SET state = ?, updated_ts = ? WHERE version = ?",
            (state, time.time(), version),
        )

    @staticmethod
    def _action(
        db: sqlite3.Connection,
        stream: str,
        action: str,
        version: str,
        previous: str | None,
        actor: str,
        reason: str,
    ) -> None:
        db.execute(
            "INSERT INTO actions (ts, stream, action, version, previous, actor, reason) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (time.time(), stream, action, version, previous, actor, reason),
        )

    def actions(self, stream: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM actions", ()  # type: tuple[str, tuple[str, ...]]
        if stream:
            sql, args = sql + " WHERE stream = ?", (stream,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [dict(r) for r in rows]

    # --- runs --------------------------------------------------------------------------------

    def start_run(
        self,
        stream: str,
        trigger: Trigger,
        triggered_by: str,
        trigger_reason: str = "",
        params: dict[str, Any] | None = None,
    ) -> int:
        champion = self.champion(stream)
        cur = self.db.execute(
            "INSERT INTO runs (stream, trigger, triggered_by, trigger_reason, status, "
            "started_ts, params, champion) VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
            (
                stream,
                trigger,
                triggered_by,
                trigger_reason,
                time.time(),
                _json(params or {}),
                champion.version if champion else None,
            ),
        )
        assert cur.lastrowid is not None
        return int(cur.lastrowid)

    def finish_run(
        self,
        run_id: int,
        *,
        decision: Decision,
        decision_reason: str,
        challenger: str | None = None,
        metrics: dict[str, Any] | None = None,
        curves: dict[str, Any] | None = None,
        data_range: tuple[float, float] | None = None,
        records: int | None = None,
        error: str = "",
    ) -> RunRecord:
        run = self.run(run_id)
        now = time.time()
        self.db.execute(
            "UPDATE runs SET status = ?, finished_ts = ?, duration_s = ?, decision = ?, "
            "decision_reason = ?, challenger = ?, metrics = ?, curves = ?, data_from = ?, "
            "data_to = ?, records = ?, error = ? WHERE id = ?",
            (
                "failed" if decision == "failed" else "finished",
                now,
                now - run.started_ts,
                decision,
                decision_reason,
                challenger,
                _json(metrics or {}),
                _json(curves or {}),
                data_range[0] if data_range else None,
                data_range[1] if data_range else None,
                records,
                error,
                run_id,
            ),
        )
        return self.run(run_id)

    def run(self, run_id: int) -> RunRecord:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no training run {run_id} in the registry at {self.root}")
        return _row(RunRecord, row)

    def runs(self, stream: str | None = None, limit: int = 100) -> list[RunRecord]:
        sql, args = "SELECT * FROM runs", ()  # type: tuple[str, tuple[str, ...]]
        if stream:
            sql, args = sql + " WHERE stream = ?", (stream,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_row(RunRecord, r) for r in rows]

    def awaiting_approval(self, stream: str | None = None) -> list[RunRecord]:
        """Runs whose challenger passed the automatic checks and waits for an operator."""
        sql = "SELECT * FROM runs WHERE decision = 'awaiting approval'"
        args: tuple[str, ...] = ()
        if stream:
            sql, args = sql + " AND stream = ?", (stream,)
        return [_row(RunRecord, r) for r in self.db.execute(sql + " ORDER BY id", args)]

    def decide_run(
        self, run_id: int, decision: Literal["promoted", "rejected"], reason: str
    ) -> RunRecord:
        """Settle a run awaiting approval; a run in any other state is refused."""
        cur = self.db.execute(
            "UPDATE runs SET decision = ?, decision_reason = ? WHERE id = ? AND "
            "decision = 'awaiting approval'",
            (decision, reason, run_id),
        )
        if cur.rowcount != 1:
            run = self.run(run_id)
            raise RegistryError(
                f"run {run_id} is {run.decision or run.status}, not awaiting approval"
            )
        return self.run(run_id)

    # --- operators' requests -----------------------------------------------------------------

    def add_request(
        self,
        kind: RequestKind,
        actor: str,
        role: str,
        *,
        stream: str = "",
        version: str | None = None,
        run_id: int | None = None,
        reason: str = "",
    ) -> RequestRecord:
        """Record a request for the signer. A stream has at most one retrain open."""
        with self._tx() as db:
            if kind == "retrain":
                busy = db.execute(
                    "SELECT actor, state FROM requests WHERE kind = 'retrain' "
                    "AND stream = ? AND state IN ('pending', 'running')",
                    (stream,),
                ).fetchone()
                if busy is not None:
                    raise RegistryError(
                        f"a retrain of {stream} is already {busy['state']} "
                        f"(asked for by {busy['actor']})"
                    )
            cur = db.execute(
                "INSERT INTO requests (ts, kind, stream, version, run_id, actor, role, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), kind, stream, version, run_id, actor, role, reason),
            )
        assert cur.lastrowid is not None
        return self.request(int(cur.lastrowid))

    def claim_request(self, kinds: tuple[RequestKind, ...]) -> RequestRecord | None:
        """The oldest pending request of ``kinds``, now marked running (or None)."""
        marks = ", ".join("?" * len(kinds))
        with self._tx() as db:
            row = db.execute(
                f"SELECT id FROM requests WHERE state = 'pending' AND kind IN "
                f"({marks}) ORDER BY id LIMIT 1",
                kinds,
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE requests SET state = 'running', picked_ts = ? WHERE id = ?",
                (time.time(), row["id"]),
            )
        return self.request(int(row["id"]))

    def finish_request(
        self, request_id: int, state: RequestState, outcome: str, result_version: str | None = None
    ) -> RequestRecord:
        self.db.execute(
            "UPDATE requests SET state = ?, outcome = ?, result_version = ?, "
            "finished_ts = ? WHERE id = ?",
            (state, outcome, result_version, time.time(), request_id),
        )
        return self.request(request_id)

    def request(self, request_id: int) -> RequestRecord:
        row = self.db.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if row is None:
            raise RegistryError(f"no request {request_id} in the registry at {self.root}")
        return _row(RequestRecord, row)

    def requests(
        self, states: tuple[RequestState, ...] | None = None, limit: int = 100
    ) -> list[RequestRecord]:
        """Requests (in ``states``), newest first."""
        sql, args = "SELECT * FROM requests", ()  # type: tuple[str, tuple[Any, ...]]
        if states:
            sql, args = sql + f" WHERE state IN ({', '.join('?' * len(states))})", states
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [_row(RequestRecord, r) for r in rows]

    # --- releases ----------------------------------------------------------------------------

    def reserve_release(
        self,
        stream: str,
        version: str,
        key_id: str,
        fleet: str,
        issued_ts: float,
        expires_ts: float,
    ) -> int:
        """The next release number of ``stream`` (one more than any before), recorded."""
        with self._tx() as db:
            row = db.execute(
                "SELECT MAX(number) FROM releases WHERE stream = ?", (stream,)
            ).fetchone()
            number = int(row[0] or 0) + 1
            db.execute(
                "INSERT INTO releases (stream, number, version, key_id, fleet, "
                "issued_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (stream, number, version, key_id, fleet, issued_ts, expires_ts),
            )
        return number

    def latest_release(self, stream: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT * FROM releases WHERE stream = ? ORDER BY number DESC LIMIT 1", (stream,)
        ).fetchone()
        return None if row is None else dict(row)

    # --- the trainer service's state --------------------------------------------------------

    def set_status(
        self,
        stream: str,
        state: StatusState,
        detail: str,
        *,
        next_ts: float | None = None,
        failures: int | None = None,
        drift: dict[str, Any] | None = None,
    ) -> TrainerStatus:
        """Record what the trainer is doing about ``stream`` (``since_ts`` moves only when
        the state changes; ``failures`` and ``drift`` keep their value unless given)."""
        now = time.time()
        old = self.status(stream)
        since = old.since_ts if old is not None and old.state == state else now
        fails = failures if failures is not None else (old.failures if old else 0)
        report = drift if drift is not None else (old.drift if old else {})
        self.db.execute(
            "INSERT INTO trainer_status (stream, state, detail, drift, since_ts, updated_ts, "
            "next_ts, failures) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(stream) DO UPDATE "
            "SET state = excluded.state, detail = excluded.detail, drift = excluded.drift, "
            "since_ts = excluded.since_ts, updated_ts = excluded.updated_ts, "
            "next_ts = excluded.next_ts, failures = excluded.failures",
            (stream, state, detail, _json(report), since, now, next_ts, fails),
        )
        status = self.status(stream)
        assert status is not None
        return status

    def status(self, stream: str) -> TrainerStatus | None:
        row = self.db.execute("SELECT * FROM trainer_status WHERE stream = ?", (stream,)).fetchone()
        return None if row is None else _row(TrainerStatus, row)

    def statuses(self) -> list[TrainerStatus]:
        rows = self.db.execute("SELECT * FROM trainer_status ORDER BY stream")
        return [_row(TrainerStatus, r) for r in rows]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLITE_BUSY ("database is locked"), in any of its extended forms."""
    return ((getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF) == sqlite3.SQLITE_BUSY


def _use_wal(db: sqlite3.Connection) -> None:
    """Switch the database to write-ahead logging, retrying for up to ``_LOCK_TIMEOUT_S``
    while other connections hold it.

    Switching a rollback-journal database (a new one included) reads its header under a
    shared lock and then upgrades to a write lock. SQLite refuses that upgrade at once with
    SQLITE_BUSY, without calling the busy handler, while another connection holds the write
    lock (waiting could deadlock). The refused statement has released its shared lock, so the
    other connection can finish; trying again then finds the database in WAL mode or free.
    A lock that outlasts the timeout raises the last ``sqlite3.OperationalError``.
    """
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    pause = 0.001
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the database up to ``SCHEMA_VERSION`` in place, one migration per transaction.

    Processes opening it at once (the dashboard and the signer) take turns (BEGIN IMMEDIATE);
    the later one finds the work done.
    """
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RegistryError(
                    f"{path} has schema version {version}, newer than this "
                    f"fleetsentry knows ({SCHEMA_VERSION}): upgrade fleetsentry"
                )
            if version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if version >= SCHEMA_VERSION - 1:
            return


def _read_manifest(model_dir: Path) -> ModelManifest:
    path = Path(model_dir) / MANIFEST_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=ModelManifest)
    except FileNotFoundError:
        raise RegistryError(f"{model_dir}: no {MANIFEST_FILE}; not a model directory") from None
    except msgspec.DecodeError as exc:
        raise RegistryError(f"{path}: not a valid manifest: {exc}") from None


def _safe_name(version: str) -> str:
    """A version as a directory name: no separators, no leading dot."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in version).lstrip(".")
    if not cleaned:
        raise RegistryError(f"model version {version!r} cannot name a directory")
    return cleaned
