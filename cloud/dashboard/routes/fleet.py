"""Fleet: every gateway at a glance (page, live table, JSON), and one gateway's history and
charts (page, JSON)."""

from __future__ import annotations

from cloud.dashboard import views
from cloud.dashboard.twins import Ask, NotFound, Shown, View


def fleet(ask: Ask) -> Shown:
    return Shown(views.fleet(ask.site.dash.live, ask.registry()))


def gateway(ask: Ask) -> Shown:
    window_s = ask.window_s()
    view = views.gateway(
        ask.site.dash.live, ask.registry(), ask.param("edge_id"), window_s=window_s
    )
    if view is None:
        raise NotFound(
            "No gateway of that name has sent anything to this cloud.", "no such gateway"
        )
    return Shown(view)


FLEET = View(fleet, page="fleet.html", partial="_fleet_table.html", window=True)
GATEWAY = View(gateway, page="gateway.html", window=True)

routes = [
    *FLEET.routes(page="/fleet", partial="/partials/fleet", api="/api/fleet"),
    *GATEWAY.routes(page="/fleet/{edge_id}", api="/api/fleet/{edge_id}"),
]
