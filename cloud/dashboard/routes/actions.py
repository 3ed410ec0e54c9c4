"""Actions: retrain, promote, roll back, approve, reject. People get a confirmation page
(GET) and send the form (POST); scripts POST JSON to ``/api/actions/<kind>``. Only operators,
and only with the session's CSRF token (or HTTP Basic with a JSON body). Each change is only
recorded here, as a request the signer carries out."""

from __future__ import annotations

import html
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from cloud.dashboard.actions import Actions, Outcome
from cloud.dashboard.auth import CSRF_FIELD, CSRF_HEADER, Session, csrf_ok
from cloud.dashboard.gate import signed_in
from cloud.dashboard.site import FLASH_COOKIE, no_such, site_of
from shared import streams

ACTIONS = ("retrain", "promote", "rollback", "approve", "reject")
VIEWER_REFUSED = (
    "your role is viewer: only operators may promote, roll back, retrain, "
    "approve or reject (an operator can change it with `fleetsentry cloud "
    "dashboard user role`)"
)


@signed_in
async def action(request: Request, s: Session) -> Response:
    """The confirmation page (GET), then the change (POST), back to where it shows."""
    site, kind = site_of(request), request.path_params["kind"]
    if kind not in ACTIONS:
        return no_such("No such action.")
    if not s.operator:
        return HTMLResponse(
            f"<h1>Forbidden</h1><p>{html.escape(VIEWER_REFUSED)}</p>"
            f'<p><a href="/registry">Back to the registry</a></p>',
            status_code=403,
        )
    if request.method == "GET":
        q = request.query_params
        return site.page(
            request,
            "confirm.html",
            s,
            kind=kind,
            stream=q.get("stream", ""),
            version=q.get("version", ""),
            to=q.get("to", ""),
            run=q.get("run", ""),
        )
    form = await request.form()
    if not csrf_ok(s, str(form.get(CSRF_FIELD, ""))):
        return HTMLResponse("CSRF token missing or wrong", status_code=403)
    data = {k: str(v) for k, v in form.items() if k != CSRF_FIELD}
    outcome = await run_in_threadpool(record, site.dash.actions, kind, data, s)
    where = (
        "/runs"
        if kind in ("retrain", "approve", "reject")
        else (f"/registry/models/{quote(outcome.version)}" if outcome.version else "/registry")
    )
    resp = RedirectResponse(where, status_code=303)
    site.set_cookie(
        resp,
        request,
        FLASH_COOKIE,
        site.dash.signer.dumps({"m": outcome.message, "ok": outcome.ok}, "flash"),
        60,
    )
    return resp


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
    data = {str(k): str(v) for k, v in body.items()}
    outcome = await run_in_threadpool(record, site_of(request).dash.actions, kind, data, s)
    return JSONResponse(
        {"ok": outcome.ok, "message": outcome.message, "version": outcome.version},
        200 if outcome.ok else 409,
    )


def record(actions: Actions, kind: str, data: dict[str, str], s: Session) -> Outcome:
    """Record the request for the signer (which holds the key and carries it out).
    Blocking (the registry): run it in the threadpool."""
    reason = data.get("reason", "").strip()[:500] or f"{kind} from the dashboard"
    if kind == "promote":
        return actions.promote(data.get("version", ""), s.user, s.role, reason)
    if kind in ("approve", "reject"):
        run = data.get("run", "")
        if not run.isdigit():
            return Outcome(False, f"no training run {run!r}")
        decide = actions.approve if kind == "approve" else actions.reject
        return decide(int(run), s.user, s.role, reason)
    stream = data.get("stream", "")
    if streams.find(stream) is None:
        return Outcome(False, f"unknown stream {stream!r}")
    if kind == "rollback":
        return actions.rollback(stream, s.user, s.role, reason, data.get("to") or None)
    return actions.retrain(stream, s.user, s.role, reason)


routes = [
    Route("/actions/{kind}", action, methods=["GET", "POST"]),
    Route("/api/actions/{kind}", api_action, methods=["POST"]),
]
