"""Detection: rates, score distributions and the latest alerts (page, live alerts table,
JSON)."""

from __future__ import annotations

from cloud.dashboard import views
from cloud.dashboard.twins import Ask, Shown, View


def detection(ask: Ask) -> Shown:
    return Shown(views.detection(ask.site.dash.live, ask.registry(), window_s=ask.window_s()))


DETECTION = View(detection, page="detection.html", partial="_alerts_table.html", window=True)

routes = DETECTION.routes(page="/detection", partial="/partials/alerts", api="/api/detection")
