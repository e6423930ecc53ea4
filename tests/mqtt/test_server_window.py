"""How many publishes the MQTT server keeps unanswered: many, but never more than the broker takes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import PUBLISH_WINDOW, MqttServer
from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER, mosquitto_server
from tests.support.processes import free_port, require_binary, running, start, wait_for_port

pytestmark = pytest.mark.slow
COUNT = 300


async def _publish_all(config: MqttConfig) -> tuple[list[str], int, list[str]]:
    """COUNT publishes with ids, given at once: their outcomes, paho's window, the events seen."""
    outcomes: list[str] = []
    kinds: list[str] = []
    done = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            event = await receive()
            kinds.append(event["type"])
            if event["type"] == "mqtt.connect" and not outcomes:
                for n in range(COUNT):
                    await send({"type": "mqtt.publish", "topic": "rooms/lobby/messages",
                                "payload": b"m%d" % n, "qos": 1, "publish_id": n})
            elif event["type"] == "mqtt.published":
                outcomes.append(event["outcome"])
                if len(outcomes) == COUNT:
                    done.set()

    server = MqttServer(app, config)
    task = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(done.wait(), 20)
        assert server._client is not None
        return outcomes, server._client._max_inflight_messages, kinds
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_stock_mosquitto_gets_no_more_than_its_receive_maximum(tmp_path: Path) -> None:
    # mosquitto as installed: its default max_inflight_messages (20) is the Receive Maximum
    # of its CONNACK, and a client over it is a protocol error.
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
    with running(start("mosquitto-stock", [binary, "-c", str(tmp_path / "mosquitto.conf")], log_dir=tmp_path)):
        wait_for_port(port)
        outcomes, window, kinds = await _publish_all(
            MqttConfig(host="127.0.0.1", port=port, client_id="bridge-window", protocol="5"))
    assert outcomes == ["accepted"] * COUNT
    assert window == 20
    assert "mqtt.disconnect" not in kinds


async def test_the_shipped_broker_configuration_lets_a_claims_worth_go_at_once(tmp_path: Path) -> None:
    broker = mosquitto_server(tmp_path / "broker")  # deploy/mosquitto/mosquitto.conf: 1000
    try:
        outcomes, window, kinds = await _publish_all(MqttConfig(
            host="127.0.0.1", port=broker.port, client_id="bridge-window", protocol="5",
            username=BRIDGE_USER, password=BRIDGE_PASSWORD,
        ))
    finally:
        broker.stop()
    assert outcomes == ["accepted"] * COUNT
    assert window == PUBLISH_WINDOW
    assert "mqtt.disconnect" not in kinds
