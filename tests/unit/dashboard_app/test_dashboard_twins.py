"""Each view is computed once per request and shown from that data as its page, its live
partial (htmx) and its JSON twin: a registry with one model shows the same champion version
in all three, and one training run the same run."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from cloud.dashboard import views
from cloud.dashboard.app import Dashboard, create_app
from cloud.registry import Registry
from tests.unit.cloud_loop.test_model_registry import model_dir
from tests.unit.dashboard_app.test_dashboard_attacks import make_dashboard, sign_in


@pytest.fixture()
def dash(tmp_path: Path) -> Iterator[Dashboard]:
    with Registry(tmp_path / "registry") as reg:
        reg.register(model_dir(tmp_path / "src", "v1"), state="champion")
        run_id = reg.start_run("payments", "drift", "drift-monitor", "feature PSI 0.4")
        reg.finish_run(
            run_id,
            decision="awaiting approval",
            decision_reason="better on PR AUC",
            challenger="v1",
        )
    d = make_dashboard(tmp_path)
    yield d
    d.actions.close()
    d.store.close()


def counted(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Counts the calls of ``views.<name>`` (still doing its work)."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(views, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(views, name, spy)
    return calls


def test_one_model_shows_the_same_version_on_the_page_the_partial_and_the_json(
    dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counted(monkeypatch, "fleet")
    with TestClient(create_app(dash)) as client:
        sign_in(client, "vera")
        calls.clear()
        page, partial, api = (client.get(p) for p in ("/fleet", "/partials/fleet", "/api/fleet"))
    assert len(calls) == 3, "one computation per request, whichever representation"
    assert [r.status_code for r in (page, partial, api)] == [200, 200, 200]
    assert api.json()["champions"] == {"payments": "v1"}
    card = '<span class="big mono">v1</span>payments champion'
    assert card in page.text and card in partial.text
    assert "<html" in page.text and "<html" not in partial.text  # the partial is the table only
    assert "text/html" in partial.headers["content-type"]


def test_one_run_is_the_same_run_on_the_page_the_partial_and_the_json(
    dash: Dashboard, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = counted(monkeypatch, "runs")
    with TestClient(create_app(dash)) as client:
        sign_in(client, "alice")
        calls.clear()
        page, partial, api = (client.get(p) for p in ("/runs", "/partials/runs", "/api/runs"))
    assert len(calls) == 3
    [run] = api.json()["runs"]
    assert (run["decision"], run["challenger"]) == ("awaiting approval", "v1")
    for html in (page.text, partial.text):
        rows = re.findall(r'<tr data-run="(\d+)" data-status="(\w+)">', html)
        assert rows == [(str(run["id"]), run["status"])]
        assert run["decision_reason"] in html and f'data-approve="{run["id"]}"' in html
