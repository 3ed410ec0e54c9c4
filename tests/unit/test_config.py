"""Config loading: typed, frozen, errors name the setting, secrets never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Secret
from shared.errors import ConfigError
from shared.infra.cli import settings_from
from shared.infra.stack import Stack


def test_secret_never_prints() -> None:
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2"


def test_edge_config_defaults_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.config import load

    cfg = load(None)
    assert cfg.kafka.bootstrap == "127.0.0.1:9092" and cfg.mqtt.port == 1883
    bad = tmp_path / "edge.toml"
    bad.write_text('[mqtt]\nport = "one"\n')
    with pytest.raises(ConfigError) as err:
        load(bad)
    assert err.value.setting == "mqtt.port"
    bad.write_text("[mqtt]\nprot = 1\n")
    with pytest.raises(ConfigError) as err:
        load(bad)
    assert err.value.setting == "mqtt.prot"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")


def test_environment_overrides_only_listed_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.config import load

    monkeypatch.setenv("FLEETSENTRY_KAFKA_BOOTSTRAP", "10.0.0.1:9092")
    monkeypatch.setenv("FLEETSENTRY_MQTT_PASSWORD", "s3cret")
    cfg = load(None)
    assert cfg.kafka.bootstrap == "10.0.0.1:9092"
    assert cfg.mqtt.password is not None and cfg.mqtt.password.reveal() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_infra_settings_reject_duplicate_and_invalid_ports(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        settings_from({"home": tmp_path, "edge_port": 9192})
    assert err.value.setting == "cloud_ports[0]"
    with pytest.raises(ConfigError) as err:
        settings_from({"home": tmp_path, "mqtt_port": 70000})
    assert err.value.setting == "mqtt_port"
    with pytest.raises(ConfigError) as err:
        settings_from({"home": tmp_path, "cloud_ports": [1, 2, 3, 4]})
    assert err.value.setting == "cloud_ports"
    with pytest.raises(ConfigError) as err:
        settings_from({"home": tmp_path, "cloud_ports": [9300]})
    assert err.value.setting == "cloud_controller_ports"
    assert "3 controller ports for 1 cloud nodes" in str(err.value)


def test_a_two_node_cloud_is_refused(tmp_path: Path) -> None:
    # Two KRaft controllers make a quorum of two: losing either stops the cluster, and with
    # replication factor 2 a write waits on both. No better than one node, and twice the cost.
    with pytest.raises(ConfigError) as err:
        settings_from(
            {"home": tmp_path, "cloud_ports": [9300, 9302], "cloud_controller_ports": [9301, 9303]}
        )
    assert err.value.setting == "cloud_ports"
    assert "one or three" in str(err.value)


def test_a_one_node_cloud_replicates_once(tmp_path: Path) -> None:
    settings = settings_from(
        {"home": tmp_path, "cloud_ports": [9300], "cloud_controller_ports": [9301]}
    )
    cloud = Stack(settings, quiet=True).cloud
    assert len(cloud.nodes) == 1 and cloud.replication_factor == 1 and cloud.min_insync == 1
