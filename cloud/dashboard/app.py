"""The dashboard's ASGI application: pages, live partials, the JSON API, sign-in and actions.

Every page and ``/api`` read needs a signed-in user; every change needs an operator (viewers
get 403) and the session's CSRF token (forms: hidden field; scripts: ``X-CSRF-Token``, or HTTP
Basic with a JSON body, which no cross-site form can send), and is only recorded here, as a
request the signer (the process holding the signing key) carries out. Sessions are rows of the
dashboard's store, ended by sign-out or by any change to their user. Failed sign-ins lock a
name or an address for a while (429 with Retry-After). Cookies are HttpOnly and
SameSite=Strict, and Secure over TLS, where HSTS is sent too. The content security policy
allows scripts and styles from this server only.

The routes live in :mod:`cloud.dashboard.routes`, one module per part of the dashboard; each
view is computed once and shown as its page, its partial or its JSON twin
(:mod:`cloud.dashboard.twins`). Registry and store reads run in Starlette's threadpool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.dashboard.routes import actions, auth, detection, fleet, models, training
from cloud.dashboard.site import HERE, Dashboard, Site

__all__ = ["Dashboard", "SecurityHeaders", "create_app"]

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"


def create_app(dash: Dashboard) -> Starlette:
    site = Site(dash)
    routes: list[BaseRoute] = [
        *auth.routes,
        *fleet.routes,
        *detection.routes,
        *training.routes,
        *models.routes,
        *actions.routes,
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        site.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders, hsts_always=site.secure_always)],
    )
    app.state.site = site
    return app


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
