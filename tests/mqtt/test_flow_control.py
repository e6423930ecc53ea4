"""The MQTT protocol server's inbound queue is bounded: a stalled application stops the reading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from protocols.mqtt import server as server_module
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import MqttServer
from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER, mosquitto_server
from tests.support.mqtt_device import TestDevice

pytestmark = pytest.mark.slow

BOUND = 50
FLOOD = 2000


async def test_a_stalled_application_holds_at_most_the_bound_and_then_gets_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "MAX_QUEUED", BOUND)
    broker = mosquitto_server(tmp_path / "broker", {"flood-1": "pw"})
    release, subscribed = asyncio.Event(), asyncio.Event()
    received: list[dict[str, Any]] = []

    async def stalled_app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "mqtt.connect"
        await send({"type": "mqtt.subscribe", "topics": ["devices/#"], "qos": 1})
        subscribed.set()
        await release.wait()  # reads nothing for a while, like a consumer whose database hangs
        while True:
            event = await receive()
            if event["type"] == "mqtt.message":
                received.append(event)

    server = MqttServer(stalled_app, MqttConfig(
        host="127.0.0.1", port=broker.port, client_id="bridge-flow", protocol="5",
        username=BRIDGE_USER, password=BRIDGE_PASSWORD,
    ))
    running = asyncio.create_task(server.run())
    device = None
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        await asyncio.sleep(0.5)  # the SUBACK
        device = await asyncio.to_thread(TestDevice, broker.port, "flood-1", "pw")
        for i in range(FLOOD):
            device.client.publish("devices/flood-1/telemetry", f'{{"i": {i}}}', qos=0)
        most = 0
        for _ in range(30):  # three seconds of flood against a stalled application
            most = max(most, server._queue.qsize())
            await asyncio.sleep(0.1)
        stalled_at = server.received
        release.set()
        for _ in range(100):
            if len(received) >= FLOOD // 2:
                break
            await asyncio.sleep(0.1)
    finally:
        if device is not None:
            device.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        broker.stop()
    print(f"flow control: queue peaked at {most} (bound {BOUND}) while stalled; {stalled_at} taken "
          f"from the socket then; {len(received)} of {FLOOD} QoS 0 delivered after release")
    assert most <= BOUND and stalled_at <= BOUND
    assert len(received) >= FLOOD // 2  # reading resumed: flow control, not a stop
