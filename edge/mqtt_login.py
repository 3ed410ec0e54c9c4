"""How the gateway's services log in to Mosquitto (the bridge, the scorer's decisions)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.config import EdgeConfig
from shared.errors import ConfigError
from shared.paths import default_home


def mqtt_password(config: EdgeConfig) -> str:
    """``[mqtt] password``, or ``[mqtt] username``'s entry in the credentials file (default:
    the one `fleetsentry infra up` writes)."""
    if config.mqtt.password is not None:
        return config.mqtt.password.reveal()
    path = config.mqtt.credentials_file or default_home() / "mosquitto" / "credentials.json"
    try:
        creds: dict[str, str] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"no MQTT password for {config.mqtt.username!r}: set [mqtt] password in edge.toml "
            f"or point [mqtt] credentials_file at a readable credentials file ({path}: {exc})",
            setting="mqtt.credentials_file",
        ) from None
    if config.mqtt.username not in creds:
        raise ConfigError(
            f"{path} holds no password for {config.mqtt.username!r}", setting="mqtt.username"
        )
    return creds[config.mqtt.username]
