"""Training runs: the list with the trainer service's state and the operators' requests
(page, live table, JSON), and one run's metrics and curves (page, JSON)."""

from __future__ import annotations

from cloud.dashboard import views
from cloud.dashboard.twins import Ask, NotFound, Shown, View
from cloud.registry import RegistryError


def runs(ask: Ask) -> Shown:
    actions = ask.site.dash.actions
    data = {**views.runs(ask.registry()), "pending": actions.pending, "requests": actions.recent()}
    return Shown(data, {"requests": data["requests"]})


def run(ask: Ask) -> Shown:
    try:
        return Shown(views.run(ask.registry(), int(ask.param("run_id"))))
    except (RegistryError, ValueError) as exc:
        raise NotFound(str(exc)) from None


RUNS = View(runs, page="runs.html", partial="_runs_table.html")
RUN = View(run, page="run.html")

routes = [
    *RUNS.routes(page="/runs", partial="/partials/runs", api="/api/runs"),
    *RUN.routes(page="/runs/{run_id:int}", api="/api/runs/{run_id}"),
]
