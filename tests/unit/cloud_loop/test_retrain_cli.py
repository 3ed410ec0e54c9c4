"""`cloud trainer-service` / `cloud retrain` take cloud.toml: its settings apply unless an
option is given on the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.testing import CliRunner

from cloud.registry.cli import DEFAULT_BOOTSTRAP
from cloud.trainer_service.cli import _common, _from_config
from cloud.trainer_service.source import KafkaSource
from shared.kafka_config import PUBLISHER_USER, TRAINER_USER, KafkaSettings, bootstrap_of


@click.command()
@_common
def probe(config_path: Path | None, registry_root: Path, bootstrap: str, **_: Any) -> None:
    root, login, source, _trainer, _releases = _from_config(config_path, registry_root, bootstrap)
    # The publisher logs in as itself, the trainer's source as the trainer.
    assert isinstance(login, KafkaSettings) and login.username == PUBLISHER_USER
    if isinstance(source, KafkaSource):
        assert isinstance(source.bootstrap, KafkaSettings)
        assert source.bootstrap.username == TRAINER_USER
    click.echo(f"{root} {bootstrap_of(login)} {type(source).__name__}")


def test_cloud_toml_applies_unless_an_option_is_given(tmp_path: Path) -> None:
    conf = tmp_path / "cloud.toml"
    conf.write_text(
        f'[kafka]\nbootstrap = "127.0.0.1:29092"\n[registry]\nroot = "{tmp_path / "reg"}"\n'
    )
    run = CliRunner().invoke
    assert run(probe, ["--config", str(conf)]).output.split() == [
        str(tmp_path / "reg"),
        "127.0.0.1:29092",
        "KafkaSource",
    ]
    assert run(probe, ["--config", str(conf), "--bootstrap", "10.0.0.1:9092"]).output.split() == [
        str(tmp_path / "reg"),
        "10.0.0.1:9092",
        "KafkaSource",
    ]
    assert run(probe, []).output.split()[1:] == [DEFAULT_BOOTSTRAP, "KafkaSource"]
    conf.write_text(
        conf.read_text() + f'[store]\nroot = "{tmp_path / "store"}"\n[trainer]\nsource = "store"\n'
    )
    assert run(probe, ["--config", str(conf)]).output.split()[2] == "StoreReader"


def test_a_bad_cloud_toml_names_the_setting(tmp_path: Path) -> None:
    conf = tmp_path / "cloud.toml"
    conf.write_text('[kafka]\nbootstrapp = "x"\n')
    result = CliRunner().invoke(probe, ["--config", str(conf)])
    assert result.exit_code != 0
    assert "bootstrapp" in str(result.exception) + result.output
