"""The dashboard's own SQLite database (``<state_dir>/dashboard.sqlite``): users and sessions.

``users`` — people managed with ``fleetsentry cloud dashboard user ...``
    name PK · password_hash (``scrypt$...``) · role: ``viewer`` | ``operator`` · created_ts ·
    updated_ts

``sessions`` — one row per signed-in browser
    id PK (sha256 of the random token in the cookie: the table alone signs nobody in) ·
    user · stamp (the user's :attr:`~cloud.dashboard.auth.User.stamp` at sign-in) · csrf ·
    issued_ts · expires_ts

A session is good while its row exists, it has not expired, and its user still exists with
the same stamp; changing a user here deletes their sessions in the same transaction, so the
running dashboard (which reads this file on every request) lets them go at once.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud.dashboard.errors import DashboardError

ROLES = ("viewer", "operator")
DB_FILE = "dashboard.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator')),
    created_ts REAL NOT NULL,
    updated_ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    stamp TEXT NOT NULL,
    csrf TEXT NOT NULL,
    issued_ts REAL NOT NULL,
    expires_ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user ON sessions(user);
"""


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    role: str = "operator"

    @property
    def stamp(self) -> str:
        """Changes with the password or the role; a session carries the one it began with."""
        return hashlib.sha256(f"{self.role}:{self.password_hash}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SessionRow:
    user: str
    stamp: str
    csrf: str
    issued: float
    expires: float


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise DashboardError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


class DashboardStore:
    """Constructing it does no I/O; ``start()`` opens (and creates) the database."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir).expanduser() / DB_FILE
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, shared by the app's threads

    def start(self) -> DashboardStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Password hashes: 0600 before SQLite opens it (its -wal and -shm files copy the mode).
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        self._db = db
        return self

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        if self._db is None:
            raise DashboardError("dashboard store not started: call start() first")
        with self._lock:
            yield self._db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._read() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- users -------------------------------------------------------------------------------

    def user(self, name: str) -> User | None:
        with self._read() as db:
            row = db.execute(
                "SELECT name, password_hash, role FROM users WHERE name = ?", (name,)
            ).fetchone()
        return User(*row) if row else None

    def users(self) -> list[User]:
        with self._read() as db:
            rows = db.execute("SELECT name, password_hash, role FROM users ORDER BY name")
            return [User(*r) for r in rows]

    def add_user(self, user: User) -> None:
        check_role(user.role)
        now = time.time()
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (user.name,)).fetchone():
                raise DashboardError(
                    f"user {user.name!r} exists: change it with `user passwd` or `user role`"
                )
            db.execute(
                "INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                (user.name, user.password_hash, user.role, now, now),
            )

    def set_password(self, name: str, password_hash: str) -> None:
        self._change(name, "password_hash", password_hash)

    def set_role(self, name: str, role: str) -> None:
        self._change(name, "role", check_role(role))

    def remove_user(self, name: str) -> int:
        """Removes ``name``; returns how many of their sessions ended."""
        with self._tx() as db:
            if not db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount:
                raise DashboardError(f"no user {name!r} in {self.path}")
            return int(db.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount)

    def _change(self, name: str, column: str, value: str) -> None:
        with self._tx() as db:
            done = db.execute(
                f"UPDATE users SET {column} = ?, updated_ts = ? WHERE name = ?",
                (value, time.time(), name),
            ).rowcount
            if not done:
                raise DashboardError(f"no user {name!r} in {self.path}")
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))

    # --- sessions ----------------------------------------------------------------------------

    def new_session(
        self, user: User, max_age_s: float, now: float | None = None
    ) -> tuple[SessionRow, str]:
        """(the session, the token for the cookie). Expired sessions are swept on the way."""
        now = time.time() if now is None else now
        token = secrets.token_urlsafe(32)
        row = SessionRow(user.name, user.stamp, secrets.token_urlsafe(24), now, now + max_age_s)
        with self._tx() as db:
            db.execute("DELETE FROM sessions WHERE expires_ts <= ?", (now,))
            db.execute(
                "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?)",
                (_token_id(token), row.user, row.stamp, row.csrf, row.issued, row.expires),
            )
        return row, token

    def session(self, token: str | None, now: float | None = None) -> SessionRow | None:
        if not token or len(token) > 200:
            return None
        now = time.time() if now is None else now
        with self._read() as db:
            row = db.execute(
                "SELECT user, stamp, csrf, issued_ts, expires_ts FROM sessions WHERE id = ?",
                (_token_id(token),),
            ).fetchone()
        if row is None:
            return None
        s = SessionRow(*row)
        return s if s.issued <= now + 60 and now < s.expires else None

    def end_session(self, token: str | None) -> None:
        if token:
            with self._tx() as db:
                db.execute("DELETE FROM sessions WHERE id = ?", (_token_id(token),))

    def end_sessions(self, name: str) -> int:
        with self._tx() as db:
            return int(db.execute("DELETE FROM sessions WHERE user = ?", (name,)).rowcount)
