"""Alert rules as they run: readings through mosquitto and runmqtt, judged by a telemetry
worker, and the alerts reaching a browser's WebSocket, an MQTT subscriber and an XMPP occupant
(Prosody), once each when firing starts and once when it clears."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.http import login_cookie, request
from tests.support.mosquitto import Mosquitto, mosquitto_server
from tests.support.mqtt_device import TestDevice
from tests.support.processes import manage, start_manage, wait_until
from tests.support.prosody import Prosody
from tests.support.stack import Stack, provision
from tests.xmpp.client import Seen, xmpp_client

pytestmark = pytest.mark.slow

DEVICES = {"sensor-1": "pw-1", "sensor-2": "pw-2", "pump-7": "pw-7", "listener": "pw-l"}
HOVER = [29, 31, 30.5, 29.5, 30.2, 31, 29.5, 28.5, 29, 29.9, 29.5]  # crosses 30, clears at 29


@pytest.fixture
def everything(tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, str, Mosquitto, Prosody]]:
    broker = mosquitto_server(tmp_path / "mosquitto", DEVICES)
    prosody = Prosody(base=tmp_path)
    prosody.start()
    prosody.register("carol", "carol-pw")
    stack = provision(tmp_path, REDIS_URL=redis_url, MQTT_URL=broker.bridge_url,
                      MQTT_UNKNOWN_DEVICES="refuse", MQTT_SWEEP_INTERVAL="1",
                      TELEMETRY_SWEEP_INTERVAL="1", **prosody.bridge_settings())
    try:
        for device in DEVICES:
            manage(["devices", "add", device, "--room", "lobby"], env=stack.env)
        base = stack.asgi("web")
        mqtt = start_manage("runmqtt", ["runmqtt", "--client-id", "bridge-a"], env=stack.env, log_dir=tmp_path)
        stack.procs.append(mqtt)
        wait_until(lambda: "subscribed (mid" in mqtt.output(), what="runmqtt subscribed", proc=mqtt)
        xmpp = start_manage("runxmpp", ["runxmpp"], env=stack.env, log_dir=tmp_path)
        stack.procs.append(xmpp)
        wait_until(lambda: f"bridging lobby@{prosody.muc}" in xmpp.output(), what="runxmpp bridging", proc=xmpp)
        stack.procs.append(start_manage("telemetry", ["runworker", "bridge-telemetry"], env=stack.env,
                                        log_dir=tmp_path))
        yield stack, base, broker, prosody
    finally:
        stack.stop()
        broker.stop()
        prosody.stop()


def add_rule(base: str, token: str, rule: dict[str, Any]) -> None:
    status, body = request(f"{base}/api/alerts/rules", method="POST", body=rule,
                           headers={"Authorization": f"Token {token}"})
    assert status == 201, body


def alerts(base: str) -> list[tuple[str, str, str, str | None]]:
    status, body = request(f"{base}/api/rooms/lobby/messages?limit=500")
    assert status == 200, body
    return [(m["data"]["alert"]["name"], m["data"]["alert"]["device"], m["data"]["alert"]["state"],
             m["data"]["alert"]["reason"])
            for m in body["messages"] if m["origin"] == "system" and m["data"] and "alert" in m["data"]]


def groupchat_starting(text: str) -> Any:
    return lambda s: isinstance(s, Seen) and s.kind == "groupchat" and not s.delayed and s.body.startswith(text)


class WsMessages:
    """A socket's message frames, kept in order, so looking for one never drops another."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.seen: list[dict[str, Any]] = []

    async def find(self, prefix: str) -> dict[str, Any]:
        for message in self.seen:
            if message["text"].startswith(prefix):
                return message
        while True:
            frame = json.loads(await asyncio.wait_for(self.sock.recv(), timeout=30))
            if frame["type"] == "message":
                self.seen.append(frame["message"])
                if frame["message"]["text"].startswith(prefix):
                    return dict(frame["message"])


def mqtt_alert(listener: TestDevice, prefix: str) -> dict[str, Any]:
    while True:
        envelope = json.loads(listener.expect("rooms/lobby/messages", timeout=30))
        if envelope["text"].startswith(prefix):
            return dict(envelope)


async def test_an_alert_fires_once_and_clears_once_on_every_edge_and_silence_raises_one(
    everything: tuple[Stack, str, Mosquitto, Prosody],
) -> None:
    stack, base, broker, prosody = everything
    status, body = request(f"{base}/api/alerts/rules", headers={"Authorization": f"Token {stack.token}"})
    for rule in body["rules"]:  # the demo's rule: only this test's rules here
        request(f"{base}/api/alerts/rules/{rule['id']}", method="DELETE",
                headers={"Authorization": f"Token {stack.token}"})
    add_rule(base, stack.token, {"name": "hot", "device": "sensor-1", "metric": "temperature",
                                 "condition": "above", "threshold": 30, "hysteresis": 1, "notify": ["lobby"]})
    add_rule(base, stack.token, {"name": "quiet", "device": "sensor-2", "condition": "silent",
                                 "silent_seconds": 3, "notify": ["lobby"]})
    add_rule(base, stack.token, {"name": "gone", "device": "pump-7", "condition": "silent",
                                 "silent_seconds": 600, "notify": ["lobby"]})
    listener = TestDevice(broker.port, "listener", DEVICES["listener"])
    listener.subscribe("rooms/lobby/messages")
    sensor = TestDevice(broker.port, "sensor-1", DEVICES["sensor-1"])
    room = f"lobby@{prosody.muc}"
    cookie = await asyncio.to_thread(login_cookie, base, "demo", "demo")
    async with websockets.connect(  # type: ignore[arg-type]
        base.replace("http://", "ws://") + "/ws/rooms/lobby/", origin=base,
        additional_headers={"Cookie": cookie},
    ) as sock, xmpp_client(f"carol@{prosody.domain}", "carol-pw", port=prosody.c2s_port,
                           ca_file=prosody.ca_file) as carol:
        carol.join(room, "carol")
        frames = WsMessages(sock)
        for i, value in enumerate(HOVER):
            await asyncio.to_thread(sensor.publish_all, [
                ("devices/sensor-1/telemetry", json.dumps({"id": f"h-{i}", "temperature": value}))
            ])
        fired = await frames.find("ALERT sensor-1")
        cleared = await frames.find("CLEARED sensor-1")
        assert fired["data"]["alert"]["value"] == 31 and cleared["data"]["alert"]["value"] == 28.5
        assert fired["sender"] == {"kind": "system", "name": "alerts"}
        assert (await asyncio.to_thread(mqtt_alert, listener, "ALERT sensor-1"))["seq"] == fired["seq"]
        assert (await asyncio.to_thread(mqtt_alert, listener, "CLEARED sensor-1"))["seq"] == cleared["seq"]
        await carol.expect(groupchat_starting("ALERT sensor-1"), timeout=30)
        await carol.expect(groupchat_starting("CLEARED sensor-1"), timeout=30)

        # sensor-2 reports once, then says nothing; pump-7 reports, then its Last Will says offline.
        quiet = TestDevice(broker.port, "sensor-2", DEVICES["sensor-2"])
        quiet.publish_all([("devices/sensor-2/telemetry", json.dumps({"temperature": 20}))])
        pump = TestDevice(broker.port, "pump-7", DEVICES["pump-7"])
        pump.publish_all([("devices/pump-7/status", "online"),
                          ("devices/pump-7/telemetry", json.dumps({"pressure": 2.1}))])
        pump.die()
        silent = await frames.find("ALERT sensor-2")
        assert silent["data"]["alert"]["reason"] == "silent"
        offline = await frames.find("ALERT pump-7")
        assert offline["data"]["alert"]["reason"] == "offline"
        await carol.expect(groupchat_starting("ALERT pump-7"), timeout=30)
        quiet.close()
    sensor.close()
    listener.close()
    # Once each, whatever the sweeps did since: the history is the truth.
    await asyncio.sleep(3)  # several sweeps (1 s) that must not repeat any of them
    assert sorted(alerts(base)) == sorted([
        ("gone", "pump-7", "firing", "offline"), ("hot", "sensor-1", "cleared", None),
        ("hot", "sensor-1", "firing", None), ("quiet", "sensor-2", "firing", "silent"),
    ])
