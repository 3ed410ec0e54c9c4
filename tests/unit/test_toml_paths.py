"""The TOML the demo writes (edge.toml, cloud.toml), and the tests' helpers too, say what
they are given, whatever a path holds."""

from __future__ import annotations

from pathlib import Path

from cloud import config as cloud_config
from edge import config as edge_config
from shared.demo import _cloud_toml, _edge_toml
from shared.infra.stack import InfraSettings, Stack
from tests.bridge_support import write_edge_toml
from tests.edge_pipeline import EdgePipeline

# JSON's escapes (the demo's earlier quoting) write U+1F69A as a surrogate pair: not TOML.
ODD = 'a "quoted" dir\\with a backslash and a \U0001f69a'


def given(path: Path | None) -> Path:
    """A path setting the TOML file gives (None: it was left out)."""
    assert path is not None
    return Path(path)


def test_paths_with_a_quote_and_a_backslash_round_trip(tmp_path: Path) -> None:
    home = tmp_path / ODD
    stack = Stack(InfraSettings(home=home), quiet=True)  # constructing it does no I/O
    edge_toml = tmp_path / "edge.toml"
    edge_toml.write_text(
        _edge_toml(
            "edge-1", stack, home / "edge-1", 9500, home / "fleet.pub", home / "fleet.secret"
        )
    )
    edge = edge_config.load(edge_toml)
    assert edge.edge_id == "edge-1"
    assert Path(edge.data_dir) == home / "edge-1"
    assert given(edge.kafka.credentials_file) == stack.edge.credentials_path
    assert given(edge.mqtt.credentials_file) == stack.mqtt.credentials_path
    assert given(edge.scorer.public_key) == home / "fleet.pub"
    assert given(edge.vault.fleet_secret_file) == home / "fleet.secret"
    assert edge.metrics.base_port == 9500

    cloud_toml = tmp_path / "cloud.toml"
    cloud_toml.write_text(_cloud_toml(stack, home / "demo" / "cloud", 8600))
    cloud = cloud_config.load(cloud_toml)
    assert given(cloud.kafka.ca_file) == stack.cloud.tls_files.ca_file
    assert Path(cloud.registry.root) == home / "demo" / "cloud" / "registry"
    assert Path(cloud.store.root) == home / "demo" / "cloud" / "store"
    assert Path(cloud.dashboard.state_dir) == home / "demo" / "cloud"
    assert cloud.dashboard.port == 8600
    assert (cloud.trainer.source, cloud.trainer.split) == ("store", "vehicle")


def test_the_test_helpers_edge_toml_round_trips(tmp_path: Path) -> None:
    home = tmp_path / ODD
    stack = Stack(InfraSettings(home=home), quiet=True)
    pipeline = EdgePipeline(
        stack, home, scorer='models_dir = "m"', extra="[enricher]\nbatch_wait_ms = 20\n"
    )
    edge = edge_config.load(pipeline.write_config())
    assert Path(edge.data_dir) == home / "data"
    assert given(edge.kafka.credentials_file) == stack.edge.credentials_path
    assert edge.bridge.group == pipeline.edge_id
    assert edge.enricher.batch_wait_ms == 20

    home.mkdir(parents=True, exist_ok=True)
    path = write_edge_toml(home / "edge.toml", stack, "e-1", "g-1", extra="processes = 2\n")
    edge = edge_config.load(path)
    assert Path(edge.data_dir) == home / "data"
    assert (edge.bridge.group, edge.bridge.processes) == ("g-1", 2)
