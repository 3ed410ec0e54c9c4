"""One view, three representations: the page, its live partial (htmx) and its JSON twin under
``/api``, all rendered from the same data, computed once per request.

A route module writes a view as one function from an :class:`Ask` to a :class:`Shown` (sync:
it reads the registry, SQLite, so it runs in Starlette's threadpool, never on the event loop),
wraps it in a :class:`View` naming its templates, and lists ``View.routes(page=..., partial=...,
api=...)``. :func:`represent` picks what the route asks for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud.dashboard import views
from cloud.dashboard.auth import Session
from cloud.dashboard.gate import Endpoint, signed_in
from cloud.dashboard.site import Site, no_such, site_of
from cloud.registry import Registry

Form = Literal["page", "partial", "json"]
Data = dict[str, Any]  # JSON-ready, as cloud.dashboard.views builds it


class NotFound(Exception):
    """Nothing to show: what the page says, and what the JSON twin says."""

    def __init__(self, page: str, api: str | None = None) -> None:
        super().__init__(page)
        self.page = page
        self.api = api if api is not None else page

    def response(self, form: Form) -> Response:
        return JSONResponse({"error": self.api}, 404) if form == "json" else no_such(self.page)


@dataclass(frozen=True)
class Ask:
    """What a view is computed from: the site, the request and the representation asked for."""

    site: Site
    request: Request
    form: Form

    def param(self, name: str) -> str:
        return str(self.request.path_params[name])

    def registry(self) -> Registry:
        return self.site.registry()

    def window_s(self) -> float | None:
        """The charts' ``?window=`` (:func:`views.chart_window`; :class:`BadQuery` when
        malformed). Partials draw no charts: theirs is always the default."""
        if self.form == "partial":
            return None
        return views.chart_window(self.request.query_params.get("window"), self.site.dash.live)


@dataclass(frozen=True)
class Shown:
    """A view's data: the JSON twin as it is, ``view`` in the templates; ``extra`` is more
    for the templates, taken from the same data."""

    data: Data
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    """A view function and the templates of its page and partial. ``window``: the page has a
    chart window selector."""

    compute: Callable[[Ask], Shown]
    page: str | None = None
    partial: str | None = None
    window: bool = False

    def routes(
        self, *, page: str | None = None, partial: str | None = None, api: str | None = None
    ) -> list[Route]:
        if (page and not self.page) or (partial and not self.partial):
            raise ValueError(f"{self.compute.__name__}: a page or partial route needs its template")
        paths: list[tuple[str | None, Form]] = [(page, "page"), (partial, "partial"), (api, "json")]
        return [Route(path, self.endpoint(form)) for path, form in paths if path is not None]

    def endpoint(self, form: Form) -> Endpoint:
        async def serve(request: Request, session: Session) -> Response:
            ask = Ask(site_of(request), request, form)
            try:
                shown = await run_in_threadpool(self.compute, ask)
            except NotFound as exc:
                return exc.response(form)
            return represent(self, ask, shown, session)

        return signed_in(serve)


def represent(view: View, ask: Ask, shown: Shown, session: Session) -> Response:
    """The representation the route asks for, from data computed once."""
    if ask.form == "json":
        return JSONResponse(shown.data)
    template = view.page if ask.form == "page" else view.partial
    assert template is not None, "View.routes makes no page or partial route without one"
    ctx = dict(shown.extra)
    if view.window and ask.form == "page":
        ctx.update(window_ctx(ask))
    return ask.site.page(ask.request, template, session, view=shown.data, **ctx)


def window_ctx(ask: Ask) -> dict[str, object]:
    """What a page with live charts needs: the window its charts ask the API for, and the
    choices of its window selector."""
    live = ask.site.dash.live
    return {
        "window": ask.request.query_params.get("window", views.FIT),
        "windows": views.window_choices(live, ask.window_s()),
        "bucket_s": live.bucket_s,
    }
