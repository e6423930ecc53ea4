"""MQTT_PROTOCOL=auto: MQTT 5 first; a broker that answers "unsupported protocol version" gets 3.1.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading

import paho.mqtt.client as paho
import pytest
from amqtt.broker import Broker
from channels.db import database_sync_to_async
from paho.mqtt.enums import CallbackAPIVersion

from bridge.models import Message
from bridge.services.rooms import room_create
from project.asgi import application
from protocols.mqtt.config import MqttConfig
from protocols.mqtt.server import MqttServer
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


def _post_as_device(port: int) -> bytes:
    """Post over 3.1.1 and wait for the bridge to publish it back on the room's topic."""
    subscribed, back = threading.Event(), threading.Event()
    got: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="old-device", protocol=paho.MQTTv311)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, u, m: (got.append(m.payload), back.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("rooms/lobby/messages", qos=1)
    assert subscribed.wait(10)
    client.publish("devices/old-device/rooms/lobby", "hello over 3.1.1", qos=1)
    assert back.wait(10), "the bridge did not publish it back"
    client.disconnect()
    client.loop_stop()
    return got[0]


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
        envelope = json.loads(await asyncio.to_thread(_post_as_device, backend_port))
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
