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
import re
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from shared.infra.ports import free_ports
from tests.dashboard_support import World, copy_registry, world
from tests.support import produce_all

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1440,1000", "--disable-dev-shm-usage"]


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
def server(edge_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, str, str, World, Path]]:
    w = world()
    _publish(edge_bootstrap, w.records)
    home = tmp_path_factory.mktemp("cloud")
    registry = copy_registry(w, home / "registry")
    port = free_ports(1)[0]
    config = home / "cloud.toml"
    config.write_text(f'[kafka]\nbootstrap = "{edge_bootstrap}"\n'
                      f'[registry]\nroot = "{registry}"\n'
                      f'[dashboard]\nport = {port}\nrefresh_s = 2\nstate_dir = "{home}"\n')
    log = (home / "cloud-run.log").open("w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "fleetsentry"), "cloud", "run", "--config", str(config),
         "--key", str(w.key_file), "--no-publish", "--epochs", "2", "--min-records", "300",
         "--schedule", "1e12", "--drift-check", "1e12"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=home)
    try:
        assert proc.stdout is not None
        banner = ""
        # `cloud run` imports TensorFlow before it prints: slow on a busy 2-core machine.
        deadline = time.monotonic() + 240
        while "sign in as" not in banner and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            banner += line
        m = re.search(r"dashboard at (http://\S+)\s.*sign in as (\S+) / (\S+)", banner, re.S)
        assert m, f"no address and credentials printed: {banner!r}"
        url, user, password = m.group(1).rstrip("/"), m.group(2), m.group(3)
        _wait_http(url + "/login", 120)
        yield url, user, password, w, registry
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _wait_http(url: str, timeout_s: float) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(what: str, check: object, timeout_s: float = 30.0, every_s: float = 0.5) -> object:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()  # type: ignore[operator]
        # htmx swapped the element, or the next page has not loaded yet: look again.
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def _shot(driver: object, name: str) -> None:
    """The whole page (up to 2600 px tall) at a laptop's width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script(  # type: ignore[attr-defined]
        "return document.documentElement.scrollHeight")
    driver.set_window_size(1440, min(max(int(height) + 120, 1000), 2600))  # type: ignore[attr-defined]
    time.sleep(0.3)  # charts follow the resize
    driver.save_screenshot(str(SHOTS / f"{name}.png"))  # type: ignore[attr-defined]
    driver.set_window_size(1440, 1000)  # type: ignore[attr-defined]


def _charts_drawn(driver: object) -> bool:
    from selenium.webdriver.common.by import By

    charts = driver.find_elements(By.CSS_SELECTOR, "[data-chart]")  # type: ignore[attr-defined]
    return bool(charts) and all(c.get_attribute("data-drawn") == "1" for c in charts)


def test_sign_in_every_page_retrain_and_promote(server: tuple[str, str, str, World, Path],
                                                browser: object, edge_bootstrap: str) -> None:
    from selenium.webdriver.common.by import By

    url, user, password, w, _registry = server
    d = browser
    find = d.find_element  # type: ignore[attr-defined]

    d.get(url + "/runs")  # type: ignore[attr-defined]
    assert "/login" in d.current_url  # type: ignore[attr-defined]
    _shot(d, "0-sign-in")
    find(By.ID, "username").send_keys(user)
    find(By.ID, "password").send_keys(password)
    find(By.ID, "sign-in").click()
    _wait("the runs page", lambda: d.current_url.endswith("/runs"))  # type: ignore[attr-defined]
    assert find(By.ID, "signed-in-user").text == user

    # Fleet: both gateways online with the champions, live figures that update by themselves.
    d.get(url + "/fleet")  # type: ignore[attr-defined]
    _wait("both gateways", lambda: len(d.find_elements(By.CSS_SELECTOR, "tr[data-gateway]")) == 2)
    assert find(By.ID, "gateways-online").text.startswith("2 / 2")
    _wait("the fleet chart", lambda: _charts_drawn(d))
    _shot(d, "1-fleet")
    before = find(By.ID, "fleet-table").text
    extra = [(t.replace("gw-north", "gw-east"), k, v) for t, k, v in w.records
             if t == "gw-north.scores.payments"][:200]
    _publish(edge_bootstrap, extra)
    _wait("a new gateway to appear without a reload",
          lambda: "gw-east" in find(By.ID, "fleet-table").text, timeout_s=120)
    assert before != find(By.ID, "fleet-table").text

    d.get(url + "/fleet/gw-north")  # type: ignore[attr-defined]
    assert "active" in find(By.ID, "status-events").text
    _wait("the gateway chart", lambda: _charts_drawn(d))
    _shot(d, "2-gateway")

    d.get(url + "/detection")  # type: ignore[attr-defined]
    _wait("detection charts", lambda: _charts_drawn(d))
    alerts = find(By.ID, "alerts-table").text
    assert "No alerts" not in alerts
    page = d.page_source  # type: ignore[attr-defined]
    assert not [v for v in w.pii if v in page], "PII on the detection page"
    _shot(d, "3-detection")

    d.get(url + "/runs/3")  # type: ignore[attr-defined]
    _wait("run charts", lambda: _charts_drawn(d))
    assert find(By.ID, "run-decision").text in ("promoted", "kept")
    assert find(By.ID, "confusion-challenger").text
    _shot(d, "5-run")

    d.get(url + "/registry")  # type: ignore[attr-defined]
    _shot(d, "6-registry")

    # Retrain from the page: confirm, then watch the run appear and finish (no reload).
    d.get(url + "/runs")  # type: ignore[attr-defined]
    runs_before = len(d.find_elements(By.CSS_SELECTOR, "tr[data-run]"))
    find(By.ID, "retrain-payments").click()
    assert "Train a new" in find(By.ID, "confirm-question").text
    find(By.ID, "reason").send_keys("browser test")
    find(By.ID, "confirm").click()
    _wait("the runs page", lambda: d.current_url.endswith("/runs"))  # type: ignore[attr-defined]
    assert "retrain of payments requested" in find(By.ID, "flash").text
    newest = f"tr[data-run='{runs_before + 1}']"
    _wait("the new run to appear", lambda: d.execute_script(  # type: ignore[attr-defined]
        "return !!document.querySelector(arguments[0])", newest), timeout_s=60)
    _shot(d, "4-runs")
    # Read the row in one script: htmx swaps the table every refresh, so a found element
    # can go stale before its attribute is read.
    read_row = ("const r = document.querySelector(arguments[0]);"
                "return r ? [r.dataset.status, r.innerText] : ['', ''];")
    _wait("the new run to finish", lambda: d.execute_script(read_row, newest)[0]
          not in ("", "running"), timeout_s=150, every_s=1)
    status, text = d.execute_script(read_row, newest)  # type: ignore[attr-defined]
    assert status == "finished", text
    assert user in text and "manual" in text
    _shot(d, "4-runs")

    # Promote a non-champion telemetry model and see it become champion.
    d.get(url + "/registry")  # type: ignore[attr-defined]
    section = find(By.ID, "stream-telemetry")
    old = find(By.ID, "champion-telemetry").text
    button = section.find_elements(By.CSS_SELECTOR, "[data-promote]")[0]
    version = button.get_attribute("data-promote")
    button.click()
    assert version in find(By.ID, "confirm-question").text
    find(By.ID, "confirm").click()
    _wait("the model page", lambda: find(By.ID, "model-state").text == "champion")
    _shot(d, "7-model")
    d.get(url + "/registry")  # type: ignore[attr-defined]
    assert find(By.ID, "champion-telemetry").text == version != old
    assert user in find(By.ID, "actions-table").text
    _shot(d, "6-registry")
    assert os.path.getsize(SHOTS / "1-fleet.png") > 10_000
