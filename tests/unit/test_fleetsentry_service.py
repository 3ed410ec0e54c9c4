"""The gateway's service launcher for hosts without systemd (the gateway role's
``fleetsentry-service``), rendered from its template and run on real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jinja2

TEMPLATE = (
    Path(__file__).resolve().parents[2]
    / "ansible/roles/gateway/templates/fleetsentry-service.sh.j2"
)
# Longer than the old fixed wait (50 polls of 0.1 s) took even on a busy host.
SET_UP_S = 12


def _service(script: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(script), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _render(root: Path) -> Path:
    text = jinja2.Template(TEMPLATE.read_text()).render(
        ansible_managed="rendered by a test",
        gateway_launcher_dir=str(root / "launchers"),
        gateway_run_dir=str(root / "run"),
        gateway_log_dir=str(root / "log"),
    )
    script = root / "fleetsentry-service"
    script.write_text(text)
    script.chmod(0o755)
    return script


def test_a_service_whose_launcher_sets_up_for_a_while_is_started_not_failed(
    tmp_path: Path,
) -> None:
    """MirrorMaker's launcher sets the read cap with a JVM tool before it runs MirrorMaker;
    on a busy host that took longer than the launcher used to wait for the service's marked
    command, and the Ansible run failed with "mirror failed to start" and an empty log."""
    marker = f"fleetsentry-test-{uuid.uuid4().hex}"
    (tmp_path / "launchers").mkdir()
    launcher = tmp_path / "launchers" / "slow"
    launcher.write_text(
        "#!/bin/sh\n"
        f"# marker: {marker}\n"
        "# stop-timeout: 5\n"
        f"sleep {SET_UP_S}\n"
        f"exec {sys.executable} -c 'import time; time.sleep(120)' {marker}\n"
    )
    launcher.chmod(0o755)
    script = _render(tmp_path)
    try:
        started = _service(script, "start", "slow", timeout=180)
        assert started.returncode == 0, started.stderr
        assert "slow started" in started.stdout
        status = _service(script, "status", "slow")
        assert status.returncode == 0
    finally:
        _service(script, "stop", "slow")
    assert _service(script, "status", "slow").returncode == 3


def test_a_launcher_that_exits_is_reported_at_once_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "launchers").mkdir()
    launcher = tmp_path / "launchers" / "broken"
    launcher.write_text("#!/bin/sh\n# marker: never-there\necho 'no such config' >&2\nexit 1\n")
    launcher.chmod(0o755)
    script = _render(tmp_path)
    started = _service(script, "start", "broken")
    assert started.returncode == 1
    assert "broken failed to start" in started.stderr and "no such config" in started.stderr


def _pid(script: Path, name: str) -> int | None:
    status = _service(script, "status", name)
    if status.returncode != 0:
        return None
    return int(status.stdout.split("pid ")[1].rstrip(")\n"))


def _new_pid(script: Path, name: str, old: int | None) -> int | None:
    pid = _pid(script, name)
    return pid if pid != old else None


def _wait_for(probe: Callable[[], int | None], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got is not None:
            return got
        time.sleep(0.2)
    return None


def _long_runner(root: Path, name: str, restart: str, exit_code: int | None = None) -> str:
    """A launcher whose service runs until killed, or exits with ``exit_code`` after a second."""
    marker = f"fleetsentry-test-{uuid.uuid4().hex}"
    (root / "launchers").mkdir(exist_ok=True)
    body = "time.sleep(120)" if exit_code is None else f"time.sleep(1.5); sys.exit({exit_code})"
    launcher = root / "launchers" / name
    launcher.write_text(
        "#!/bin/sh\n"
        f"# marker: {marker}\n"
        "# stop-timeout: 5\n"
        f"# restart: {restart}\n"
        "# restart-delay: 1\n"
        f"exec {sys.executable} -c 'import sys, time; {body}' {marker}\n"
    )
    launcher.chmod(0o755)
    return marker


def test_a_service_that_dies_is_started_again_after_its_restart_delay(tmp_path: Path) -> None:
    """Where systemd runs, ``Restart=`` starts a dead service again; MirrorMaker, for one,
    exits on purpose when it cannot create its internal topics in time. Without systemd it
    used to stay dead until the next Ansible run."""
    _long_runner(tmp_path, "mm", "always")
    script = _render(tmp_path)
    try:
        assert _service(script, "start", "mm").returncode == 0
        first = _pid(script, "mm")
        assert first is not None
        os.kill(first, signal.SIGKILL)
        again = _wait_for(lambda: _new_pid(script, "mm", first), 30)
        assert again is not None and again != first, "the killed service was not started again"
        log = (tmp_path / "log" / "mm.out").read_text()
        assert "mm exited with status 137; starting it again in 1 s" in log
    finally:
        _service(script, "stop", "mm")
    assert _service(script, "status", "mm").returncode == 3
    time.sleep(3)  # longer than the restart delay: a stopped service stays stopped
    assert _service(script, "status", "mm").returncode == 3
    assert not [p for p in _processes_with(str(tmp_path / "fleetsentry-service"))]


def test_on_failure_restarts_a_failed_exit_but_not_a_clean_one(tmp_path: Path) -> None:
    """Kafka's and Mosquitto's units say ``Restart=on-failure``: a clean exit stays down."""
    _long_runner(tmp_path, "failing", "on-failure", exit_code=3)
    _long_runner(tmp_path, "clean", "on-failure", exit_code=0)
    script = _render(tmp_path)
    try:
        first = {}
        for name in ("failing", "clean"):
            assert _service(script, "start", name).returncode == 0
            first[name] = _pid(script, name)
        # Each exits 1.5 s after it starts; the failing one comes back 1 s later.
        again = _wait_for(lambda: _new_pid(script, "failing", first["failing"]), 30)
        assert again is not None, "the service that failed was not started again"
        time.sleep(3)
        assert _service(script, "status", "clean").returncode == 3
        log = (tmp_path / "log" / "clean.out").read_text()
        assert "clean exited with status 0; not starting it again (restart: on-failure)" in log
    finally:
        for name in ("failing", "clean"):
            _service(script, "stop", name)
    time.sleep(3)
    assert _service(script, "status", "failing").returncode == 3


def _processes_with(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found
