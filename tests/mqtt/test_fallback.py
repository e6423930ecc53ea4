"""MQTT_PROTOCOL=auto: MQTT 5 first; a broker that answers "unsupported protocol version" gets 3.1.1."""

from __future__ import annotations

import asyncio
import contextlib
import json

import paho.mqtt.client as paho
import pytest
from amqtt.broker import Broker
from channels.db import database_sync_to_async

from bridge.models import Message
from bridge.services.rooms import room_create
from project.asgi import application
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import MqttServer
from tests.support.mqtt_device import post_and_read_back
from tests.support.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# A 3.1.1 CONNACK, "unacceptable protocol version": what a 3.1.1-only broker answers to MQTT 5.
REFUSE_V5 = bytes([0x20, 0x02, 0x00, 0x01])


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


def refusing_v5_front(backend_port: int) -> object:
    """Answers an MQTT 5 CONNECT like a 3.1.1-only broker; passes 3.1.1 through to amqtt."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        # Fixed header, remaining length (one byte here), "\x00\x04MQTT", protocol level.
        if first[8] == 5:
            writer.write(REFUSE_V5)
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend_port)
        up_writer.write(first)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return handle


async def test_auto_falls_back_to_311(settings: object, caplog: pytest.LogCaptureFixture) -> None:
    settings.MQTT_UNKNOWN_DEVICES = "register"  # type: ignore[attr-defined]
    await database_sync_to_async(room_create)(slug="lobby")
    backend_port, front_port = free_port(), free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{backend_port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    front = await asyncio.start_server(refusing_v5_front(backend_port), "127.0.0.1", front_port)  # type: ignore[arg-type]
    server = MqttServer(
        application, MqttConfig(host="127.0.0.1", port=front_port, client_id="bridge-auto", protocol="auto")
    )
    running = asyncio.create_task(server.run())
    try:
        await asyncio.wait_for(server.connected.wait(), timeout=10)
        await asyncio.sleep(0.5)  # the consumer subscribes
        envelope = json.loads(await asyncio.to_thread(post_and_read_back, backend_port, "old-device", "hello over 3.1.1", protocol=paho.MQTTv311))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        front.close()
        await broker.shutdown()
    assert envelope["text"] == "hello over 3.1.1"
    assert "does not speak MQTT 5; using MQTT 3.1.1" in caplog.text
    assert f"connected to 127.0.0.1:{front_port} (MQTT 3.1.1" in caplog.text
    assert await database_sync_to_async(lambda: list(Message.objects.values_list("text", flat=True)))() == [
        "hello over 3.1.1"
    ]
