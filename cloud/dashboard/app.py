"""The dashboard's ASGI application: pages, live partials, the JSON API, sign-in and actions.

Every page and ``/api`` read needs a signed-in user; every change needs an operator (viewers
get 403) and is only recorded here, as a request the signer (the process holding the signing
key) carries out and the session's CSRF token (forms: hidden field; scripts: ``X-CSRF-Token``, or HTTP
Basic with a JSON body, which no cross-site form can send). Sessions are rows of the
dashboard's store, ended by sign-out or by any change to their user. Failed sign-ins lock a
name or an address for a while (429 with Retry-After). Cookies are HttpOnly and
SameSite=Strict, and Secure over TLS, where HSTS is sent too. The content security policy
allows scripts and styles from this server only.
"""

from __future__ import annotations

import base64
import binascii
import html
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.config import DashboardSettings
from cloud.dashboard import views
from cloud.dashboard.actions import Actions, Outcome
from cloud.dashboard.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    PasswordChecker,
    Session,
    Signer,
    Users,
    csrf_ok,
)
from cloud.dashboard.errors import BadQuery, SignInBusy
from cloud.dashboard.live import LiveState
from cloud.dashboard.store import DashboardStore, User
from cloud.dashboard.throttle import SignInThrottle
from cloud.registry import RegistryError

HERE = Path(__file__).parent
FLASH_COOKIE = "fs_flash"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
STREAMS = ("telemetry", "payments")
HSTS = "max-age=31536000; includeSubDomains"
VIEWER_REFUSED = ("your role is viewer: only operators may promote, roll back, retrain, "
                  "approve or reject (an operator can change it with `fleetsentry cloud "
                  "dashboard user role`)")
ACTIONS = ("retrain", "promote", "rollback", "approve", "reject")


@dataclass(frozen=True)
class Refusal:
    """A sign-in turned down: the status to answer, why, and when to try again."""

    status: int
    why: str
    retry_s: int | None = None

    @property
    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_s)} if self.retry_s else None


@dataclass
class Dashboard:
    settings: DashboardSettings
    users: Users
    signer: Signer
    live: LiveState
    actions: Actions
    store: DashboardStore
    kafka_error: Any = None  # callable returning the live feed's last error, or None


def _ts(value: float | None) -> str:
    return "-" if not _is_num(value) or not value else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _ago(value: float | None) -> str:
    if not _is_num(value) or not value:
        return "never"
    s = max(0.0, time.time() - value)
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 \
        else f"{s / 3600:.1f} h ago"


def _is_num(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_num(value) else "-"


def _pct(value: Any, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%" if _is_num(value) else "-"


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters.update(ts=_ts, ago=_ago, num=_num, pct=_pct)
    return env


def create_app(dash: Dashboard) -> Starlette:
    env = templates()
    d = dash.settings
    secure_always = d.secure_cookies == "always"
    secure_never = d.secure_cookies == "never"
    throttle = SignInThrottle(max_failures=d.signin_max_failures,
                              per_address=d.signin_max_failures_per_address,
                              window_s=d.signin_window_s, lockout_s=d.signin_lockout_s)
    checker = PasswordChecker(dash.users, d.hash_workers)

    def secure(request: Request) -> bool:
        return secure_always or (not secure_never and request.url.scheme == "https")

    def set_cookie(resp: Response, request: Request, name: str, value: str,
                   max_age: int | None) -> None:
        resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict",
                        secure=secure(request), path="/")

    def session_of(request: Request) -> Session | None:
        row = dash.store.session(request.cookies.get(SESSION_COOKIE))
        if row is None:
            return None
        user = dash.users.get(row.user)
        if user is None or user.stamp != row.stamp:  # removed, or password or role changed
            dash.store.end_session(request.cookies.get(SESSION_COOKIE))
            return None
        return Session(user.name, row.issued, row.csrf, user.role)

    async def authenticate(request: Request, name: str, password: str) -> User | Refusal:
        """The user, or why not; a locked name or address is refused before any hashing."""
        address = request.client.host if request.client else "unknown"
        wait = throttle.retry_after(name, address)
        if wait is not None:
            return Refusal(429, f"Too many failed sign-ins: this name or address is locked; "
                                f"try again in {wait} s.", wait)
        throttle.attempt(name, address)
        try:
            user = await checker.check(name, password)
        except SignInBusy as exc:
            return Refusal(503, str(exc), 1)
        if user is None:
            return Refusal(401, "Unknown user or wrong password.")
        throttle.succeeded(name, address)
        return user

    async def basic_user(request: Request) -> User | Refusal | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return await authenticate(request, name, password)

    def page(request: Request, name: str, session: Session, **ctx: Any) -> Response:
        flash = dash.signer.loads(request.cookies.get(FLASH_COOKIE), "flash")
        html = env.get_template(name).render(
            request=request, user=session.user, csrf=session.csrf, flash=flash,
            role=session.role, can_operate=session.operator,
            refresh_s=dash.settings.refresh_s,
            can_retrain=dash.actions.can_retrain and session.operator,
            kafka_error=dash.kafka_error() if dash.kafka_error else None, streams=STREAMS,
            path=request.url.path, **ctx)
        resp = HTMLResponse(html)
        if flash:
            resp.delete_cookie(FLASH_COOKIE, path="/")
        return resp

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)

    def signed_in(fn: Any) -> Any:
        async def wrapper(request: Request) -> Response:
            session = session_of(request)
            if session is None:
                if request.url.path.startswith(("/api/", "/partials/")):
                    user = await basic_user(request) if request.url.path.startswith("/api/") \
                        else None
                    if isinstance(user, User):
                        return await checked(request, Session(user.name, 0, "", user.role))
                    if isinstance(user, Refusal) and user.status != 401:
                        return JSONResponse({"error": user.why}, user.status, user.headers)
                    return JSONResponse({"error": "sign in first"}, status_code=401)
                return to_login(request)
            return await checked(request, session)

        async def checked(request: Request, session: Session) -> Response:
            try:
                return await fn(request, session)
            except BadQuery as exc:
                return bad_query(request, str(exc))
        return wrapper

    def no_such(what: str) -> Response:
        return HTMLResponse(f"<h1>Not found</h1><p>{what}</p>", status_code=404)

    def bad_query(request: Request, why: str) -> Response:
        """400, saying what is accepted: JSON for scripts, a page with a way back for people."""
        if request.url.path.startswith(("/api/", "/partials/")):
            return JSONResponse({"error": why}, status_code=400)
        back = html.escape(request.url.path)
        return HTMLResponse(f"<h1>Bad request</h1><p>{html.escape(why)}</p>"
                            f'<p><a href="{back}">{back} with the defaults</a></p>',
                            status_code=400)

    def chart_window(request: Request) -> float | None:
        return views.chart_window(request.query_params.get("window"), dash.live)

    def window_ctx(request: Request, window_s: float | None) -> dict[str, Any]:
        """What a page with live charts needs: the window its charts ask the API for, and
        the choices of its window selector."""
        return {"window": request.query_params.get("window", views.FIT),
                "windows": views.window_choices(dash.live, window_s),
                "bucket_s": dash.live.bucket_s}

    # --- sign-in -----------------------------------------------------------------------------

    async def login_form(request: Request, error: str = "", status: int = 200,
                         headers: dict[str, str] | None = None) -> Response:
        token, cookie = dash.signer.login_token()
        nxt = _safe_next(request.query_params.get("next", "/fleet"))
        html = env.get_template("login.html").render(csrf=token, error=error, next=nxt,
                                                     user=None, path="/login")
        resp = HTMLResponse(html, status_code=status, headers=headers)
        set_cookie(resp, request, LOGIN_CSRF_COOKIE, cookie, 3600)
        return resp

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return await login_form(request)
        form = await request.form()
        if not dash.signer.check_login_token(request.cookies.get(LOGIN_CSRF_COOKIE),
                                             str(form.get(CSRF_FIELD, ""))):
            return await login_form(request, "The form expired; please sign in again.", 403)
        name, password = str(form.get("username", "")), str(form.get("password", ""))
        user = await authenticate(request, name, password)
        if not isinstance(user, User):
            return await login_form(request, user.why, user.status, user.headers)
        dash.store.end_session(request.cookies.get(SESSION_COOKIE))  # no fixation
        _row, token = dash.store.new_session(user, dash.settings.session_max_age_s)
        resp = RedirectResponse(_safe_next(str(form.get("next", "/fleet"))), status_code=303)
        set_cookie(resp, request, SESSION_COOKIE, token, dash.settings.session_max_age_s)
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
        return resp

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(session_of(request), str(form.get(CSRF_FIELD, ""))):
            return HTMLResponse("CSRF token missing or wrong", status_code=403)
        dash.store.end_session(request.cookies.get(SESSION_COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # --- pages -------------------------------------------------------------------------------

    async def home(request: Request) -> Response:
        return RedirectResponse("/fleet", status_code=303)

    @signed_in
    async def fleet_page(request: Request, s: Session) -> Response:
        window_s = chart_window(request)  # of the fleet chart, drawn from /api/detection
        return page(request, "fleet.html", s, view=views.fleet(dash.live, reg()),
                    **window_ctx(request, window_s))

    @signed_in
    async def fleet_partial(request: Request, s: Session) -> Response:
        return page(request, "_fleet_table.html", s, view=views.fleet(dash.live, reg()))

    @signed_in
    async def gateway_page(request: Request, s: Session) -> Response:
        window_s = chart_window(request)
        view = views.gateway(dash.live, reg(), request.path_params["edge_id"],
                             window_s=window_s)
        if view is None:
            return no_such("No gateway of that name has sent anything to this cloud.")
        return page(request, "gateway.html", s, view=view, **window_ctx(request, window_s))

    @signed_in
    async def detection_page(request: Request, s: Session) -> Response:
        window_s = chart_window(request)
        return page(request, "detection.html", s,
                    view=views.detection(dash.live, reg(), window_s=window_s),
                    **window_ctx(request, window_s))

    @signed_in
    async def alerts_partial(request: Request, s: Session) -> Response:
        return page(request, "_alerts_table.html", s, view=views.detection(dash.live, reg()))

    @signed_in
    async def runs_page(request: Request, s: Session) -> Response:
        return page(request, "runs.html", s, view=views.runs(reg()),
                    requests=dash.actions.recent())

    @signed_in
    async def runs_partial(request: Request, s: Session) -> Response:
        return page(request, "_runs_table.html", s, view=views.runs(reg()),
                    requests=dash.actions.recent())

    @signed_in
    async def run_page(request: Request, s: Session) -> Response:
        try:
            view = views.run(reg(), int(request.path_params["run_id"]))
        except RegistryError as exc:
            return no_such(str(exc))
        return page(request, "run.html", s, view=view)

    @signed_in
    async def registry_page(request: Request, s: Session) -> Response:
        return page(request, "registry.html", s, view=views.registry_view(reg()))

    @signed_in
    async def model_page(request: Request, s: Session) -> Response:
        view = views.model(reg(), request.path_params["version"])
        if view is None:
            return no_such("No such model version in the registry.")
        return page(request, "model.html", s, view=view)

    # --- actions: a confirmation page (GET), then the change (POST) ---------------------------

    @signed_in
    async def action(request: Request, s: Session) -> Response:
        kind = request.path_params["kind"]
        if kind not in ACTIONS:
            return no_such("No such action.")
        if not s.operator:
            return HTMLResponse(f"<h1>Forbidden</h1><p>{html.escape(VIEWER_REFUSED)}</p>"
                                f'<p><a href="/registry">Back to the registry</a></p>',
                                status_code=403)
        if request.method == "GET":
            q = request.query_params
            return page(request, "confirm.html", s, kind=kind, stream=q.get("stream", ""),
                        version=q.get("version", ""), to=q.get("to", ""),
                        run=q.get("run", ""))
        form = await request.form()
        if not csrf_ok(s, str(form.get(CSRF_FIELD, ""))):
            return HTMLResponse("CSRF token missing or wrong", status_code=403)
        data = {k: str(v) for k, v in form.items() if k != CSRF_FIELD}
        outcome = await do_action(kind, data, s)
        where = "/runs" if kind in ("retrain", "approve", "reject") else (
            f"/registry/models/{quote(outcome.version)}" if outcome.version else "/registry")
        resp = RedirectResponse(where, status_code=303)
        set_cookie(resp, request, FLASH_COOKIE,
                   dash.signer.dumps({"m": outcome.message, "ok": outcome.ok}, "flash"), 60)
        return resp

    async def do_action(kind: str, data: dict[str, str], s: Session) -> Outcome:
        """Record the request for the signer (which holds the key and carries it out)."""
        reason = data.get("reason", "").strip()[:500] or f"{kind} from the dashboard"
        actor, role, a = s.user, s.role, dash.actions
        if kind == "promote":
            return await run_in_threadpool(lambda: a.promote(data.get("version", ""), actor,
                                                             role, reason))
        if kind in ("approve", "reject"):
            run = data.get("run", "")
            if not run.isdigit():
                return Outcome(False, f"no training run {run!r}")
            decide = a.approve if kind == "approve" else a.reject
            return await run_in_threadpool(lambda: decide(int(run), actor, role, reason))
        stream = data.get("stream", "")
        if stream not in STREAMS:
            return Outcome(False, f"unknown stream {stream!r}")
        if kind == "rollback":
            return await run_in_threadpool(lambda: a.rollback(stream, actor, role, reason,
                                                              data.get("to") or None))
        return await run_in_threadpool(lambda: a.retrain(stream, actor, role, reason))

    # --- JSON API ----------------------------------------------------------------------------

    def reg() -> Any:
        return dash.actions.registry()

    @signed_in
    async def api_fleet(request: Request, s: Session) -> Response:
        return JSONResponse(views.fleet(dash.live, reg()))

    @signed_in
    async def api_gateway(request: Request, s: Session) -> Response:
        view = views.gateway(dash.live, reg(), request.path_params["edge_id"],
                             window_s=chart_window(request))
        return JSONResponse(view) if view else JSONResponse({"error": "no such gateway"}, 404)

    @signed_in
    async def api_detection(request: Request, s: Session) -> Response:
        return JSONResponse(views.detection(dash.live, reg(), window_s=chart_window(request)))

    @signed_in
    async def api_runs(request: Request, s: Session) -> Response:
        return JSONResponse({**views.runs(reg()), "pending": dash.actions.pending,
                             "requests": dash.actions.recent()})

    @signed_in
    async def api_run(request: Request, s: Session) -> Response:
        try:
            return JSONResponse(views.run(reg(), int(request.path_params["run_id"])))
        except (RegistryError, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 404)

    @signed_in
    async def api_registry(request: Request, s: Session) -> Response:
        return JSONResponse(views.registry_view(reg()))

    @signed_in
    async def api_model(request: Request, s: Session) -> Response:
        view = views.model(reg(), request.path_params["version"])
        return JSONResponse(view) if view else JSONResponse({"error": "no such version"}, 404)

    @signed_in
    async def api_action(request: Request, s: Session) -> Response:
        kind = request.path_params["kind"]
        if kind not in ACTIONS:
            return JSONResponse({"error": "no such action"}, 404)
        if not s.operator:
            return JSONResponse({"error": VIEWER_REFUSED}, 403)
        by_session = s.csrf != ""
        if by_session and not csrf_ok(s, request.headers.get(CSRF_HEADER)):
            return JSONResponse({"error": "CSRF token missing or wrong"}, 403)
        if not request.headers.get("content-type", "").startswith("application/json"):
            return JSONResponse({"error": "send a JSON body"}, 415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "send a JSON object"}, 400)
        outcome = await do_action(kind, {k: str(v) for k, v in body.items()}, s)
        return JSONResponse({"ok": outcome.ok, "message": outcome.message,
                             "version": outcome.version}, 200 if outcome.ok else 409)

    routes = [
        Route("/", home), Route("/login", login, methods=["GET", "POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/fleet", fleet_page), Route("/fleet/{edge_id}", gateway_page),
        Route("/detection", detection_page), Route("/runs", runs_page),
        Route("/runs/{run_id:int}", run_page), Route("/registry", registry_page),
        Route("/registry/models/{version}", model_page),
        Route("/actions/{kind}", action, methods=["GET", "POST"]),
        Route("/partials/fleet", fleet_partial), Route("/partials/alerts", alerts_partial),
        Route("/partials/runs", runs_partial),
        Route("/api/fleet", api_fleet), Route("/api/fleet/{edge_id}", api_gateway),
        Route("/api/detection", api_detection), Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run), Route("/api/registry", api_registry),
        Route("/api/registry/{version}", api_model),
        Route("/api/actions/{kind}", api_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        checker.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(SecurityHeaders, hsts_always=secure_always)])


class SecurityHeaders:
    """CSP and friends on every response; nothing but static files may be cached. HSTS over
    TLS (or behind a TLS proxy, ``secure_cookies = "always"``): browsers ignore it over HTTP."""

    def __init__(self, app: ASGIApp, hsts_always: bool = False) -> None:
        self.app = app
        self.hsts_always = hsts_always

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")
        tls = self.hsts_always or scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CSP
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
                headers["X-Frame-Options"] = "DENY"
                if not static:
                    headers["Cache-Control"] = "no-store"
                if tls:
                    headers["Strict-Transport-Security"] = HSTS
            await send(message)

        await self.app(scope, receive, with_headers)


def _safe_next(target: str) -> str:
    """Only paths on this site: no scheme, no host, no ``//evil``."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/fleet"
    return target
