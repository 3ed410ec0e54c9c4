"""One place turns [kafka] settings into a client's login."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge import config as edge_config
from shared.config import Secret
from shared.errors import ConfigError
from shared.kafka_config import KafkaSettings, client_config, java_properties


def _creds(tmp_path: Path) -> Path:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps({"fleetsentry-edge": "from-file"}))
    return path


def test_the_services_log_in_with_scram_from_the_credentials_file(tmp_path: Path) -> None:
    conf = client_config(KafkaSettings(credentials_file=_creds(tmp_path)), {"linger.ms": 5})
    assert conf == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "fleetsentry-edge",
        "sasl.password": "from-file",
        "linger.ms": 5,
    }


def test_a_password_in_the_settings_wins_and_never_prints(tmp_path: Path) -> None:
    s = KafkaSettings(password=Secret("set-here"), credentials_file=_creds(tmp_path))
    assert client_config(s)["sasl.password"] == "set-here"
    assert "set-here" not in repr(s) and "set-here" not in f"{s.password}"
    assert 'password="set-here"' in java_properties(s)["sasl.jaas.config"]


def test_a_plain_bootstrap_has_no_login() -> None:
    assert client_config("10.0.0.1:9092") == {"bootstrap.servers": "10.0.0.1:9092"}
    assert java_properties(KafkaSettings(username="")) == {"bootstrap.servers": "127.0.0.1:9092"}


def test_a_missing_password_names_the_setting_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kafka.credentials_file.*infra up"):
        client_config(KafkaSettings(credentials_file=tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match="kafka.username.*no password for 'someone'"):
        client_config(KafkaSettings(username="someone", credentials_file=_creds(tmp_path)))


def test_edge_toml_sets_the_login_and_the_environment_only_the_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text('[kafka]\nusername = "fleetsentry-edge"\nmechanism = "SCRAM-SHA-256"\n')
    monkeypatch.setenv("FLEETSENTRY_KAFKA_PASSWORD", "from-env")
    cfg = edge_config.load(toml)
    assert cfg.kafka.password is not None and cfg.kafka.password.reveal() == "from-env"
    assert client_config(cfg.kafka)["sasl.mechanism"] == "SCRAM-SHA-256"
    toml.write_text('[kafka]\nmechanism = "GSSAPI"\n')
    with pytest.raises(ConfigError, match="kafka.mechanism"):
        edge_config.load(toml)
