"""The MQTT protocol server keeps its connection, or gets it back, whatever happens on the loop."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bridge.health import HEALTH
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import HEALTH_CHECK, MqttServer
from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER, mosquitto_server
from tests.support.mqtt_device import TestDevice

pytestmark = pytest.mark.slow


async def test_a_failure_while_reading_drops_the_connection_and_the_message_comes_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    broker = mosquitto_server(tmp_path / "broker", {"sensor-1": "pw"})
    events: list[dict[str, Any]] = []
    got = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            event = await receive()
            events.append(event)
            if event["type"] == "mqtt.connect":
                await send({"type": "mqtt.subscribe", "topics": ["devices/#"], "qos": 1})
            elif event["type"] == "mqtt.message":
                await send({"type": "mqtt.ack", "ack_id": event["ack_id"]})
                got.set()

    server = MqttServer(app, MqttConfig(
        host="127.0.0.1", port=broker.port, client_id="bridge-resilience", protocol="5",
        username=BRIDGE_USER, password=BRIDGE_PASSWORD,
    ))
    real = server._on_message
    failures = []

    def failing_once(*args: Any) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug in the message callback")
        real(*args)

    server._on_message = failing_once  # type: ignore[method-assign]
    running = asyncio.create_task(server.run())
    device = None
    try:
        await asyncio.wait_for(server.connected.wait(), 10)
        await asyncio.sleep(0.3)  # the SUBACK
        device = await asyncio.to_thread(TestDevice, broker.port, "sensor-1", "pw")
        device.client.publish("devices/sensor-1/telemetry", b'{"t": 1}', qos=1)
        await asyncio.wait_for(got.wait(), 15)  # after the reconnect: the broker sent it again
    finally:
        if device is not None:
            device.close()
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        broker.stop()
    kinds = [event["type"] for event in events]
    assert kinds[:3] == ["mqtt.connect", "mqtt.disconnect", "mqtt.connect"]
    messages = [event for event in events if event["type"] == "mqtt.message"]
    assert [m["payload"] for m in messages] == [b'{"t": 1}']
    assert "a bug in the message callback" in caplog.text


async def test_a_frozen_broker_is_noticed_by_keep_alive_and_rejoined_when_it_thaws(tmp_path: Path) -> None:
    broker = mosquitto_server(tmp_path / "broker", {"sensor-1": "pw"})
    assert broker.proc is not None
    pid = broker.proc.popen.pid
    kinds: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            event = await receive()
            kinds.append(event["type"])
            if event["type"] == "mqtt.connect":
                await send({"type": "mqtt.subscribe", "topics": ["devices/#"], "qos": 1})

    server = MqttServer(app, MqttConfig(
        host="127.0.0.1", port=broker.port, client_id="bridge-frozen", protocol="5",
        username=BRIDGE_USER, password=BRIDGE_PASSWORD, keepalive=2,
    ))
    running = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.connected.wait(), 10)
        os.kill(pid, signal.SIGSTOP)  # the TCP connection stays up; nothing answers on it
        try:
            for _ in range(100):
                if "mqtt.disconnect" in kinds:
                    break
                await asyncio.sleep(0.1)
            assert "mqtt.disconnect" in kinds  # noticed within two keep-alive periods or so
            assert not server.connected.is_set()
            assert not HEALTH.snapshot()[HEALTH_CHECK].ok
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(server.connected.wait(), 20)
        assert not running.done()
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        broker.stop()
    assert kinds.count("mqtt.connect") == 2
