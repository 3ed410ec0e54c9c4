"""Sign-in for the dashboard: scrypt password hashes, signed session cookies, CSRF tokens.

Stdlib only. A session cookie is ``base64(json) "." base64(hmac-sha256)``; the JSON holds
the user, when the session was issued and the session's CSRF token. Forms carry that token
in a hidden field, scripts in an ``X-CSRF-Token`` header; a request that changes anything
without it is refused. Before sign-in the sign-in form is protected the same way by a
short-lived token in its own cookie (double submit), so nobody can sign a browser in as
someone else.

>>> h = hash_password("correct horse")
>>> verify_password("correct horse", h), verify_password("wrong", h)
(True, False)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cloud.dashboard.errors import AuthError

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
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32,
                            maxmem=128 * r * n * 2)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want), maxmem=128 * int(r) * int(n) * 2)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


class Users:
    """The configured users: name -> password hash. Checking costs the same for unknown names."""

    def __init__(self, hashes: Mapping[str, str]) -> None:
        self._hashes = dict(hashes)
        self._dummy = hash_password(secrets.token_hex(8))

    def __len__(self) -> int:
        return len(self._hashes)

    def check(self, name: str, password: str) -> bool:
        stored = self._hashes.get(name)
        ok = verify_password(password, stored or self._dummy)
        return ok and stored is not None


@dataclass(frozen=True)
class Session:
    user: str
    issued: float
    csrf: str


class Signer:
    """Signs and checks cookie values with an HMAC key."""

    def __init__(self, key: bytes, max_age_s: int) -> None:
        if len(key) < 16:
            raise AuthError("the session key must be at least 16 bytes")
        self._key = key
        self.max_age_s = max_age_s

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

    # --- sessions ----------------------------------------------------------------------------

    def new_session(self, user: str, now: float | None = None) -> tuple[Session, str]:
        s = Session(user, time.time() if now is None else now, secrets.token_urlsafe(24))
        return s, self.dumps({"u": s.user, "t": s.issued, "c": s.csrf}, "session")

    def session(self, cookie: str | None, now: float | None = None) -> Session | None:
        data = self.loads(cookie, "session")
        if data is None:
            return None
        try:
            s = Session(str(data["u"]), float(data["t"]), str(data["c"]))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            return None
        now = time.time() if now is None else now
        if not (s.issued <= now + 60 and now - s.issued <= self.max_age_s):
            return None
        return s

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
