"""The gateway's pipeline (bridge -> enricher -> scorer) as `fleetsentry edge run` children.

Used by the end-to-end test and bench/latency.py: one supervisor process with its own edge id
(so its consumer groups and transactional ids are fresh), pointing at a running Stack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import tomli_w

from shared.infra.stack import Stack

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("bridge", "enricher", "scorer")
READY = {
    "bridge": "connected as",
    "enricher": "enriching raw.*",
    "scorer": "scoring ",
    "agent": "watching cloud.models",
}


class EdgePipeline:
    """``python -m edge.cli run --service ...`` against ``stack``; logs to ``home/edge.log``."""

    def __init__(
        self,
        stack: Stack,
        home: Path,
        scorer: str = "",
        extra: str = "",
        services: tuple[str, ...] = SERVICES,
    ) -> None:
        self.stack = stack
        self.home = home
        self.edge_id = f"e2e-{uuid.uuid4().hex[:8]}"
        self.services = services
        self.scorer_toml = scorer
        self.extra = extra
        self.config = home / "edge.toml"
        self.log = home / "edge.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def settings(self) -> dict[str, Any]:
        """edge.toml's settings, but for ``scorer`` and ``extra`` (TOML text, added as given)."""
        return {
            "edge_id": self.edge_id,
            "data_dir": str(self.home / "data"),
            "kafka": {
                "bootstrap": self.stack.edge.bootstrap,
                "credentials_file": str(self.stack.edge.credentials_path),
            },
            "mqtt": {
                "host": self.stack.mqtt.host,
                "port": self.stack.mqtt.port,
                "credentials_file": str(self.stack.mqtt.credentials_path),
            },
            "metrics": {"base_port": 0},
            "bridge": {"group": self.edge_id},
        }

    def write_config(self) -> Path:
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            tomli_w.dumps(self.settings()) + f"[scorer]\n{self.scorer_toml}\n{self.extra}"
        )
        return self.config

    def start(self, timeout: float = 120.0) -> EdgePipeline:
        self.write_config()
        argv = [sys.executable, "-m", "edge.cli", "run", "--config", str(self.config)]
        for s in self.services:
            argv += ["--service", s]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"edge run exited: {self.tail()}")
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            if all(READY[s] in text for s in self.services):
                return
            time.sleep(0.2)
        raise AssertionError(f"edge services not ready in {timeout:.0f}s: {self.tail()}")

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
