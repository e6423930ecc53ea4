"""What the batch path adds: several device messages stored in one transaction, told once per room."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import OperationalError
from django.db.backends.base.base import BaseDatabaseWrapper

from bridge.models import Message, Room
from bridge.services.devices import device_register
from bridge.services.rooms import room_create
from protocols.mqtt.ingest import ingest_batch
from protocols.mqtt.testing import MqttCommunicator
from protocols.mqtt.topics import Topics

TOPICS = Topics(prefix="", shared_group="")


def _post(room: str, text: str, key: str | None = None) -> tuple[str, bytes]:
    body = {"text": text, **({"id": key} if key else {})}
    return f"devices/sensor-1/rooms/{room}", json.dumps(body).encode()


def _rows(room: str) -> list[tuple[int, str]]:
    return list(Message.objects.filter(room__slug=room).order_by("seq").values_list("seq", "text"))


@pytest.fixture
def rooms(db: None) -> None:
    room_create(slug="lobby")
    room_create(slug="kitchen")
    device_register(device_id="sensor-1", post_rooms=["lobby", "kitchen"])


@pytest.mark.django_db
def test_a_duplicate_id_in_the_middle_of_a_batch_stores_one_row_and_answers_its_seq(rooms: None) -> None:
    outcomes = ingest_batch(topics=TOPICS, messages=[
        _post("lobby", "a", "k1"), _post("lobby", "b", "k2"), _post("lobby", "a again", "k1"),
        _post("lobby", "c", "k3"),
    ])

    assert _rows("lobby") == [(1, "a"), (2, "b"), (3, "c")]
    seqs = [o.envelope["seq"] if o.envelope else None for o in outcomes]
    assert seqs == [1, 2, 1, 3]
    assert all(o.error is None for o in outcomes)


@pytest.mark.django_db
def test_a_batch_spanning_rooms_gives_each_room_its_own_gapless_seq(rooms: None) -> None:
    outcomes = ingest_batch(topics=TOPICS, messages=[
        _post("lobby", "l1"), _post("kitchen", "k1"), _post("lobby", "l2"), _post("nowhere", "x"),
        _post("kitchen", "k2"),
    ])

    assert _rows("lobby") == [(1, "l1"), (2, "l2")]
    assert _rows("kitchen") == [(1, "k1"), (2, "k2")]
    assert [(o.envelope["room"], o.envelope["seq"]) if o.envelope else None for o in outcomes] == [
        ("lobby", 1), ("kitchen", 1), ("lobby", 2), None, ("kitchen", 2)]
    assert outcomes[3].error is not None and outcomes[3].error.code == "room_not_found"
    assert Room.objects.get(slug="lobby").last_seq == 2


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_commit_fails_leaves_nothing_and_stores_once_when_retried(
    rooms: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [_post("lobby", "one", "k1"), _post("kitchen", "two", "k2"), _post("lobby", "three", "k3")]
    real_commit = BaseDatabaseWrapper.commit

    def failing_commit(self: BaseDatabaseWrapper) -> None:
        raise OperationalError("the server closed the connection during COMMIT")

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", failing_commit)
    with pytest.raises(OperationalError):
        ingest_batch(topics=TOPICS, messages=batch)
    monkeypatch.setattr(BaseDatabaseWrapper, "commit", real_commit)

    assert _rows("lobby") == [] and _rows("kitchen") == []
    assert Room.objects.get(slug="lobby").last_seq == 0
    # The consumer acknowledged nothing, so the broker (or the consumer) hands it over again.
    ingest_batch(topics=TOPICS, messages=batch)
    ingest_batch(topics=TOPICS, messages=batch)
    assert _rows("lobby") == [(1, "one"), (2, "three")]
    assert _rows("kitchen") == [(1, "two")]


@pytest.mark.django_db(transaction=True)
async def test_a_batch_is_fanned_out_as_one_group_message_per_room_in_seq_order(
    bridge: MqttCommunicator,
) -> None:
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add("room.lobby", listener)

    # QoS 0: delivered without waiting for acknowledgements, so they arrive as one batch.
    for n in range(3):
        await bridge.deliver("devices/sensor-1/rooms/lobby", f"m{n}", qos=0)
    event = await layer.receive(listener)

    assert event["type"] == "room.messages" and event["room"] == "lobby"
    assert [item["seq"] for item in event["messages"]] == [1, 2, 3]
    envelopes = [json.loads(item["json"]) for item in event["messages"]]
    assert [e["text"] for e in envelopes] == ["m0", "m1", "m2"]
    assert {e["sender"]["name"] for e in envelopes} == {"sensor-1"}


@pytest.mark.django_db(transaction=True)
async def test_a_redelivered_batch_is_told_again_for_receivers_to_dedupe_by_seq(
    bridge: MqttCommunicator,
) -> None:
    layer = get_channel_layer()
    listener = await layer.new_channel()
    await layer.group_add("room.lobby", listener)
    payload = json.dumps({"text": "once", "id": "k1"})

    await bridge.deliver("devices/sensor-1/rooms/lobby", payload)
    first = await layer.receive(listener)
    await bridge.deliver("devices/sensor-1/rooms/lobby", payload)
    again = await layer.receive(listener)

    assert [i["seq"] for i in first["messages"]] == [i["seq"] for i in again["messages"]] == [1]
    assert await database_sync_to_async(_rows)("lobby") == [(1, "once")]


@pytest.mark.django_db
def test_the_lookups_of_a_batch_do_not_grow_with_its_devices(rooms: None) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(2, 7):
        device_register(device_id=f"sensor-{n}", post_rooms=["lobby"])

    def queries(devices: list[str]) -> int:
        batch = [(f"devices/{d}/rooms/lobby", f"hi from {d}".encode()) for d in devices]
        with CaptureQueriesContext(connection) as captured:
            outcomes = ingest_batch(topics=TOPICS, messages=batch)
        assert all(o.error is None for o in outcomes)
        return len(captured.captured_queries)

    queries(["sensor-2"])  # the room's first stats task is created here, later ones reuse it
    assert queries(["sensor-2"]) == queries([f"sensor-{n}" for n in range(2, 7)])


@pytest.mark.django_db
def test_a_batch_refuses_the_disabled_the_unknown_and_the_misplaced_in_their_turn(
    rooms: None, settings: Any
) -> None:
    from bridge.models import Device

    settings.MQTT_UNKNOWN_DEVICES = "refuse"
    device_register(device_id="sensor-2", post_rooms=["lobby"])
    device_register(device_id="sensor-3", post_rooms=["lobby"])
    Device.objects.filter(device_id="sensor-3").update(enabled=False)
    outcomes = ingest_batch(topics=TOPICS, messages=[
        ("devices/sensor-2/rooms/lobby", b"ok"), ("devices/sensor-3/rooms/lobby", b"disabled"),
        ("devices/stranger/rooms/lobby", b"unknown"), ("devices/sensor-2/rooms/kitchen", b"misplaced"),
        ("devices/sensor-1/rooms/kitchen", b"ok too"),
    ])

    assert [o.error.code if o.error else None for o in outcomes] == [
        None, "device_disabled", "unknown_device", "forbidden_room", None]
    assert _rows("lobby") == [(1, "ok")] and _rows("kitchen") == [(1, "ok too")]


@pytest.mark.django_db(transaction=True)
async def test_nothing_is_acknowledged_until_a_failing_commit_succeeds_and_each_is_stored_once(
    bridge: MqttCommunicator, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = BaseDatabaseWrapper.commit
    failed = 0

    def commit_failing_twice(self: BaseDatabaseWrapper) -> None:
        nonlocal failed
        if failed < 2:
            failed += 1
            raise OperationalError("the server closed the connection during COMMIT")
        real_commit(self)

    monkeypatch.setattr(BaseDatabaseWrapper, "commit", commit_failing_twice)
    messages = [_post("lobby", "one", "k1"), _post("kitchen", "two", "k2"), _post("lobby", "one", "k1")]
    ack_ids = []
    for n, (topic, payload) in enumerate(messages, start=100):
        ack_ids.append(n)
        await bridge.send_input({"type": "mqtt.message", "topic": topic, "payload": payload, "qos": 1,
                                 "retain": False, "dup": False, "properties": {}, "ack_id": n})

    early: list[int] = []

    def all_acknowledged() -> bool:
        # Looked at after every event the application sends: an ack before the commit
        # that finally succeeded (two failures) is a broken promise.
        if bridge.acked and failed < 2:
            early.extend(bridge.acked)
        return set(ack_ids) <= bridge.acked

    await bridge.wait_for(all_acknowledged, timeout=10)

    assert early == []
    assert failed == 2
    assert await database_sync_to_async(_rows)("lobby") == [(1, "one")]
    assert await database_sync_to_async(_rows)("kitchen") == [(1, "two")]


@pytest.mark.django_db
def test_the_posts_a_batch_may_make_are_found_in_one_query_with_what_the_store_reads(rooms: None) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bridge.models import Device
    from bridge.services.devices import device_posts_allowed

    room_create(slug="hall", title="The hall", private=True)
    device_register(device_id="sensor-2", post_rooms=["hall"], listen_rooms=["lobby"])
    device_register(device_id="sensor-3", post_rooms=["lobby"])
    Device.objects.filter(device_id="sensor-3").update(enabled=False)
    asked = {("sensor-1", "lobby"), ("sensor-1", "hall"), ("sensor-2", "hall"), ("sensor-2", "lobby"),
             ("sensor-3", "lobby"), ("stranger", "lobby"), ("sensor-1", "no such room"), ("bad id!", "lobby")}
    with CaptureQueriesContext(connection) as captured:
        found = device_posts_allowed(pairs=asked)
        # What the store and the envelope read is there, without another query.
        seen = {pair: (device.identity.kind, device.identity.name, device.pk, room.pk, room.slug, room.title,
                       room.private, room.last_seq) for pair, (device, room) in found.items()}
    assert len(captured.captured_queries) == 1
    hall, lobby = Room.objects.get(slug="hall"), Room.objects.get(slug="lobby")
    sensor_1, sensor_2 = (Device.objects.get(device_id=d) for d in ("sensor-1", "sensor-2"))
    # Listening is not posting; a disabled device, an unknown one, a bad id: not found here.
    assert seen == {
        ("sensor-1", "lobby"): ("device", "sensor-1", sensor_1.pk, lobby.pk, "lobby", "", False, 0),
        ("sensor-2", "hall"): ("device", "sensor-2", sensor_2.pk, hall.pk, "hall", "The hall", True, 0),
    }
    # The fields it did not read load when asked for, as with the ORM's deferred fields.
    device, room = found[("sensor-2", "hall")]
    assert room.created == hall.created and device.created == sensor_2.created
    assert device_posts_allowed(pairs=set()) == {}
