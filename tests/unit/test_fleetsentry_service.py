"""The gateway's service launcher for hosts without systemd (the gateway role's
``fleetsentry-service``), rendered from its template and run on real processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
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
