"""What every route of the dashboard shares: its services (:class:`Dashboard`), the state built
from them once per app (:class:`Site`: templates, sign-in throttle, password checker, cookie
policy), page rendering and the answers for pages that are not there.

Route modules (:mod:`cloud.dashboard.routes`) reach the site through :func:`site_of`.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from cloud.config import DashboardSettings
from cloud.dashboard.actions import Actions
from cloud.dashboard.auth import PasswordChecker, Session, Signer, Users
from cloud.dashboard.live import LiveState
from cloud.dashboard.store import DashboardStore
from cloud.dashboard.throttle import SignInThrottle
from cloud.registry import Registry
from shared import streams

HERE = Path(__file__).parent
FLASH_COOKIE = "fs_flash"
SCRIPT_PREFIXES = ("/api/", "/partials/")  # answered in JSON when refused, never redirected


@dataclass
class Dashboard:
    settings: DashboardSettings
    users: Users
    signer: Signer
    live: LiveState
    actions: Actions
    store: DashboardStore
    kafka_error: Callable[[], str | None] | None = None  # the live feed's last error, or None


def _is_num(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ts(value: object) -> str:
    if not _is_num(value) or not value:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _ago(value: object) -> str:
    if not _is_num(value) or not value:
        return "never"
    s = max(0.0, time.time() - value)
    return (
        f"{s:.0f} s ago"
        if s < 120
        else f"{s / 60:.0f} min ago"
        if s < 7200
        else f"{s / 3600:.1f} h ago"
    )


def _num(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_num(value) else "-"


def _pct(value: object, digits: int = 2) -> str:
    return f"{100 * value:.{digits}f}%" if _is_num(value) else "-"


def templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"])
    )
    env.filters.update(ts=_ts, ago=_ago, num=_num, pct=_pct)
    return env


class Site:
    """The dashboard as its routes see it: built once by ``create_app`` and kept in
    ``app.state.site``."""

    def __init__(self, dash: Dashboard) -> None:
        d = dash.settings
        self.dash = dash
        self.env = templates()
        self.secure_always = d.secure_cookies == "always"
        self.secure_never = d.secure_cookies == "never"
        self.throttle = SignInThrottle(
            max_failures=d.signin_max_failures,
            per_address=d.signin_max_failures_per_address,
            window_s=d.signin_window_s,
            lockout_s=d.signin_lockout_s,
        )
        self.checker = PasswordChecker(dash.users, d.hash_workers)

    def close(self) -> None:
        self.checker.close()

    def registry(self) -> Registry:
        """This thread's registry connection. SQLite blocks: call it from the threadpool
        (``run_in_threadpool``), never on the event loop."""
        return self.dash.actions.registry()

    def secure(self, request: Request) -> bool:
        return self.secure_always or (not self.secure_never and request.url.scheme == "https")

    def set_cookie(
        self, resp: Response, request: Request, name: str, value: str, max_age: int | None
    ) -> None:
        resp.set_cookie(
            name,
            value,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self.secure(request),
            path="/",
        )

    def page(self, request: Request, name: str, session: Session, **ctx: object) -> Response:
        """The template ``name`` for a signed-in user, with what every page shows (who,
        the flash message of the last action, the live feed's trouble)."""
        dash = self.dash
        flash = dash.signer.loads(request.cookies.get(FLASH_COOKIE), "flash")
        body = self.env.get_template(name).render(
            request=request,
            user=session.user,
            csrf=session.csrf,
            flash=flash,
            role=session.role,
            can_operate=session.operator,
            refresh_s=dash.settings.refresh_s,
            can_retrain=dash.actions.can_retrain and session.operator,
            kafka_error=dash.kafka_error() if dash.kafka_error else None,
            streams=[spec.name for spec in streams.all_streams()],
            path=request.url.path,
            **ctx,
        )
        resp = HTMLResponse(body)
        if flash:
            resp.delete_cookie(FLASH_COOKIE, path="/")
        return resp


def site_of(request: Request) -> Site:
    site = request.app.state.site
    assert isinstance(site, Site), "create_app puts the Site in app.state.site"
    return site


def for_scripts(request: Request) -> bool:
    """Whether the route answers scripts (JSON) rather than people (pages)."""
    return request.url.path.startswith(SCRIPT_PREFIXES)


def no_such(what: str) -> Response:
    return HTMLResponse(f"<h1>Not found</h1><p>{what}</p>", status_code=404)


def bad_query(request: Request, why: str) -> Response:
    """400, saying what is accepted: JSON for scripts, a page with a way back for people."""
    if for_scripts(request):
        return JSONResponse({"error": why}, status_code=400)
    back = html.escape(request.url.path)
    return HTMLResponse(
        f"<h1>Bad request</h1><p>{html.escape(why)}</p>"
        f'<p><a href="{back}">{back} with the defaults</a></p>',
        status_code=400,
    )
