"""Registry: every model version per stream with its lineage and who did what (page, JSON),
and one version (page, JSON)."""

from __future__ import annotations

from cloud.dashboard import views
from cloud.dashboard.twins import Ask, NotFound, Shown, View


def registry(ask: Ask) -> Shown:
    return Shown(views.registry_view(ask.registry()))


def model(ask: Ask) -> Shown:
    view = views.model(ask.registry(), ask.param("version"))
    if view is None:
        raise NotFound("No such model version in the registry.", "no such version")
    return Shown(view)


REGISTRY = View(registry, page="registry.html")
MODEL = View(model, page="model.html")

routes = [
    *REGISTRY.routes(page="/registry", api="/api/registry"),
    *MODEL.routes(page="/registry/models/{version}", api="/api/registry/{version}"),
]
