"""Sign-in and sign-out, and ``/``. The sign-in form is protected by a short-lived signed
token in its own cookie (double submit); a new session replaces any the browser had."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from cloud.dashboard.auth import CSRF_FIELD, LOGIN_CSRF_COOKIE, SESSION_COOKIE, csrf_ok
from cloud.dashboard.gate import authenticate, current_session
from cloud.dashboard.site import Site, site_of
from cloud.dashboard.store import User


async def home(request: Request) -> Response:
    return RedirectResponse("/fleet", status_code=303)


def login_form(
    site: Site,
    request: Request,
    error: str = "",
    status: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    token, cookie = site.dash.signer.login_token()
    nxt = safe_next(request.query_params.get("next", "/fleet"))
    body = site.env.get_template("login.html").render(
        csrf=token, error=error, next=nxt, user=None, path="/login"
    )
    resp = HTMLResponse(body, status_code=status, headers=headers)
    site.set_cookie(resp, request, LOGIN_CSRF_COOKIE, cookie, 3600)
    return resp


async def login(request: Request) -> Response:
    site = site_of(request)
    if request.method == "GET":
        return login_form(site, request)
    form = await request.form()
    if not site.dash.signer.check_login_token(
        request.cookies.get(LOGIN_CSRF_COOKIE), str(form.get(CSRF_FIELD, ""))
    ):
        return login_form(site, request, "The form expired; please sign in again.", 403)
    name, password = str(form.get("username", "")), str(form.get("password", ""))
    user = await authenticate(site, request, name, password)
    if not isinstance(user, User):
        return login_form(site, request, user.why, user.status, user.headers)
    token = await run_in_threadpool(new_session, site, request.cookies.get(SESSION_COOKIE), user)
    resp = RedirectResponse(safe_next(str(form.get("next", "/fleet"))), status_code=303)
    site.set_cookie(resp, request, SESSION_COOKIE, token, site.dash.settings.session_max_age_s)
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return resp


def new_session(site: Site, old_token: str | None, user: User) -> str:
    """A new session's token; the browser's old session ends (no fixation). Blocking."""
    site.dash.store.end_session(old_token)
    _row, token = site.dash.store.new_session(user, site.dash.settings.session_max_age_s)
    return token


async def logout(request: Request) -> Response:
    site = site_of(request)
    form = await request.form()
    if not csrf_ok(await current_session(site, request), str(form.get(CSRF_FIELD, ""))):
        return HTMLResponse("CSRF token missing or wrong", status_code=403)
    await run_in_threadpool(site.dash.store.end_session, request.cookies.get(SESSION_COOKIE))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


def safe_next(target: str) -> str:
    """Only paths on this site: no scheme, no host, no ``//evil``."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/fleet"
    return target


routes = [
    Route("/", home),
    Route("/login", login, methods=["GET", "POST"]),
    Route("/logout", logout, methods=["POST"]),
]
