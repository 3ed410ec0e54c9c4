"""The PII vault: each personal value stored once, encrypted, under its keyed token.

Layout (SQLite through sqlite-utils, WAL so the scorer can read while the enricher writes):

- ``keys``: one data key per person (AES-256), wrapped with the gateway's master key. Erasing a
  person deletes their key: their values can never be decrypted again (crypto-shredding), and
  the rows are deleted too. Values that belong to no person (VINs) use the ``_fleet`` key.
- ``pii``: token -> AES-GCM(data key, value), with the token as associated data, so a ciphertext
  moved to another token fails to decrypt. ``last_seen`` drives the retention limit.
- ``audit``: who revealed or erased what, and when (tokens only, never values).
- ``meta``: the fleet secret's fingerprint (a token of a fixed value under the secret, which
  reveals nothing of it). A vault opened with another secret refuses to start: every token
  it would make would differ from the ones it holds and from the rest of the fleet's.

``secure_delete`` makes SQLite zero deleted content, so an erased key leaves no copy in free pages.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.vault.errors import SecretMismatch, UnknownToken, VaultError
from edge.vault.keyfile import load_or_create
from shared.tokens import Tokenizer

FLEET_PERSON = "_fleet"
PERSON_KIND = "person"
NONCE = 12
# The fleet secret's fingerprint: this value's token under the secret.
FINGERPRINT = ("_fleet_secret", "fingerprint")
TOUCH_EVERY_S = 3600.0  # refresh last_seen at most hourly per value: retention is in days


class Vault:
    """Encrypted PII store. ``start()`` opens it; ``close()`` releases it."""

    def __init__(
        self,
        path: str | Path,
        key_file: str | Path,
        tokenizer: Tokenizer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).expanduser()
        self.key_file = Path(key_file).expanduser()
        self.tokenizer = tokenizer
        self._clock = clock
        self._db: sqlite_utils.Database | None = None
        self._master: AESGCM | None = None
        self._data_keys: dict[str, AESGCM] = {}
        # token -> when last_seen was last written, oldest first; entries older than
        # TOUCH_EVERY_S are useless and dropped, so this holds at most an hour of values.
        self._seen: OrderedDict[str, float] = OrderedDict()

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> Vault:
        self._master = AESGCM(load_or_create(self.key_file))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite_utils.Database(self.path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA secure_delete=ON")
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("PRAGMA synchronous=NORMAL")
        if "keys" not in db.table_names():
            db.table("keys").create(
                {"person": str, "wrapped": bytes, "created": float}, pk="person"
            )
        if "pii" not in db.table_names():
            pii = db.table("pii")
            pii.create(
                {
                    "token": str,
                    "kind": str,
                    "person": str,
                    "sealed": bytes,
                    "first_seen": float,
                    "last_seen": float,
                },
                pk="token",
            )
            pii.create_index(["person"])
            pii.create_index(["last_seen"])
        if "audit" not in db.table_names():
            db.table("audit").create(
                {
                    "id": int,
                    "ts": float,
                    "actor": str,
                    "action": str,
                    "token": str,
                    "kind": str,
                    "outcome": str,
                },
                pk="id",
            )
        self._db = db
        if self.tokenizer is not None:
            self._check_secret(db, self.tokenizer)
        return self

    def _check_secret(self, db: sqlite_utils.Database, tokenizer: Tokenizer) -> None:
        """Record the fleet secret's fingerprint, or refuse a secret that is not it.

        A vault from before the fingerprint (its values made with the secret it was opened
        with until then) takes the first secret it is opened with."""
        mine = tokenizer.token(*FINGERPRINT)
        if "meta" not in db.table_names():
            db.table("meta").create({"name": str, "value": str}, pk="name")
        rows = list(db.query("SELECT value FROM meta WHERE name = 'fleet_secret'"))
        if not rows:
            db.table("meta").insert({"name": "fleet_secret", "value": mine}, replace=True)
            return
        if rows[0]["value"] != mine:
            self.close()
            raise SecretMismatch(
                f"the fleet secret is not the one the vault {self.path} was filled with "
                f"(fingerprint {mine[:12]}, the vault's {rows[0]['value'][:12]}): every "
                "vehicle, driver and card would get new tokens, apart from their history "
                "and from the rest of the fleet's"
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._data_keys.clear()

    def __enter__(self) -> Vault:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise VaultError("the vault is not started (call start())")
        return self._db

    # --- keys --------------------------------------------------------------------------

    def person_token(self, person_id: str | None) -> str:
        if person_id is None:
            return FLEET_PERSON
        return self._tokens().token(PERSON_KIND, person_id)

    def _tokens(self) -> Tokenizer:
        if self.tokenizer is None:
            raise VaultError("this vault was opened without the fleet secret (tokenizer)")
        return self.tokenizer

    def _data_key(self, person: str, create: bool) -> AESGCM | None:
        key = self._data_keys.get(person)
        if key is not None:
            return key
        assert self._master is not None
        rows = list(self.db.query("SELECT wrapped FROM keys WHERE person = ?", [person]))
        if rows:
            blob = rows[0]["wrapped"]
            try:
                raw = self._master.decrypt(blob[:NONCE], blob[NONCE:], person.encode())
            except InvalidTag:
                raise VaultError(
                    f"the master key {self.key_file} does not open this vault's "
                    "keys: restore the key file this vault was created with"
                ) from None
        elif create:
            raw = AESGCM.generate_key(bit_length=256)
            nonce = secrets.token_bytes(NONCE)
            wrapped = nonce + self._master.encrypt(nonce, raw, person.encode())
            self.db.execute(
                "INSERT OR IGNORE INTO keys (person, wrapped, created) VALUES (?,?,?)",
                [person, wrapped, self._clock()],
            )
            return self._data_key(person, create=False)  # whoever won the race, use theirs
        else:
            return None
        key = self._data_keys[person] = AESGCM(raw)
        return key

    # --- values ------------------------------------------------------------------------

    def put(self, kind: str, value: str, person_id: str | None) -> str:
        """Store ``value`` (once) and return its token."""
        return self.put_many([(kind, value, person_id)])[0]

    def put_many(self, items: Iterable[tuple[str, str, str | None]]) -> list[str]:
        """Store many values in one SQLite transaction; returns their tokens in order.

        Values stored within the last hour are skipped without touching the database, so the
        enricher can hand over every PII field of every event.
        """
        tok = self._tokens()
        now = self._clock()
        seen = self._seen
        while seen and now - next(iter(seen.values())) >= TOUCH_EVERY_S:
            seen.popitem(last=False)
        tokens: list[str] = []
        fresh: list[tuple[str, str, str, str | None]] = []
        for kind, value, person_id in items:
            token = tok.token(kind, value)
            tokens.append(token)
            if token not in seen:
                fresh.append((token, kind, value, person_id))
                seen[token] = now
        if fresh:
            with self.db.conn:
                for token, kind, value, person_id in fresh:
                    self._upsert(token, kind, value, self.person_token(person_id), now)
        return tokens

    def _upsert(self, token: str, kind: str, value: str, person: str, now: float) -> None:
        cur = self.db.execute("UPDATE pii SET last_seen = ? WHERE token = ?", [now, token])
        if cur.rowcount:
            return
        key = self._data_key(person, create=True)
        assert key is not None
        nonce = secrets.token_bytes(NONCE)
        sealed = nonce + key.encrypt(nonce, value.encode(), token.encode())
        self.db.execute(
            "INSERT OR IGNORE INTO pii (token, kind, person, sealed, first_seen, last_seen) "
            "VALUES (?,?,?,?,?,?)",
            [token, kind, person, sealed, now, now],
        )

    def reveal(self, token: str, actor: str) -> str:
        """The value behind ``token``, recorded in the audit log under ``actor``."""
        if not actor.strip():
            raise VaultError("reveal needs an actor name for the audit log")
        rows = list(self.db.query("SELECT kind, person, sealed FROM pii WHERE token = ?", [token]))
        key = self._data_key(rows[0]["person"], create=False) if rows else None
        value: str | None = None
        if rows and key is not None:
            sealed = rows[0]["sealed"]
            try:
                value = key.decrypt(sealed[:NONCE], sealed[NONCE:], token.encode()).decode()
            except InvalidTag:
                value = None
        kind = rows[0]["kind"] if rows else ""
        self._audit(actor, "reveal", token, kind, "revealed" if value is not None else "unknown")
        if value is None:
            raise UnknownToken(f"no readable value for token {token}")
        return value

    def erase_person(self, person_id: str, actor: str = "system") -> int:
        """Crypto-shred one person: delete their data key and values. Returns values erased."""
        person = self.person_token(person_id)
        with self.db.conn:
            n = self.db.execute("DELETE FROM pii WHERE person = ?", [person]).rowcount
            self.db.execute("DELETE FROM keys WHERE person = ?", [person])
        self._data_keys.pop(person, None)
        self._seen.clear()
        self._audit(actor, "erase", person, PERSON_KIND, f"{n} values")
        return n

    def purge_older_than(self, days: float, actor: str = "retention") -> int:
        """Delete values not seen for ``days`` days (and keys left with no value)."""
        cutoff = self._clock() - days * 86_400.0
        with self.db.conn:
            n = self.db.execute("DELETE FROM pii WHERE last_seen < ?", [cutoff]).rowcount
            self.db.execute(
                "DELETE FROM keys WHERE person NOT IN (SELECT DISTINCT person FROM pii)"
            )
        self._data_keys.clear()
        self._seen.clear()
        self._audit(actor, "purge", "", "", f"{n} values older than {days:g} days")
        return n

    def expire(self, days: float, limit: int, actor: str = "retention") -> int:
        """Delete up to ``limit`` values not seen for ``days`` days, oldest first.

        The running enricher calls this often, so the retention limit holds with bounded work
        each time (an index range scan and ``limit`` deletes), however many values a flood of
        made-up ids left behind. Returns values deleted.
        """
        cutoff = self._clock() - days * 86_400.0
        rows = list(
            self.db.query(
                "SELECT token, person FROM pii WHERE last_seen < ? ORDER BY last_seen LIMIT ?",
                [cutoff, limit],
            )
        )
        if not rows:
            return 0
        persons = {r["person"] for r in rows}
        with self.db.conn:
            self.db.conn.executemany(
                "DELETE FROM pii WHERE token = ?", [[r["token"]] for r in rows]
            )
            # A person left with no value keeps no key either (an index lookup each).
            self.db.conn.executemany(
                "DELETE FROM keys WHERE person = ? AND NOT EXISTS "
                "(SELECT 1 FROM pii WHERE pii.person = keys.person)",
                [[p] for p in persons],
            )
        for r in rows:
            self._seen.pop(r["token"], None)  # stored again when next seen
        for person in persons:
            self._data_keys.pop(person, None)
        self._audit(actor, "purge", "", "", f"{len(rows)} values older than {days:g} days")
        return len(rows)

    def _audit(self, actor: str, action: str, token: str, kind: str, outcome: str) -> None:
        with self.db.conn:
            self.db.execute(
                "INSERT INTO audit (ts, actor, action, token, kind, outcome) VALUES (?,?,?,?,?,?)",
                [self._clock(), actor, action, token, kind, outcome],
            )

    def record_access(self, actor: str, action: str, outcome: str) -> None:
        """Audit an access to personal data held outside the vault (e.g. dead letters)."""
        if not actor.strip():
            raise VaultError(f"{action} needs an actor name for the audit log")
        self._audit(actor, action, "", "", outcome)

    def audit_log(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(
            self.db.query(
                "SELECT ts, actor, action, token, kind, outcome FROM audit "
                "ORDER BY id DESC LIMIT ?",
                [limit],
            )
        )

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM pii").fetchone()[0])
