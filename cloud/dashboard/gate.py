"""Who is asking: the session of a request, sign-in by form or HTTP Basic (throttled, hashed
off the event loop), and :func:`signed_in`, which every page, partial and ``/api`` route
wears."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from cloud.dashboard.auth import SESSION_COOKIE, Session
from cloud.dashboard.errors import BadQuery, SignInBusy
from cloud.dashboard.site import Site, bad_query, for_scripts, site_of
from cloud.dashboard.store import User

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Session], Awaitable[Response]]


@dataclass(frozen=True)
class Refusal:
    """A sign-in turned down: the status to answer, why, and when to try again."""

    status: int
    why: str
    retry_s: int | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_s)} if self.retry_s else None


def session_of(site: Site, request: Request) -> Session | None:
    """The request's session, if its user is unchanged since sign-in. Reads the dashboard's
    store (SQLite): call it through :func:`current_session` from async code."""
    store, token = site.dash.store, request.cookies.get(SESSION_COOKIE)
    row = store.session(token)
    if row is None:
        return None
    user = site.dash.users.get(row.user)
    if user is None or user.stamp != row.stamp:  # removed, or password or role changed
        store.end_session(token)
        return None
    return Session(user.name, row.issued, row.csrf, user.role)


async def current_session(site: Site, request: Request) -> Session | None:
    return await run_in_threadpool(session_of, site, request)


async def authenticate(site: Site, request: Request, name: str, password: str) -> User | Refusal:
    """The user, or why not; a locked name or address is refused before any hashing."""
    address = request.client.host if request.client else "unknown"
    throttle = site.throttle
    wait = throttle.retry_after(name, address)
    if wait is not None:
        return Refusal(
            429,
            f"Too many failed sign-ins: this name or address is locked; try again in {wait} s.",
            wait,
        )
    throttle.attempt(name, address)
    try:
        user = await site.checker.check(name, password)
    except SignInBusy as exc:
        return Refusal(503, str(exc), 1)
    if user is None:
        return Refusal(401, "Unknown user or wrong password.")
    throttle.succeeded(name, address)
    return user


async def basic_user(site: Site, request: Request) -> User | Refusal | None:
    """The user of an HTTP Basic header, why not, or None when there is no such header."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return await authenticate(site, request, name, password)


def signed_in(fn: Handler) -> Endpoint:
    """``fn`` for a signed-in user. Without a session: people are sent to sign in; scripts
    get 401, or on ``/api`` may sign in with HTTP Basic (a session without a CSRF token).
    A :class:`BadQuery` becomes 400."""

    async def checked(request: Request, session: Session) -> Response:
        try:
            return await fn(request, session)
        except BadQuery as exc:
            return bad_query(request, str(exc))

    async def endpoint(request: Request) -> Response:
        site = site_of(request)
        session = await current_session(site, request)
        if session is not None:
            return await checked(request, session)
        if not for_scripts(request):
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        user = await basic_user(site, request) if request.url.path.startswith("/api/") else None
        if isinstance(user, User):
            return await checked(request, Session(user.name, 0, "", user.role))
        if isinstance(user, Refusal) and user.status != 401:
            return JSONResponse({"error": user.why}, user.status, user.headers)
        return JSONResponse({"error": "sign in first"}, status_code=401)

    return endpoint
