"""MirrorMaker's settings: the Ansible role's files say what shared/infra/mirror.py says.

The role renders its own copies (a gateway has no repository to run mirror.py from); these
tests render both and fail on any difference, so the two cannot drift apart again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from jinja2.nativetypes import NativeEnvironment

from shared.config import Secret
from shared.errors import ConfigError
from shared.infra import mirror_watch, quota
from shared.infra.mirror import CLOUD_COMPRESSION, MAIN_CLASS, Mirror
from shared.kafka_config import MIRROR_USER, KafkaSettings, java_properties

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "edge"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
INTERNALS = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
EDGE, CLOUD, PASSWORD = "127.0.0.1:9092", "cloud.example:9093", 'pa"ss'


def _filters(env: Environment) -> Environment:
    env.filters.update(to_json=json.dumps, regex_escape=re.escape, quote=shlex.quote)
    return env


def _vars(**over: Any) -> dict[str, Any]:
    names = (
        "edge_mirror_topics",
        "edge_mirror_compression",
        "edge_mirror_max_bytes_per_s",
        "edge_cloud_replication_factor",
        "edge_mirror_rest_port",
    )
    return {
        **{n: DEFAULTS[n] for n in names},
        "ansible_managed": "managed",
        "edge_id": "edge-7",
        "edge_kafka_bootstrap": EDGE,
        "edge_cloud_bootstrap": CLOUD,
        "edge_mirror_kafka_username": MIRROR_USER,
        "edge_mirror_kafka_password": PASSWORD,
        "edge_cloud_security_protocol": "PLAINTEXT",
        "edge_cloud_ca_cert": "",
        "edge_mirror_dir": "/etc/fleetsentry/edge/mirror",
        "edge_mirror_restart": INTERNALS["edge_mirror_restart"],
        "edge_mirror_restart_sec": INTERNALS["edge_mirror_restart_sec"],
        **over,
    }


def _render(template: str, **over: Any) -> dict[str, str]:
    env = _filters(
        Environment(
            loader=FileSystemLoader(ROLE / "templates"), undefined=StrictUndefined, trim_blocks=True
        )
    )
    text = env.get_template(template).render(**_vars(**over))
    props = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" = ") if " = " in line else line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _mirror(cap: int = 0) -> Mirror:
    login = KafkaSettings(bootstrap=EDGE, username=MIRROR_USER, password=Secret(PASSWORD))
    return Mirror(
        "edge-7", EDGE, CLOUD, Path("/nonexistent"), edge_login=login, max_bytes_per_s=cap
    )


@pytest.mark.parametrize("cap", [0, 1024, 300_000])
def test_the_roles_mm2_properties_equal_mirror_py(cap: int) -> None:
    rendered = _render("mm2.properties.j2", edge_mirror_max_bytes_per_s=cap)
    ours = {
        k: str(v) for k, v in _mirror(cap).properties(DEFAULTS["edge_mirror_rest_port"]).items()
    }
    assert rendered == ours, {
        "only in the role": sorted(set(rendered.items()) - set(ours.items())),
        "only in mirror.py": sorted(set(ours.items()) - set(rendered.items())),
    }


def test_the_roles_topic_list_and_codec_are_the_registrys() -> None:
    assert DEFAULTS["edge_mirror_compression"] == CLOUD_COMPRESSION
    assert (
        _render("mm2.properties.j2")["edge-7->cloud.topics"]
        == _mirror().properties(0)["edge-7->cloud.topics"]
    )


def _render_cloud_login() -> dict[str, str]:
    """The role's mm2.properties with the gateway's own cloud login over TLS."""
    return _render(
        "mm2.properties.j2",
        edge_cloud_security_protocol="SASL_SSL",
        edge_cloud_sasl_mechanism="SCRAM-SHA-512",
        edge_cloud_username="gateway-edge-7",
        edge_cloud_password=PASSWORD,
        edge_cloud_ca_cert="PEM",
    )


def test_the_roles_cloud_login_equals_mirror_py() -> None:
    """The gateway's own cloud login over TLS, as the cloud asks for it: the same in both."""
    rendered = _render_cloud_login()
    cloud = KafkaSettings(
        bootstrap=CLOUD,
        username="gateway-edge-7",
        password=Secret(PASSWORD),
        ca_file=Path("/etc/fleetsentry/edge/mirror/cloud-ca.crt"),
    )
    ours = {
        k: str(v)
        for k, v in dataclasses.replace(_mirror(), cloud_login=cloud)
        .properties(DEFAULTS["edge_mirror_rest_port"])
        .items()
    }
    assert rendered == ours, {
        "only in the role": sorted(set(rendered.items()) - set(ours.items())),
        "only in mirror.py": sorted(set(ours.items()) - set(rendered.items())),
    }
    assert rendered["cloud.security.protocol"] == "SASL_SSL"


@pytest.mark.parametrize("cap", [0, 300_000])
def test_the_roles_read_cap_command_equals_quota_py(cap: int) -> None:
    env = _filters(NativeEnvironment(undefined=StrictUndefined))
    values = {
        **_vars(edge_mirror_max_bytes_per_s=cap),
        "kafka_java": "/usr/bin/java",
        "kafka_libs_dir": "/opt/kafka/libs",
    }
    login_file = env.from_string(INTERNALS["edge_mirror_login_file"]).render(**values)
    argv = env.from_string(INTERNALS["edge_mirror_read_cap_argv"]).render(
        **values, edge_mirror_login_file=login_file
    )
    assert argv == quota.config_command_argv(
        "/usr/bin/java", "/opt/kafka/libs/*", EDGE, Path(login_file), MIRROR_USER, cap
    )
    login = _render("mirror-edge-login.properties.j2")
    expected = quota.client_properties(java_properties(_mirror().edge)).splitlines()
    assert login == dict(line.split("=", 1) for line in expected)


def test_a_read_cap_is_validated_and_named() -> None:
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes_per_s: 10 bytes/s is below"):
        _mirror(10)
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes_per_s: expected an integer"):
        _mirror(2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes_per_s: needs MirrorMaker's own"):
        Mirror("edge-7", EDGE, CLOUD, Path("/nonexistent"), max_bytes_per_s=65_536)
    assert _mirror(0).max_bytes_per_s == 0


def test_a_capped_reader_fetches_about_a_second_of_the_cap() -> None:
    assert _mirror(300_000).properties(0)["edge-7.consumer.fetch.max.bytes"] == 300_000
    assert _mirror(2048).properties(0)["edge-7.consumer.fetch.max.bytes"] == 64 * 1024
    assert "edge-7.consumer.fetch.max.bytes" not in _mirror(0).properties(0)


def test_the_read_cap_comes_from_the_option_or_the_mirror_table(tmp_path: Path) -> None:
    from shared.infra.cli import read_cap

    conf = tmp_path / "infra.toml"
    conf.write_text("[mirror]\nmax_bytes_per_s = 262144\n")
    assert read_cap(str(conf), None) == 262_144
    assert read_cap(str(conf), 0) == 0
    assert read_cap(None, None) == 0
    conf.write_text("[mirror]\nmax_bytes_per_s = 100\n")
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes_per_s: 100 bytes/s"):
        read_cap(str(conf), None)
    conf.write_text('[mirror]\nmax_bytes_per_s = "1M"\n')
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes_per_s: expected an integer"):
        read_cap(str(conf), None)
    conf.write_text("[mirror]\nmax_bytes = 1\n")
    with pytest.raises(ConfigError, match=r"^mirror\.max_bytes: unknown setting"):
        read_cap(str(conf), None)


def test_source_offsets_say_where_mirrormaker_resumes() -> None:
    from shared.infra.mirror import parse_source_offsets

    key = '["MirrorSourceConnector",{"cluster":"%s","partition":%d,"topic":"%s"}]'
    raw: dict[str, bytes | None] = {
        key % ("edge-7", 0, "anon.telemetry"): b'{"offset":41}',
        key % ("edge-7", 2, "alerts"): b'{"offset":0}',
        key % ("edge-8", 0, "anon.telemetry"): b'{"offset":99}',  # another gateway's
        key % ("edge-7", 1, "anon.telemetry"): None,  # a tombstone
        '["MirrorHeartbeatConnector",{}]': b'{"offset":5}',
        "not json": b"{}",
    }
    assert parse_source_offsets("edge-7", raw) == {("anon.telemetry", 0): 42, ("alerts", 2): 1}


@pytest.mark.parametrize("cap", [0, 300_000])
def test_the_read_cap_is_set_before_mirrormaker_starts(cap: int) -> None:
    env = _filters(
        Environment(
            loader=FileSystemLoader(ROLE / "templates"), undefined=StrictUndefined, trim_blocks=True
        )
    )
    argv = ["/usr/bin/java", "kafka.admin.ConfigCommand", "--entity-name", MIRROR_USER]
    values = {
        **_vars(edge_mirror_max_bytes_per_s=cap),
        "edge_mirror_read_cap_argv": argv,
        "edge_mirror_argv": ["/usr/bin/java", "MirrorMaker"],
        "edge_runas": [],
        "edge_user": "fleetsentry",
        "edge_group": "fleetsentry",
        "edge_mirror_log_dir": "/var/log/x",
        "edge_mirror_memory_max": "640M",
        "edge_mirror_config_file": "/etc/x/mm2.properties",
    }
    unit = env.get_template("mirror.service.j2").render(**values).splitlines()
    pre = [line for line in unit if line.startswith("ExecStartPre=")]
    # At 0 the quota is removed, which fails harmlessly when there is none ('-').
    assert pre == [f"ExecStartPre={'' if cap else '-'}{' '.join(argv)}"]
    assert unit.index(pre[0]) < [i for i, x in enumerate(unit) if x.startswith("ExecStart=")][0]
    script = env.get_template("mirror-launcher.sh.j2").render(**values).splitlines()
    first = next(i for i, line in enumerate(script) if "ConfigCommand" in line)
    assert script[first].endswith("|| exit 1" if cap else "|| true")
    assert script[-1].startswith("exec ") and first < len(script) - 1


def test_a_cap_is_set_then_removed_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[list[str]] = []
    monkeypatch.setattr(quota, "apply", ran.append)
    login = KafkaSettings(bootstrap=EDGE, username=MIRROR_USER, password=Secret(PASSWORD))
    capped = Mirror("edge-7", EDGE, CLOUD, tmp_path, edge_login=login, max_bytes_per_s=65_536)
    uncapped = Mirror("edge-7", EDGE, CLOUD, tmp_path, edge_login=login)
    uncapped.apply_read_cap(Path("/opt/kafka/libs"), "/usr/bin/java")
    assert ran == []  # never capped: nothing to remove, no JVM started
    capped.apply_read_cap(Path("/opt/kafka/libs"), "/usr/bin/java")
    uncapped.apply_read_cap(Path("/opt/kafka/libs"), "/usr/bin/java")
    uncapped.apply_read_cap(Path("/opt/kafka/libs"), "/usr/bin/java")
    assert [argv[-2:] for argv in ran] == [
        ["--add-config", "consumer_byte_rate=65536"],
        ["--delete-config", "consumer_byte_rate"],
    ]
    assert (capped.quota_config_path.stat().st_mode & 0o777) == 0o600


def test_the_watchdog_logs_in_as_the_roles_mirrormaker_does(tmp_path: Path) -> None:
    """The watchdog reads MirrorMaker's Connect status with the logins of its config: the
    role's (SCRAM over TLS to the cloud) and mirror.py's alike."""
    ca = Path("/etc/fleetsentry/edge/mirror/cloud-ca.crt")
    rendered = _render_cloud_login()
    path = tmp_path / "mm2.properties"
    path.write_text("# managed\n" + "".join(f"{k} = {v}\n" for k, v in rendered.items()))
    edge_id, edge, cloud = mirror_watch.logins(path)
    assert edge_id == "edge-7"
    assert edge == _mirror().edge
    assert cloud == KafkaSettings(
        bootstrap=CLOUD, username="gateway-edge-7", password=Secret(PASSWORD), ca_file=ca
    )
    assert isinstance(cloud, KafkaSettings) and cloud.password
    assert cloud.password.reveal() == PASSWORD
    # A cloud without TLS or logins (development): the bare bootstrap.
    path.write_text("".join(f"{k} = {v}\n" for k, v in _render("mm2.properties.j2").items()))
    assert mirror_watch.logins(path)[2] == CLOUD
    path.write_text("clusters = edge-7, other\n")
    with pytest.raises(ConfigError, match="clusters"):
        mirror_watch.logins(path)


def test_the_role_runs_mirrormaker_under_the_watchdog() -> None:
    env = _filters(NativeEnvironment(undefined=StrictUndefined))
    values = {
        **_vars(),
        "kafka_java": "/usr/bin/java",
        "kafka_libs_dir": "/opt/kafka/libs",
        "edge_mirror_heap": DEFAULTS["edge_mirror_heap"],
        "edge_mirror_jvm_extra_options": [],
        "edge_cli": "/opt/fleetsentry/venv/bin/fleetsentry",
        "edge_mirror_config_file": "/etc/x/mm2.properties",
    }
    argv = env.from_string(INTERNALS["edge_mirror_argv"]).render(**values)
    cut = argv.index("--")
    assert argv[:cut] == [
        "/opt/fleetsentry/venv/bin/fleetsentry",
        *("infra", "mirror", "run", "--properties", "/etc/x/mm2.properties"),
    ]
    assert argv[cut + 1] == "/usr/bin/java" and argv[-2:] == [MAIN_CLASS, "/etc/x/mm2.properties"]
