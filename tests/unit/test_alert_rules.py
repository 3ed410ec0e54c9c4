"""The shipped Prometheus alert rules name only metrics the gateway's services export."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from edge import disk
from edge import metrics as edge_metrics
from edge.config import EdgeConfig

RULES = Path(__file__).resolve().parents[2] / "ansible/roles/edge/files/fleetsentry-alerts.yml"


def exported_names(tmp_path: Path) -> set[str]:
    """Every sample name the edge services can serve (shared families + the disk collector)."""
    assert edge_metrics.WRITE_ERRORS is not None
    config = EdgeConfig(data_dir=tmp_path)
    families = list(REGISTRY.collect()) + list(
        disk.DiskCollector(config, disk.plan(config)).collect()
    )
    names = set()
    for family in families:
        names.add(family.name)
        names.update(
            {
                f"{family.name}{suffix}"
                for suffix in ("_total", "_bucket", "_sum", "_count")
                if family.type in ("counter", "histogram")
            }
        )
    return names


def test_every_metric_in_the_rules_exists(tmp_path: Path) -> None:
    rules = yaml.safe_load(RULES.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in re.findall(r"\bfleetsentry_[a-z0-9_]+", e)}
    assert named, "the rules name no metric"
    missing = named - exported_names(tmp_path)
    assert not missing, f"alert rules name metrics no service exports: {sorted(missing)}"


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: prometheus)")
    proc = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
