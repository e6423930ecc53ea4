"""`runbridge`'s MQTT service: the embedded broker (mosquitto, or amqtt without it) and the server."""

from __future__ import annotations

import asyncio
import json
import socket

import paho.mqtt.client as paho
import pytest
from channels.db import database_sync_to_async

from bridge.embedded import EmbeddedContext
from bridge.models import Message
from bridge.services.rooms import room_create
from protocols.mqtt import broker as broker_module
from protocols.mqtt.broker import BrokerError, plan_broker
from protocols.mqtt.embedded import serve
from tests.support.mqtt_device import post_and_read_back
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize("kind", ["mosquitto", "amqtt"])
async def test_the_embedded_broker_bridges_devices(
    kind: str, monkeypatch: pytest.MonkeyPatch, settings: object
) -> None:
    if kind == "amqtt":
        monkeypatch.setattr(broker_module, "find_mosquitto", lambda: None)
    elif broker_module.find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: run the README's test command (make test)")
    settings.MQTT_URL = None  # type: ignore[attr-defined]
    settings.MQTT_UNKNOWN_DEVICES = "register"  # type: ignore[attr-defined]
    await database_sync_to_async(room_create)(slug="lobby")
    port = free_port()
    ctx = EmbeddedContext(host="127.0.0.1", port=free_port(), mqtt_port=port)
    service = asyncio.create_task(serve(ctx))
    try:
        await asyncio.sleep(1.5)  # the broker starts, the server connects and subscribes
        assert not service.done(), service
        protocol = paho.MQTTv311 if kind == "amqtt" else paho.MQTTv5
        payload = await asyncio.to_thread(post_and_read_back, port, "dev-1", "hello embedded", protocol=protocol)
    finally:
        service.cancel()
        await asyncio.gather(service, return_exceptions=True)
    assert json.loads(payload)["sender"] == {"kind": "device", "name": "dev-1"}
    assert f"embedded {kind} broker on mqtt://127.0.0.1:{port}" in ctx.banner[0]
    assert await database_sync_to_async(Message.objects.count)() == 1


def test_a_busy_port_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}.*--mqtt-port"):
            plan_broker("127.0.0.1", port)
