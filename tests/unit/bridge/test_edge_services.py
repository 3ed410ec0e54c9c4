"""The service table and the supervisor's command lines, without starting anything."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

from edge.config import EdgeConfig, MetricsSettings
from edge.services import SERVICES, by_name, load_target, metrics_port, process_count
from edge.supervisor import Supervisor, child_argv
from shared.errors import ConfigError


def test_every_service_has_a_unique_name_offset_and_importable_target() -> None:
    names = [s.name for s in SERVICES]
    offsets = [s.metrics_offset for s in SERVICES]
    assert len(set(names)) == len(names) and len(set(offsets)) == len(offsets)
    assert all(0 <= o < 10 for o in offsets)
    for svc in SERVICES:
        assert callable(load_target(svc))


def test_bridge_processes_and_ports_follow_the_config() -> None:
    cfg = EdgeConfig()
    bridge = by_name("bridge")
    cfg2 = msgspec.structs.replace(cfg, bridge=msgspec.structs.replace(cfg.bridge, processes=3))
    assert process_count(bridge, cfg) == 1 and process_count(bridge, cfg2) == 3
    assert metrics_port(bridge, cfg, 0) == 9400 + bridge.metrics_offset
    assert metrics_port(bridge, cfg, 2) == 9420 + bridge.metrics_offset
    off = msgspec.structs.replace(cfg, metrics=MetricsSettings(base_port=0))
    assert metrics_port(bridge, off, 0) is None
    sup = Supervisor(cfg2, Path("edge.toml"), only=frozenset({"bridge"}))
    assert [c.label for c in sup.children] == ["bridge[0]", "bridge[1]", "bridge[2]"]
    assert sup.children[0].argv == child_argv(bridge, 0, Path("edge.toml"))
    assert sup.children[2].argv[:3] == [sys.executable, "-m", "edge.cli"]


def test_unknown_service_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown service"):
        by_name("nope")
