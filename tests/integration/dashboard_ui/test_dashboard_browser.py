"""The dashboard in headless Chromium (Debian's chromium + chromedriver, driven by Selenium),
against `fleetsentry cloud run` as a process: its printed demo credentials, every page with
real data, live figures that refresh by themselves, a retrain started from the page that
appears and finishes, and a promotion that makes a model champion. Screenshots of each page
land in artifacts/screenshots/.

The replicated topics (what MirrorMaker 2 lands in the cloud as ``<gateway>.<topic>``) are
written to the session's single-node Kafka, which stands in for the cloud cluster: the
dashboard and its trainer only read topics, and the records are the real edge scorer's.
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from cloud.registry import Registry
from shared.infra.ports import free_ports
from tests.browser_support import (
    SHOTS,
    CloudRun,
    charts_drawn,
    chromium,
    cloud_run,
    cloud_toml,
    promote,
    shot,
    sign_in,
    wait,
)
from tests.dashboard_support import World, copy_registry, world
from tests.support import produce_all

if TYPE_CHECKING:  # selenium is imported where the test runs
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.integration


def _publish(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> None:
    by_topic: dict[str, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for topic, key, value in records:
        assert value is not None
        by_topic[topic].append((key, value))
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = admin.list_topics(timeout=15).topics
    new = [NewTopic(t, 1, 1) for t in by_topic if t not in existing]
    for fut in admin.create_topics(new).values() if new else []:
        fut.result(30)
    for topic, rows in by_topic.items():
        produce_all(bootstrap, topic, rows)


@pytest.fixture(scope="module")
def server(
    plain_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[CloudRun, World, Path]]:
    w = world()
    _publish(plain_bootstrap, w.records)
    home = tmp_path_factory.mktemp("cloud")
    registry = copy_registry(w, home / "registry")
    config = home / "cloud.toml"
    config.write_text(cloud_toml(plain_bootstrap, registry, free_ports(1)[0], home))
    with cloud_run(
        config,
        w.key_file,
        "--no-publish",
        "--epochs",
        "2",
        "--min-records",
        "300",
        "--schedule",
        "1e12",
        "--drift-check",
        "1e12",
    ) as run:
        yield run, w, registry


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    with chromium(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def test_sign_in_every_page_retrain_and_promote(
    server: tuple[CloudRun, World, Path], browser: WebDriver, plain_bootstrap: str
) -> None:
    from selenium.webdriver.common.by import By

    run, w, _registry = server
    url, user = run.url, run.user
    d = browser
    find = d.find_element

    sign_in(d, run, "/runs", shot_as="0-sign-in")

    # Fleet: both gateways online with the champions, live figures that update by themselves.
    d.get(url + "/fleet")
    wait("both gateways", lambda: len(d.find_elements(By.CSS_SELECTOR, "tr[data-gateway]")) == 2)
    assert find(By.ID, "gateways-online").text.startswith("2 / 2")
    wait("the fleet chart", lambda: charts_drawn(d))
    shot(d, "1-fleet")
    before = find(By.ID, "fleet-table").text
    extra = [
        (t.replace("gw-north", "gw-east"), k, v)
        for t, k, v in w.records
        if t == "gw-north.scores.payments"
    ][:200]
    _publish(plain_bootstrap, extra)
    wait(
        "a new gateway to appear without a reload",
        lambda: "gw-east" in find(By.ID, "fleet-table").text,
        timeout_s=120,
    )
    assert before != find(By.ID, "fleet-table").text

    d.get(url + "/fleet/gw-north")
    assert "active" in find(By.ID, "status-events").text
    wait("the gateway chart", lambda: charts_drawn(d))
    shot(d, "2-gateway")

    d.get(url + "/detection")
    wait("detection charts", lambda: charts_drawn(d))
    alerts = find(By.ID, "alerts-table").text
    assert "No alerts" not in alerts
    page = d.page_source
    assert not [v for v in w.pii if v in page], "PII on the detection page"
    shot(d, "3-detection")

    # The drift run (a seed that failed its int8 check is a failed run before it).
    with Registry(w.registry_root) as reg:
        drift_id = next(r.id for r in reg.runs() if r.trigger == "drift")
    d.get(url + f"/runs/{drift_id}")
    wait("run charts", lambda: charts_drawn(d))
    assert find(By.ID, "run-decision").text in ("promoted", "kept")
    assert find(By.ID, "confusion-challenger").text
    shot(d, "5-run")

    d.get(url + "/registry")
    shot(d, "6-registry")

    # Retrain from the page: confirm, then watch the run appear and finish (no reload).
    d.get(url + "/runs")
    runs_before = len(d.find_elements(By.CSS_SELECTOR, "tr[data-run]"))
    find(By.ID, "retrain-payments").click()
    assert "Train a new" in find(By.ID, "confirm-question").text
    find(By.ID, "reason").send_keys("browser test")
    find(By.ID, "confirm").click()
    wait("the runs page", lambda: d.current_url.endswith("/runs"))
    assert "retrain of payments requested" in find(By.ID, "flash").text
    newest = f"tr[data-run='{runs_before + 1}']"
    wait(
        "the new run to appear",
        lambda: d.execute_script("return !!document.querySelector(arguments[0])", newest),
        timeout_s=60,
    )
    shot(d, "4-runs")
    # Read the row in one script: htmx swaps the table every refresh, so a found element
    # can go stale before its attribute is read.
    read_row = (
        "const r = document.querySelector(arguments[0]);"
        "return r ? [r.dataset.status, r.innerText] : ['', ''];"
    )
    wait(
        "the new run to finish",
        lambda: d.execute_script(read_row, newest)[0] not in ("", "running"),
        timeout_s=150,
        every_s=1,
    )
    status, text = d.execute_script(read_row, newest)
    assert status == "finished", text
    assert user in text and "manual" in text
    shot(d, "4-runs")

    # Promote a non-champion telemetry model and see it become champion.
    d.get(url + "/registry")
    section = find(By.ID, "stream-telemetry")
    old = find(By.ID, "champion-telemetry").text
    version = section.find_elements(By.CSS_SELECTOR, "[data-promote]")[0].get_attribute(
        "data-promote"
    )
    assert version is not None  # every [data-promote] button has it
    promote(d, run, version)
    shot(d, "7-model")
    d.get(url + "/registry")
    assert find(By.ID, "champion-telemetry").text == version != old
    assert user in find(By.ID, "actions-table").text
    shot(d, "6-registry")
    assert os.path.getsize(SHOTS / "1-fleet.png") > 10_000


def test_a_new_gateway_is_read_once_and_the_others_are_not_read_again(
    plain_bootstrap: str,
) -> None:
    """The dashboard's live view picks up a gateway that appears while it runs, reads the new
    gateway's records, and does not fold in again what it had already read of the others."""
    from cloud.dashboard.live import KafkaWatcher, LiveState

    class Counting(LiveState):  # other tests' gateways share the broker: count these two
        def __init__(self) -> None:
            super().__init__()
            self.read: Counter[str] = Counter()

        def on_record(self, topic: str, value: bytes | None, record_ts: float) -> None:
            self.read[topic] += 1
            super().on_record(topic, value, record_ts)

    admin = AdminClient({"bootstrap.servers": plain_bootstrap})
    old, new = "gw-lake.scores.payments", "gw-cove.scores.payments"
    admin.create_topics([NewTopic(old, 2, 1)])[old].result(30)
    produce_all(plain_bootstrap, old, [(b"%d" % i, b"not a score") for i in range(50)])
    state = Counting()
    watcher = KafkaWatcher(plain_bootstrap, state).start()
    try:
        wait("the first gateway's 50 records", lambda: state.read[old] >= 50)
        admin.create_topics([NewTopic(new, 1, 1)])[new].result(30)
        produce_all(plain_bootstrap, new, [(None, b"not a score either") for _ in range(30)])
        wait("the new gateway", lambda: state.read[new] >= 30)
        time.sleep(3)  # anything read twice would have arrived by now
        assert (state.read[old], state.read[new]) == (50, 30), "read twice or not at all"
        assert "gw-cove" in state.gateways
        assert watcher.error is None, watcher.error
    finally:
        watcher.close()
