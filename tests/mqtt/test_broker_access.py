"""The broker enforces who may read and write what, from the database (mosquitto's dynamic
security, the repo's configuration, a real runmqtt with MQTT_DYNSEC=1 on Redis).

Devices get their broker credentials through `devices add --password` (the bridge
creates their clients); nothing here grants a device anything by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt.test_processes import runmqtt, stored, wait_until
from tests.support.http import request
from tests.support.mosquitto import Mosquitto, mosquitto_server
from tests.support.mqtt_device import TestDevice, connack
from tests.support.processes import Proc, manage, query
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow

PASSWORDS = {"sensor-1": "pw-sensor-1", "sensor-2": "pw-sensor-2", "spy": "pw-spy"}
BRIDGE_ID = "bridge-sec-1"


@pytest.fixture
def managed(tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, Mosquitto, Proc]]:
    broker = mosquitto_server(tmp_path / "mosquitto", bridge_managed=True)
    stack = provision(
        tmp_path, rooms=("lobby",), REDIS_URL=redis_url, MQTT_SWEEP_INTERVAL="1",
        MQTT_UNKNOWN_DEVICES="refuse", MQTT_DYNSEC_RESYNC="30", **broker.bridge_env(),
    )
    try:
        manage(["rooms", "add", "vault", "--private"], env=stack.env)
        for device, password in PASSWORDS.items():
            manage(["devices", "add", device, "--room", "lobby", "--password", password], env=stack.env)
        manage(["rooms", "members", "add", "vault", "--device", "sensor-2", "--listen-only"], env=stack.env)
        bridge = runmqtt(stack, "runmqtt", BRIDGE_ID)
        yield stack, broker, bridge
    finally:
        stack.stop()
        broker.stop()


def device(broker: Mosquitto, name: str) -> TestDevice:
    return TestDevice(broker.port, name, PASSWORDS[name], client_id=name)


def stream(sender: TestDevice, count: int) -> None:
    sender.publish_all([
        (f"devices/{sender.name}/rooms/lobby", json.dumps({"text": f"{sender.name} {i}", "id": f"{sender.name}-{i}"}))
        for i in range(count)
    ])


def assert_each_stored_once(stack: Stack, senders: list[str], count: int) -> None:
    rows = query(stack.database_url, "SELECT text FROM bridge_message")
    texts = sorted(str(r[0]) for r in rows)
    assert texts == sorted(f"{s} {i}" for s in senders for i in range(count))


def test_a_device_cannot_take_the_bridges_shared_group(managed: tuple[Stack, Mosquitto, Proc]) -> None:
    stack, broker, _ = managed
    spy = device(broker, "spy")
    codes = spy.subscribe("$share/bridge/devices/#", "$share/x/devices/sensor-1/#", "devices/#", "rooms/+/messages")
    assert [c.is_failure for c in codes] == [True, True, True, True], codes
    senders = [device(broker, "sensor-1"), device(broker, "sensor-2")]
    for sender in senders:
        stream(sender, 100)
    wait_until(lambda: stored(stack) == 200, what="every message of both devices")
    time.sleep(1)  # anything stored twice would be in by now: the bridge acknowledges after commit
    assert_each_stored_once(stack, ["sensor-1", "sensor-2"], 100)
    assert spy.messages.empty()
    for sender in [*senders, spy]:
        sender.close()


def test_a_device_cannot_connect_as_the_bridge_or_another_device(managed: tuple[Stack, Mosquitto, Proc]) -> None:
    stack, broker, bridge = managed
    sender = device(broker, "sensor-1")
    assert str(connack(broker.port, "spy", PASSWORDS["spy"], client_id=BRIDGE_ID)) == "Not authorized"
    assert str(connack(broker.port, "spy", PASSWORDS["spy"], client_id="sensor-1")) == "Not authorized"
    stream(sender, 100)
    wait_until(lambda: stored(stack) == 100, what="every message")
    assert_each_stored_once(stack, ["sensor-1"], 100)
    assert bridge.output().count("connected to") == 1  # never kicked off
    assert "not authorised" in broker.log()  # the broker logs the refused connections
    sender.close()


def test_a_private_room_reaches_its_members_only(managed: tuple[Stack, Mosquitto, Proc]) -> None:
    stack, broker, _ = managed
    member, outsider = device(broker, "sensor-2"), device(broker, "sensor-1")
    assert not any(c.is_failure for c in member.subscribe("rooms/vault/messages"))
    assert all(c.is_failure for c in outsider.subscribe("rooms/vault/messages", "rooms/+/messages", "rooms/#"))
    assert not any(c.is_failure for c in outsider.subscribe("devices/sensor-1/errors", "rooms/lobby/messages"))
    base = stack.asgi("web")
    status, _ = request(f"{base}/api/rooms/vault/messages", method="POST", body={"text": "for members"},
                        headers={"Authorization": f"Token {stack.token}"})
    assert status == 201
    assert json.loads(member.expect("rooms/vault/messages"))["text"] == "for members"
    # Posting is refused too, by the bridge: sensor-1 may not post into vault.
    outsider.publish("devices/sensor-1/rooms/vault", "let me in")
    assert json.loads(outsider.expect("devices/sensor-1/errors"))["code"] == "forbidden_room"
    assert [t for t, _ in list(outsider.messages.queue) if "vault" in t] == []
    assert stored(stack, "vault") == 1
    member.close()
    outsider.close()


def test_removal_from_a_room_and_disabling_cut_open_connections(managed: tuple[Stack, Mosquitto, Proc]) -> None:
    stack, broker, _ = managed
    member = device(broker, "sensor-2")
    assert not any(c.is_failure for c in member.subscribe("rooms/vault/messages"))
    started = time.monotonic()
    manage(["rooms", "members", "remove", "vault", "--device", "sensor-2"], env=stack.env)
    assert member.disconnected.wait(10), "the broker kept a removed member connected"
    print(f"removed member disconnected {time.monotonic() - started:.2f} s after the command started")
    member.close()
    again = device(broker, "sensor-2")
    assert all(c.is_failure for c in again.subscribe("rooms/vault/messages"))
    again.close()

    spy = device(broker, "spy")
    started = time.monotonic()
    manage(["devices", "disable", "spy"], env=stack.env)
    assert spy.disconnected.wait(10), "the broker kept a disabled device connected"
    print(f"disabled device disconnected {time.monotonic() - started:.2f} s after the command started")
    spy.close()
    assert str(connack(broker.port, "spy", PASSWORDS["spy"], client_id="spy")) == "Not authorized"
    manage(["devices", "remove", "sensor-1"], env=stack.env)
    wait_until(
        lambda: str(connack(broker.port, "sensor-1", PASSWORDS["sensor-1"], client_id="sensor-1")) == "Not authorized",
        timeout=10, what="the removed device refused",
    )
