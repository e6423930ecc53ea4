"""The MQTT consumer in-process, through the project's router, with MqttCommunicator."""

from __future__ import annotations

import asyncio
import json

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.test import override_settings

from bridge.models import DeviceCommand, Identity, Message, Telemetry
from bridge.selectors import room_get
from bridge.services.identities import identity_for_user
from bridge.services.members import MemberRef, member_add
from bridge.services.messages import amessage_post
from bridge.services.rooms import room_create
from project.asgi import application
from protocols.mqtt.testing import MqttCommunicator

pytestmark = pytest.mark.django_db(transaction=True)


def _messages(room: str = "lobby") -> list[tuple[str, str, str]]:
    return list(
        Message.objects.filter(room__slug=room)
        .order_by("seq")
        .values_list("sender__name", "origin", "text")
    )


async def test_subscribes_to_every_device_topic_through_the_shared_group(
    bridge: MqttCommunicator,
) -> None:
    assert bridge.subscribed == ["$share/bridge/devices/#"]


async def test_text_from_a_device_is_stored_and_published_on_the_room_topic(
    bridge: MqttCommunicator,
) -> None:
    await bridge.deliver("devices/sensor-1/rooms/lobby", "hello from the sensor")

    assert await database_sync_to_async(_messages)() == [("sensor-1", "mqtt", "hello from the sensor")]
    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    envelope = json.loads(published["payload"])
    assert envelope["sender"] == {"kind": "device", "name": "sensor-1"}
    assert envelope["text"] == "hello from the sensor"
    assert envelope["seq"] == 1
    assert published["qos"] == 1


async def test_the_same_json_id_twice_stores_one_message(bridge: MqttCommunicator) -> None:
    payload = json.dumps({"text": "once", "id": "m-1", "data": {"t": 21.5}})
    await bridge.deliver("devices/sensor-1/rooms/lobby", payload)
    await bridge.deliver("devices/sensor-1/rooms/lobby", payload)

    rows = await database_sync_to_async(
        lambda: list(Message.objects.values_list("text", "data"))
    )()
    assert rows == [("once", {"t": 21.5})]


async def test_every_room_message_is_published_once_whoever_posted_it(
    bridge: MqttCommunicator,
) -> None:
    alice = await database_sync_to_async(Identity.objects.create)(kind="user", name="alice")
    await amessage_post(room="lobby", sender=alice, origin="web", text="hi devices")

    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    assert json.loads(published["payload"])["sender"] == {"kind": "user", "name": "alice"}
    await bridge.receive_nothing(timeout=0.3)
    assert not [e for e in bridge.published if e["topic"] == "rooms/lobby/messages"]


@pytest.mark.parametrize(
    ("topic", "payload", "code"),
    [
        ("devices/sensor-1/rooms/lobby", b"\xff\xfe not utf-8", "invalid_utf8"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "unterminated', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "x", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
        ("devices/sensor-1/telemetry", b"[" * 5000 + b"]" * 5000, "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b"x" * 20000, "too_large"),
        ("devices/sensor-1/rooms/nowhere", b"hello", "room_not_found"),
        ("devices/sensor-1/rooms/vault", b"hello", "forbidden_room"),
        ("devices/stranger/rooms/lobby", b"hello", "unknown_device"),
        ("devices/sensor-1/rooms/lobby/extra", b"hello", "invalid_topic"),
        ("devices/sensor-1/telemetry", b"[1, 2]", "invalid_telemetry"),
        ("devices/sensor-1/telemetry", b'{"state": "on", "tags": [1, 2]}', "invalid_telemetry"),
        ("devices/sensor-1/telemetry", b'{"t": 1e300}', "invalid_telemetry"),
        ("devices/sensor-1/telemetry", b'{"a": ' * 12 + b"1" + b"}" * 12, "too_deep"),
        ("devices/sensor-1/telemetry",
         ("{" + ", ".join(f'"m{i}": {i}' for i in range(300)) + "}").encode(), "too_large"),
        ("devices/sensor-1/telemetry", b"x" * 20000, "too_large"),
        ("devices/sensor-1/status", b"sleeping", "invalid_status"),
        # Hostile bytes that once reached the database (a 500 on PostgreSQL) or the channel layer.
        ("devices/sensor-1/rooms/lobby", b'{"text": "a\\u0000b"}', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b"a\x00b", "invalid_text"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "\\ud800"}', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "hi", "id": "\\u0000"}', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "hi", "id": 18446744073709551616}', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "hi", "data": {"n": 18446744073709551616}}', "invalid_json"),
        ("devices/sensor-1/rooms/lobby", b'{"text": "hi", "data": ' + b'{"a":' * 970 + b"1" + b"}" * 970 + b"}", "invalid_json"),
        ("devices/sensor-1/telemetry", b'{"t": "\\u0000"}', "invalid_json"),
        ("devices/sensor-1/telemetry", b'{"t": 1, "id": "\\u0007"}', "invalid_id"),
    ],
)
async def test_refused_input_gets_an_error_on_the_devices_error_topic(
    bridge: MqttCommunicator, topic: str, payload: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    await bridge.deliver(topic, payload)

    device = topic.split("/")[1]
    error = await bridge.receive_publish(topic=f"devices/{device}/errors")
    assert json.loads(error["payload"]) == {
        "code": code, "detail": json.loads(error["payload"])["detail"], "topic": topic
    }
    assert any(code in record.getMessage() for record in caplog.records)
    # Refused, acknowledged, and the consumer carries on.
    await bridge.deliver("devices/sensor-1/rooms/lobby", "still here")
    assert await database_sync_to_async(_messages)() == [("sensor-1", "mqtt", "still here")]


async def test_a_topic_naming_no_valid_device_is_logged_and_acknowledged(
    bridge: MqttCommunicator, caplog: pytest.LogCaptureFixture
) -> None:
    await bridge.deliver("devices/bad id!/rooms/lobby", "hello")
    assert any("invalid_topic" in r.getMessage() for r in caplog.records)
    assert not bridge.published


async def test_telemetry_is_stored_once_per_id(bridge: MqttCommunicator) -> None:
    await bridge.deliver("devices/sensor-1/telemetry", '{"id": "r1", "temperature": 21.5}')
    await bridge.deliver("devices/sensor-1/telemetry", '{"id": "r1", "temperature": 21.5}')
    await bridge.deliver("devices/sensor-1/telemetry", '{"humidity": 40}')

    rows = await database_sync_to_async(lambda: list(Telemetry.objects.values_list("data", flat=True)))()
    assert rows == [{"id": "r1", "temperature": 21.5}, {"humidity": 40}]


async def test_status_and_last_will_become_presence_in_the_devices_rooms(
    bridge: MqttCommunicator,
) -> None:
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add("room.kitchen", listener)

    await bridge.deliver("devices/sensor-1/status", "online", retain=True)
    online = await layer.receive(listener)
    await bridge.deliver("devices/sensor-1/status", "offline")
    offline = await layer.receive(listener)

    assert online == {
        "type": "room.presence", "who": {"kind": "device", "name": "sensor-1"},
        "state": "online", "origin": "mqtt", "room": "kitchen",
    }
    assert offline["state"] == "offline"


def _user_identity(name: str, *, member_of: str | None = None) -> Identity:
    user = get_user_model().objects.create_user(username=name, password="pw")
    if member_of is not None:
        member_add(room=room_get(slug=member_of), member=MemberRef(username=name))
    return identity_for_user(user)


async def test_cmd_in_a_room_is_published_to_the_device(bridge: MqttCommunicator) -> None:
    alice = await database_sync_to_async(_user_identity)("alice", member_of="lobby")
    bob = await database_sync_to_async(_user_identity)("bob")  # reads the lobby, no tie to sensor-1
    await amessage_post(room="lobby", sender=bob, origin="web", text="/cmd sensor-1 self-destruct")
    await amessage_post(room="lobby", sender=alice, origin="web", text="/cmd sensor-1 reboot now")

    command = await bridge.receive_publish(topic="devices/sensor-1/commands")
    body = json.loads(command["payload"])
    assert body["text"] == "reboot now"
    assert body["sender"] == {"kind": "user", "name": "alice"}
    # The chat messages themselves are ordinary room messages too.
    await bridge.receive_publish(topic="rooms/lobby/messages")
    assert await database_sync_to_async(DeviceCommand.objects.count)() == 1


async def test_cmd_from_xmpp_or_for_a_device_outside_the_room_is_ignored(bridge: MqttCommunicator) -> None:
    mallory = await database_sync_to_async(Identity.objects.create)(kind="xmpp", name="mallory")
    alice = await database_sync_to_async(_user_identity)("alice", member_of="vault")
    await amessage_post(room="lobby", sender=mallory, origin="xmpp", text="/cmd sensor-1 open the valve")
    await amessage_post(room="vault", sender=alice, origin="web", text="/cmd sensor-1 open the valve")
    await bridge.receive_publish(topic="rooms/lobby/messages")
    await bridge.receive_publish(topic="rooms/vault/messages")
    await bridge.receive_nothing(timeout=0.5)
    assert not [e for e in bridge.published if e["topic"] == "devices/sensor-1/commands"]
    assert await database_sync_to_async(DeviceCommand.objects.count)() == 0


async def test_a_topic_prefix_applies_to_every_topic(transactional_db: None) -> None:
    from tests.mqtt.conftest import _setup

    await database_sync_to_async(_setup)()
    with override_settings(MQTT_TOPIC_PREFIX="acme/site1", MQTT_SHARED_GROUP=""):
        communicator = MqttCommunicator(application)
        assert await communicator.connect() == ["acme/site1/devices/#"]
        await communicator.deliver("acme/site1/devices/sensor-1/rooms/lobby", "prefixed")
        published = await communicator.receive_publish()
        assert published["topic"] == "acme/site1/rooms/lobby/messages"
        await communicator.close()


async def test_mqtt_311_subscribes_without_a_shared_group(transactional_db: None) -> None:
    communicator = MqttCommunicator(application, protocol=4)
    assert await communicator.connect() == ["devices/#"]
    await communicator.close()


async def test_an_unknown_device_is_registered_in_development_mode(transactional_db: None) -> None:
    from tests.mqtt.conftest import _setup

    await database_sync_to_async(_setup)()
    with override_settings(MQTT_UNKNOWN_DEVICES="register"):
        communicator = MqttCommunicator(application)
        await communicator.connect()
        await communicator.deliver("devices/newcomer/rooms/kitchen", "hi, I am new")
        await communicator.receive_publish(topic="rooms/kitchen/messages")
        await communicator.close()
    assert await database_sync_to_async(_messages)("kitchen") == [("newcomer", "mqtt", "hi, I am new")]


async def test_nothing_is_claimed_for_publishing_while_the_broker_is_away(
    bridge: MqttCommunicator,
) -> None:
    await bridge.disconnect()
    alice = await database_sync_to_async(Identity.objects.create)(kind="user", name="alice")
    await amessage_post(room="lobby", sender=alice, origin="web", text="while away")
    await bridge.receive_nothing(timeout=0.3)

    await bridge.connect(session_present=True)
    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    assert json.loads(published["payload"])["text"] == "while away"


async def test_a_transient_database_failure_is_retried_and_acknowledged_only_after_commit(
    bridge: MqttCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from protocols.mqtt import consumers

    real = consumers.ingest_batch
    calls: list[int] = []

    def flaky(**kwargs: object) -> object:
        calls.append(1)
        if len(calls) <= 2:
            raise OperationalError("deadlock detected")
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(consumers, "ingest_batch", flaky)
    await bridge.deliver("devices/sensor-1/rooms/lobby", "after two rollbacks", timeout=5)
    assert len(calls) == 3 and len(bridge.acked) == 1
    texts = await database_sync_to_async(lambda: list(Message.objects.values_list("text", flat=True)))()
    assert texts == ["after two rollbacks"]


async def test_a_message_the_code_cannot_handle_is_refused_not_fatal(
    bridge: MqttCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protocols.mqtt import consumers

    def broken(**kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(consumers, "ingest_batch", broken)
    # Refused and acknowledged: a poison message must not stop every runmqtt in turn.
    await bridge.deliver("devices/sensor-1/rooms/lobby", "poison", timeout=5)
    assert len(bridge.acked) == 1
    error = await bridge.receive_publish(topic="devices/sensor-1/errors")
    assert json.loads(error["payload"])["code"] == "internal_error"


async def test_a_device_over_its_rate_is_acknowledged_dropped_and_told(
    bridge: MqttCommunicator, settings: object, caplog: pytest.LogCaptureFixture
) -> None:
    settings.MQTT_RATE, settings.MQTT_BURST = 0.01, 3  # type: ignore[attr-defined]
    for i in range(6):
        await bridge.deliver("devices/sensor-1/rooms/lobby", f"flood {i}")
    error = json.loads((await bridge.receive_publish(topic="devices/sensor-1/errors"))["payload"])
    assert error["code"] == "rate_limited" and error["topic"] == "devices/sensor-1/rooms/lobby"
    texts = [text for _, _, text in await database_sync_to_async(_messages)()]
    assert texts == ["flood 0", "flood 1", "flood 2"]
    # Logged once for the streak, not once per message.
    assert sum("over its rate" in r.getMessage() for r in caplog.records) == 1
    for _ in texts:  # the publisher is done with the database before the test's teardown
        await bridge.receive_publish(topic="rooms/lobby/messages")


async def test_dropped_messages_are_counted_for_metrics(bridge: MqttCommunicator, settings: object) -> None:
    from bridge.instruments import DROPPED_OVER_RATE

    before = DROPPED_OVER_RATE.labels(edge="mqtt")._value.get()
    settings.MQTT_RATE, settings.MQTT_BURST = 0.01, 1  # type: ignore[attr-defined]
    for i in range(4):
        await bridge.deliver("devices/sensor-1/rooms/lobby", f"m{i}")
    assert DROPPED_OVER_RATE.labels(edge="mqtt")._value.get() - before == 3
    await bridge.receive_publish(topic="rooms/lobby/messages")  # the one stored, published


@pytest.mark.parametrize("bridge_settings", [{"MQTT_DYNSEC": False}, {"MQTT_DYNSEC": True}])
async def test_private_rooms_reach_mqtt_only_where_the_broker_keeps_them_to_members(
    bridge: MqttCommunicator, bridge_settings: dict[str, object]
) -> None:
    dynsec = bridge_settings["MQTT_DYNSEC"]
    await database_sync_to_async(room_create)(slug="vault", private=True)
    bob = await database_sync_to_async(_user_identity)("bob", member_of="vault")
    await amessage_post(room="vault", sender=bob, origin="web", text="secret")
    await amessage_post(room="lobby", sender=bob, origin="web", text="public")
    await bridge.receive_publish(topic="rooms/lobby/messages")
    if dynsec:
        await bridge.receive_publish(topic="rooms/vault/messages")
    else:
        assert await bridge.receive_nothing(timeout=0.5)
        assert "rooms/vault/messages" not in [e["topic"] for e in bridge.published]


async def test_messages_arriving_within_the_linger_are_stored_in_one_transaction(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protocols.mqtt.consumers import BridgeConsumer
    from tests.mqtt.conftest import _setup

    await database_sync_to_async(_setup)()
    batches: list[int] = []
    store = BridgeConsumer._store

    async def recording(self: BridgeConsumer, batch: list) -> object:  # type: ignore[type-arg]
        batches.append(len(batch))
        return await store(self, batch)

    monkeypatch.setattr(BridgeConsumer, "_store", recording)
    with override_settings(MQTT_LINGER_MS=500):
        communicator = MqttCommunicator(application)
        await communicator.connect()
        for n in range(3):  # QoS 0: not waiting for each to be stored
            await communicator.deliver("devices/sensor-1/rooms/lobby", f"m{n}", qos=0)
            await asyncio.sleep(0.05)  # time enough for a writer that does not linger to take each
        for _ in range(3):
            await communicator.receive_publish(topic="rooms/lobby/messages")
        await communicator.close()
    assert batches == [3]
    assert [text for _, _, text in await database_sync_to_async(_messages)()] == ["m0", "m1", "m2"]
