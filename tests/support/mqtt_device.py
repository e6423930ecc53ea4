"""A device for integration tests: a paho client with the device's own broker credentials."""

from __future__ import annotations

import itertools
import queue
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

_ids = itertools.count(1)


class TestDevice:
    """Connects on creation (MQTT 5), with `devices/<name>/status` = offline as its Last Will."""

    __test__ = False  # not a pytest class

    def __init__(
        self, port: int, name: str, password: str, *, inflight: int = 100, host: str = "127.0.0.1",
        client_id: str | None = None,
    ) -> None:
        """`client_id`: the device's own name where the broker binds it (bridge-managed)."""
        self.name = name
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.granted: list[ReasonCode] = []
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{name}-{next(_ids)}-{uuid.uuid4().hex[:6]}",
            protocol=paho.MQTTv5,
        )
        client.username_pw_set(name, password)
        client.will_set(f"devices/{name}/status", "offline", qos=1, retain=True)
        client.max_inflight_messages_set(inflight)
        client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        client.on_subscribe = lambda c, u, mid, rcs, p: (self.granted.extend(rcs), self._subscribed.set())
        client.on_disconnect = lambda c, u, f, rc, p: self.disconnected.set()
        client.on_message = lambda c, u, m: self.messages.put((m.topic, m.payload))
        client.connect(host, port, keepalive=30)
        client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError(f"device {name} could not connect")
        self.client = client

    def subscribe(self, *topics: str) -> list[ReasonCode]:
        """The broker's answer for each filter (granted QoS, or a refusal such as 0x87)."""
        self._subscribed.clear()
        self.granted = []
        self.client.subscribe([(t, 1) for t in topics])
        if not self._subscribed.wait(10):
            raise TimeoutError("no SUBACK")
        return list(self.granted)

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> paho.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def publish_all(self, items: list[tuple[str, str | bytes]]) -> None:
        """Publish in order and wait until the broker has acknowledged every one."""
        infos = [self.publish(topic, payload) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(timeout=60)

    def expect(self, topic: str, *, timeout: float = 15) -> Any:
        """The next payload on `topic` (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name} got nothing on {topic}")
            try:
                got_topic, payload = self.messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if got_topic == topic:
                return payload

    def die(self) -> None:
        """Disconnect so that the broker publishes the Last Will (MQTT 5 reason 0x04)."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def post_and_read_back(port: int, device: str, text: str, *, protocol: int = paho.MQTTv5) -> bytes:
    """An anonymous device posts `text` into lobby and waits for the bridge to publish it
    back on rooms/lobby/messages; returns that envelope's payload."""
    subscribed, back = threading.Event(), threading.Event()
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=protocol)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: (got.append(m.payload), back.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe("rooms/lobby/messages", qos=1)
        assert subscribed.wait(10), "no SUBACK"
        client.publish(f"devices/{device}/rooms/lobby", text, qos=1)
        assert back.wait(15), "nothing came back on rooms/lobby/messages"
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0]


def connack(port: int, username: str, password: str, *, client_id: str) -> ReasonCode:
    """The broker's answer to one CONNECT (MQTT 5), e.g. "Not authorized"."""
    answered = threading.Event()
    codes: list[ReasonCode] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.username_pw_set(username, password)
    client.on_connect = lambda c, u, f, rc, p: (codes.append(rc), answered.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not answered.wait(10):
            raise TimeoutError("no CONNACK")
    finally:
        client.disconnect()
        client.loop_stop()
    return codes[0]
