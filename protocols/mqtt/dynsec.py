"""Mosquitto's dynamic security plugin, spoken over `$CONTROL/dynamic-security/v1`.

`DynsecClient` is a small request/response client on its own connection (the
bridge's admin account, a client id of its own), so control traffic never
mixes with the bridge's persistent data session. Commands go out as one JSON
batch; the plugin answers every command of it in one message on
`$CONTROL/dynamic-security/v1/response`, in order.

paho's network thread owns the socket; `call` blocks the caller's thread
(the edge runs it in a worker thread) until the answer or the timeout.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocols.mqtt.config import MqttConfig

logger = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
TIMEOUT = 10.0
ANSWER_QUEUE = 100

Command = dict[str, Any]


class DynsecError(Exception):
    """The broker's dynamic security plugin did not answer, or refused a command."""


class DynsecClient:
    """Connected for the duration of `connected(config)`; `call(commands)` -> the responses."""

    def __init__(self, config: MqttConfig, *, timeout: float = TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        self._ready = threading.Event()
        self._lock = threading.Lock()
        # Answers as they arrive (every admin client sees every answer): bounded; when
        # full, an answer is dropped with a log line and its caller times out.
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=ANSWER_QUEUE)
        self._connect_error = ""
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            # Its own id: the bridge's data session (config.client_id) must never be kicked.
            client_id=f"{config.client_id}-dynsec-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        if config.username:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set()
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message

    # --- paho's thread ----------------------------------------------------------

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, rc: ReasonCode,
                    properties: Properties | None) -> None:
        if rc.is_failure:
            self._connect_error = str(rc)
            self._ready.set()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int,
                      codes: list[ReasonCode], properties: Properties | None) -> None:
        if any(c.is_failure for c in codes):
            self._connect_error = f"may not subscribe to {RESPONSE_TOPIC}: not a dynsec admin?"
        self._ready.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            answer = json.loads(message.payload)
        except ValueError:
            logger.warning("dynsec: an answer that is not JSON: %r", message.payload[:200])
            return
        try:
            self._answers.put_nowait(answer if isinstance(answer, dict) else {})
        except queue.Full:
            logger.warning("dynsec: answer queue full; an answer was dropped")

    # --- the caller's thread ----------------------------------------------------------

    @classmethod
    @contextmanager
    def connected(cls, config: MqttConfig, *, timeout: float = TIMEOUT) -> Iterator[DynsecClient]:
        client = cls(config, timeout=timeout)
        client._client.connect(config.host, config.port, keepalive=config.keepalive)
        client._client.loop_start()
        try:
            if not client._ready.wait(timeout):
                raise DynsecError(f"the broker {config.broker} did not accept the dynsec client")
            if client._connect_error:
                raise DynsecError(f"dynsec client refused by {config.broker}: {client._connect_error}")
            yield client
        finally:
            client._client.disconnect()
            client._client.loop_stop()

    def call(self, commands: list[Command]) -> list[dict[str, Any]]:
        """Send a batch; the plugin's responses, one per command, in order."""
        if not commands:
            return []
        with self._lock:
            batch = uuid.uuid4().hex[:12]
            tagged = [{**c, "correlationData": f"{batch}-{i}"} for i, c in enumerate(commands)]
            # QoS 0: should the connection drop, paho must not send the batch again
            # after reconnecting (a create would run twice); the caller times out instead.
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": tagged}), qos=0)
            if info.rc != paho.MQTT_ERR_SUCCESS:
                raise DynsecError(f"could not send dynsec commands: {paho.error_string(info.rc)}")
            # Answers to someone else's batch (another process's) are skipped.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    answer = self._answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty as exc:
                    raise DynsecError(
                        f"no answer from the dynamic security plugin of {self.config.broker} "
                        f"within {self.timeout} s (is it loaded? see deploy/mosquitto/)"
                    ) from exc
                responses = answer.get("responses") or []
                by_tag = {r.get("correlationData"): r for r in responses}
                if all(c["correlationData"] in by_tag for c in tagged):
                    return [by_tag[c["correlationData"]] for c in tagged]

    def send_and_forget(self, command: Command) -> None:
        """For a command whose effect ends this connection (changing this client's own roles)."""
        with self._lock:
            info = self._client.publish(CONTROL_TOPIC, json.dumps({"commands": [command]}), qos=0)
            try:
                info.wait_for_publish(timeout=self.timeout)
            except (RuntimeError, ValueError) as exc:
                # The connection went first (another runmqtt changed the same roles):
                # the caller's next pass finds out whether it took.
                raise DynsecError(f"{command['command']} not sent: {exc}") from exc

    def check(self, commands: list[Command], *, tolerate: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """`call`, raising on the first error not in `tolerate` (e.g. "already exists")."""
        responses = self.call(commands)
        for command, response in zip(commands, responses, strict=True):
            error = response.get("error")
            if error and not any(t in error for t in tolerate):
                raise DynsecError(f"{command['command']} refused: {error}")
        return responses
