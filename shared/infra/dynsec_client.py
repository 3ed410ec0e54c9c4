"""Commands to a running Mosquitto's dynamic-security plugin over its control topic."""

from __future__ import annotations

import json
import os
import threading
import time
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from shared.infra.errors import InfraError


class ControlClient:
    """One admin connection; ``send`` publishes a batch and waits for its responses."""

    def __init__(self, host: str, port: int, user: str, password: str, topic: str) -> None:
        self.topic = topic
        self._responses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user}-control-{os.getpid()}",
            protocol=mqtt.MQTTv5,
        )
        c.username_pw_set(user, password)
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *_a: self._subscribed.set()
        c.on_message = self._on_message
        try:
            c.connect(host, port, 30)
        except OSError as exc:
            raise InfraError(
                f"cannot reach mosquitto at {host}:{port} to register vehicles: {exc}"
            ) from None
        c.loop_start()
        self._client = c
        self._address = f"{host}:{port}"

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, reason: Any, _p: object
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            self._subscribed.set()
            return
        client.subscribe(f"{self.topic}/response", qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._cond:
            for resp in doc.get("responses", []):
                if isinstance(resp, dict) and "correlationData" in resp:
                    self._responses[resp["correlationData"]] = resp
            self._cond.notify_all()

    def send(self, commands: list[dict[str, Any]], timeout: float) -> list[str | None]:
        """Each command's error (None when it succeeded); commands carry correlationData."""
        if not self._subscribed.wait(min(timeout, 15.0)) or self._refused:
            raise InfraError(
                f"mosquitto at {self._address} refused the admin login "
                f"({self._refused or 'no answer'}); check its credentials file"
            )
        ids = [c["correlationData"] for c in commands]
        self._client.publish(self.topic, json.dumps({"commands": commands}), qos=1)
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(i in self._responses for i in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise InfraError(
                        f"mosquitto at {self._address} did not answer "
                        f"{len(commands)} control commands within {timeout:.0f}s"
                    )
                self._cond.wait(left)
            return [self._responses.pop(i).get("error") for i in ids]

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._client.disconnect()
        self._client.loop_stop()
