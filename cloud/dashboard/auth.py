"""Sign-in for the dashboard: scrypt password hashes, users with roles, CSRF tokens.

Stdlib only. Sessions live server-side (:mod:`cloud.dashboard.store`); the cookie holds only
a random token. Forms carry the session's CSRF token in a hidden field, scripts in an
``X-CSRF-Token`` header; a request that changes anything without it is refused. Before
sign-in the sign-in form is protected the same way by a short-lived signed token in its own
cookie (double submit), so nobody can sign a browser in as someone else.

Password checks cost ~50-200 ms of CPU each, so they run on a small pool of threads
(:class:`PasswordChecker`), never on the event loop that serves everybody else.

>>> h = hash_password("correct horse")
>>> verify_password("correct horse", h), verify_password("wrong", h)
(True, False)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cloud.dashboard.errors import AuthError, SignInBusy
from cloud.dashboard.store import DashboardStore, User

SESSION_COOKIE = "fs_session"
LOGIN_CSRF_COOKIE = "fs_login_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# scrypt cost: ~50 ms and 16 MiB per check on a small machine; slows guessing, not sign-in.
_N, _R, _P = 2**14, 8, 1


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = _N, r: int = _R, p: int = _P) -> str:
    """``scrypt$N$r$p$salt$hash`` for the config's user list."""
    if not password:
        raise AuthError("a password cannot be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=128 * r * n * 2
    )
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(want),
            maxmem=128 * int(r) * int(n) * 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


class Users:
    """Who may sign in: the users listed in cloud.toml (read at start) and those of the
    dashboard's store (read at every look-up, so a change made with the CLI counts at once).
    A name in cloud.toml wins. Checking costs the same for unknown names."""

    def __init__(
        self, configured: Mapping[str, str | User], store: DashboardStore | None = None
    ) -> None:
        # A bare hash is a user from before roles existed: an operator, as they all were.
        self._configured = {
            name: u if isinstance(u, User) else User(name, u) for name, u in configured.items()
        }
        self.store = store
        self._dummy = hash_password(secrets.token_hex(8))

    def configured(self, name: str) -> bool:
        return name in self._configured

    def get(self, name: str) -> User | None:
        """The user as they are now, or None when there is no such user (any more)."""
        user = self._configured.get(name)
        if user is None and self.store is not None:
            user = self.store.user(name)
        return user

    def check(self, name: str, password: str) -> User | None:
        user = self.get(name)
        ok = verify_password(password, user.password_hash if user else self._dummy)
        return user if ok and user is not None else None


class PasswordChecker:
    """:meth:`Users.check` on ``workers`` threads; past ``max_waiting`` checks queued or
    running, a new one is refused at once (:class:`SignInBusy`) rather than queued."""

    def __init__(self, users: Users, workers: int = 2, max_waiting: int = 16) -> None:
        self.users = users
        self.max_waiting = max_waiting
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="password")
        self._waiting = 0
        self._lock = threading.Lock()

    async def check(self, name: str, password: str) -> User | None:
        with self._lock:
            if self._waiting >= self.max_waiting:
                raise SignInBusy("too many sign-ins at once; try again in a second")
            self._waiting += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.users.check, name, password)
        finally:
            with self._lock:
                self._waiting -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Session:
    user: str
    issued: float
    csrf: str
    role: str = "viewer"

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class Signer:
    """Signs and checks cookie values (the sign-in form's token, flash messages) with an
    HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AuthError("the session key must be at least 16 bytes")
        self._key = key

    def _mac(self, body: str, purpose: str) -> str:
        return _b64(hmac.new(self._key, f"{purpose}:{body}".encode(), hashlib.sha256).digest())

    def dumps(self, data: dict[str, object], purpose: str) -> str:
        body = _b64(json.dumps(data, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body, purpose)}"

    def loads(self, value: str | None, purpose: str) -> dict[str, object] | None:
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(body, purpose)):
            return None
        try:
            data = json.loads(_unb64(body))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    # --- the sign-in form's token (before there is a session) --------------------------------

    def login_token(self) -> tuple[str, str]:
        """(token for the form, cookie value binding it to this browser)."""
        token = secrets.token_urlsafe(24)
        return token, self.dumps({"c": token, "t": time.time()}, "login")

    def check_login_token(self, cookie: str | None, token: str | None) -> bool:
        data = self.loads(cookie, "login")
        if data is None or not token:
            return False
        fresh = time.time() - float(data.get("t", 0)) < 3600  # type: ignore[arg-type]
        return fresh and hmac.compare_digest(str(data.get("c", "")), token)


def csrf_ok(session: Session | None, token: str | None) -> bool:
    return bool(session and token and hmac.compare_digest(session.csrf, token))
