"""Headless Chromium (Debian's chromium + chromedriver, driven by Selenium) and
``fleetsentry cloud run`` as a process, for the dashboard's browser tests.

Screenshots land in artifacts/screenshots/ (CI keeps them as test artifacts).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tomli_w

from shared.kafka_config import Target

if TYPE_CHECKING:  # selenium is imported where a browser test runs
    from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1440,1000",
    "--disable-dev-shm-usage",
]


@dataclass(frozen=True)
class CloudRun:
    url: str
    user: str
    password: str


def cloud_toml(cloud: Target, registry: Path, port: int, state_dir: Path) -> str:
    """A cloud.toml for ``cloud``: a bare bootstrap is a cluster without TLS or logins; a
    login's CA and credentials file serve every service's own user."""
    if isinstance(cloud, str):
        kafka = {"bootstrap": cloud, "security": "none"}
    else:
        kafka = {"bootstrap": cloud.bootstrap}
        for key, value in (
            ("ca_file", cloud.ca_file),
            ("credentials_file", cloud.credentials_file),
        ):
            if value is not None:
                kafka[key] = str(value)
    return tomli_w.dumps(
        {
            "kafka": kafka,
            "registry": {"root": str(registry)},
            "dashboard": {"port": port, "refresh_s": 2, "state_dir": str(state_dir)},
        }
    )


@contextmanager
def cloud_run(config: Path, key_file: Path, *args: str) -> Iterator[CloudRun]:
    """``fleetsentry cloud run`` until the block ends; yields its printed address and login."""
    home = config.parent
    log = (home / "cloud-run.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "fleetsentry"),
            "cloud",
            "run",
            "--config",
            str(config),
            "--key",
            str(key_file),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=home,
    )
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
        url = m.group(1).rstrip("/")
        wait_http(url + "/login", 120)
        yield CloudRun(url, m.group(2), m.group(3))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def wait_http(url: str, timeout_s: float) -> None:
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


@contextmanager
def chromium(profile_dir: Path) -> Iterator[WebDriver]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile_dir}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait(what: str, check: Any, timeout_s: float = 30.0, every_s: float = 0.5) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        # htmx swapped the element, or the next page has not loaded yet: look again.
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def shot(driver: WebDriver, name: str) -> None:
    """The whole page (up to 2600 px tall) at a laptop's width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, min(max(int(height) + 120, 1000), 2600))
    time.sleep(0.3)  # charts follow the resize
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(1440, 1000)


def charts_drawn(driver: WebDriver) -> bool:
    from selenium.webdriver.common.by import By

    charts = driver.find_elements(By.CSS_SELECTOR, "[data-chart]")
    return bool(charts) and all(c.get_attribute("data-drawn") == "1" for c in charts)


def sign_in(driver: WebDriver, run: CloudRun, page: str = "/runs", shot_as: str = "") -> None:
    """Open ``page``, get sent to the sign-in form, sign in, land on ``page``."""
    from selenium.webdriver.common.by import By

    driver.get(run.url + page)
    assert "/login" in driver.current_url
    if shot_as:
        shot(driver, shot_as)
    driver.find_element(By.ID, "username").send_keys(run.user)
    driver.find_element(By.ID, "password").send_keys(run.password)
    driver.find_element(By.ID, "sign-in").click()
    wait(f"the {page} page", lambda: driver.current_url.endswith(page))
    # The address changes before the new page has rendered: look until it has.
    wait(
        f"{run.user} signed in",
        lambda: driver.find_element(By.ID, "signed-in-user").text == run.user,
    )


def promote(driver: WebDriver, run: CloudRun, version: str) -> str:
    """Promote ``version`` from the registry page, confirming; returns on its model page once
    the signer has carried the request out, with the flash message the request got."""
    from selenium.webdriver.common.by import By

    driver.get(run.url + "/registry")
    driver.find_element(By.CSS_SELECTOR, f"[data-promote='{version}']").click()
    assert version in driver.find_element(By.ID, "confirm-question").text
    driver.find_element(By.ID, "confirm").click()
    wait("the model page", lambda: driver.find_element(By.ID, "model-state"))
    flash = str(driver.find_element(By.ID, "flash").text)
    page = driver.current_url

    def champion() -> bool:  # the dashboard only recorded it: the signer promotes it
        driver.get(page)
        return bool(driver.find_element(By.ID, "model-state").text == "champion")

    wait("the signer to promote it", champion, every_s=1)
    return flash
