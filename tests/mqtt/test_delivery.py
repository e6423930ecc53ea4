"""Room messages out to MQTT: the cursor moves only past what the broker has (at least once)."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.utils import timezone

from bridge.envelope import Envelope, message_envelope
from bridge.models import EdgeCursor, Identity, Message, Room
from bridge.services.cursors import (
    edge_cursor_delivered,
    edge_cursor_get,
    edge_cursor_lease,
    edge_cursor_lease_renew,
)
from bridge.services.identities import identity_for_user
from bridge.services.messages import amessage_post, message_post
from bridge.services.rooms import room_create
from protocols.mqtt import outbound
from protocols.mqtt.delivery import RecentlyStored, RoomDelivery
from protocols.mqtt.testing import MqttCommunicator
from protocols.mqtt.topics import Topics

pytestmark = pytest.mark.django_db(transaction=True)


def _cursor(room: str = "lobby") -> int:
    return EdgeCursor.objects.get(edge="mqtt", room__slug=room).seq


async def _cursor_reaches(seq: int, timeout: float = 10) -> None:
    """Wait for the publisher's commit (it follows the answer, in a database thread)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await database_sync_to_async(_cursor)()) != seq:
        assert asyncio.get_running_loop().time() < deadline, f"cursor at {now}, not {seq}"
        await asyncio.sleep(0.02)


def _identity() -> Identity:
    user, _ = get_user_model().objects.get_or_create(username="ann")
    return identity_for_user(user)


def _post(room: str, text: str) -> None:
    message_post(room=room, sender=_identity(), origin="web", text=text)


def test_a_lease_keeps_a_room_to_one_owner_until_it_delivered_lapsed_or_came_back() -> None:
    room = room_create(slug="hall")
    edge_cursor_get(edge="t", room=room, start_at_end=False)
    for i in range(3):
        _post("hall", f"m{i}")
    first = edge_cursor_lease(edge="t", room=room, owner="bridge-1", seconds=30)
    assert [m.seq for m in first] == [1, 2, 3]
    assert edge_cursor_lease(edge="t", room=room, owner="bridge-2", seconds=30) == []  # held
    # The same owner (a restarted process, same client id) takes its range again at once.
    assert [m.seq for m in edge_cursor_lease(edge="t", room=room, owner="bridge-1", seconds=30)] == [1, 2, 3]
    assert edge_cursor_lease_renew(edge="t", room_id=room.pk, owner="bridge-1", seconds=30)
    assert not edge_cursor_lease_renew(edge="t", room_id=room.pk, owner="bridge-2", seconds=30)
    assert edge_cursor_delivered(edge="t", room_id=room.pk, owner="bridge-1", to_seq=2)
    assert [m.seq for m in edge_cursor_lease(edge="t", room=room, owner="bridge-2", seconds=30)] == [3]
    # bridge-2 died holding it: the lease lapses and anyone gets the range again.
    EdgeCursor.objects.filter(edge="t").update(lease_until=timezone.now() - timedelta(seconds=1))
    assert [m.seq for m in edge_cursor_lease(edge="t", room=room, owner="bridge-3", seconds=30)] == [3]
    # A late holder's delivery never moves the cursor back, and reports the lease gone.
    assert not edge_cursor_delivered(edge="t", room_id=room.pk, owner="bridge-2", to_seq=1)
    assert EdgeCursor.objects.get(edge="t").seq == 2


async def test_the_cursor_waits_for_the_brokers_answer(bridge: MqttCommunicator) -> None:
    bridge.outcome = None  # the broker does not answer yet
    start = await database_sync_to_async(_cursor)()
    await bridge.deliver("devices/sensor-1/rooms/lobby", "one")
    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    assert await bridge.receive_nothing(timeout=0.3)
    assert await database_sync_to_async(_cursor)() == start  # handed to paho is not delivered
    await bridge.answer(published, "accepted")
    await _cursor_reaches(start + 1)


async def test_a_refused_publish_is_passed_over_and_the_next_ones_still_go(bridge: MqttCommunicator) -> None:
    bridge.outcome = None
    start = await database_sync_to_async(_cursor)()
    await bridge.deliver("devices/sensor-1/rooms/lobby", "refused by the broker")
    refused = await bridge.receive_publish(topic="rooms/lobby/messages")
    await bridge.answer(refused, "refused", "Not authorized")
    await bridge.deliver("devices/sensor-1/rooms/lobby", "next")
    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    assert json.loads(published["payload"])["text"] == "next"
    await bridge.answer(published, "accepted")
    await _cursor_reaches(start + 2)


async def test_publishes_lost_with_the_broker_client_go_again_in_order(bridge: MqttCommunicator) -> None:
    bridge.outcome = None
    start = await database_sync_to_async(_cursor)()
    identity = await database_sync_to_async(_identity)()
    for text in ("a", "b", "c"):
        await amessage_post(room="lobby", sender=identity, origin="web", text=text)
    # However the three were claimed (one batch or several), "b" is lost the first time.
    seen: list[str] = []
    while seen.count("b") < 2 or seen[-1] != "c":
        published = await bridge.receive_publish(topic="rooms/lobby/messages")
        seen.append(json.loads(published["payload"])["text"])
        await bridge.answer(published, "lost" if seen == ["a", "b"] else "accepted")
    await _cursor_reaches(start + 3)
    # "c" may have gone out once after the lost "b" already; then "b" and "c" again, in order.
    assert seen in (["a", "b", "b", "c"], ["a", "b", "c", "b", "c"]), seen


async def test_a_drain_waits_for_the_answers_of_what_is_in_flight(bridge: MqttCommunicator) -> None:
    bridge.outcome = None
    start = await database_sync_to_async(_cursor)()
    await bridge.deliver("devices/sensor-1/rooms/lobby", "in flight")
    published = await bridge.receive_publish(topic="rooms/lobby/messages")
    await bridge.send_input({"type": "mqtt.drain"})
    assert await bridge.receive_nothing(timeout=0.3)  # not drained: a publish awaits its answer
    await bridge.answer(published, "accepted")
    await bridge._until(lambda: bridge.drained, 5)
    assert await database_sync_to_async(_cursor)() == start + 1
    # Drained: a message arriving now is neither stored nor acknowledged (it comes again).
    await bridge.send_input({"type": "mqtt.message", "topic": "devices/sensor-1/rooms/lobby", "payload": b"late",
                             "qos": 1, "retain": False, "dup": False, "properties": {}, "ack_id": 999})
    assert await bridge.receive_nothing(timeout=0.3)
    assert 999 not in bridge.acked


def _envelopes_of(room: str) -> dict[int, Envelope]:
    return {m.seq: message_envelope(m) for m in Message.objects.filter(room__slug=room).select_related("sender", "room")}


def _hall_with_three_messages() -> tuple[Room, dict[int, Envelope]]:
    """Room "hall" with its MQTT cursor at 0 and messages 1-3 stored: the room, their envelopes."""
    room = room_create(slug="hall")
    outbound.rooms_track(known=set(), started=timezone.now() - timedelta(days=1))
    EdgeCursor.objects.filter(edge="mqtt", room=room).update(seq=0)
    for i in range(3):
        _post("hall", f"m{i}")
    return room, _envelopes_of("hall")


def test_a_claim_takes_what_this_process_just_stored_without_reading_it_back() -> None:
    room, stored = _hall_with_three_messages()
    recent = RecentlyStored()
    recent.add((room.pk, stored[seq], json.dumps(stored[seq])) for seq in (1, 2, 3))
    asked: list[tuple[int, int, int]] = []

    def spy(room_id: int, after: int, upto: int) -> list[Envelope] | None:
        asked.append((room_id, after, upto))
        return recent.range(room_id, after, upto)

    claimed = outbound.room_claim(slug="hall", owner="bridge-1", lease=30, recent=spy)
    assert asked == [(room.pk, 0, 3)]
    assert claimed.envelopes == [stored[1], stored[2], stored[3]]  # what the database holds
    assert not claimed.more
    # The range is leased as the long way leases it: another process gets nothing meanwhile.
    assert outbound.room_claim(slug="hall", owner="bridge-2", lease=30, recent=recent.range).envelopes == []
    assert outbound.room_claim(slug="hall", owner="bridge-2", lease=30).envelopes == []
    assert outbound.room_delivered(room_id=room.pk, owner="bridge-1", to_seq=3)
    assert EdgeCursor.objects.get(edge="mqtt", room=room).seq == 3


def test_a_claim_reads_the_range_when_part_of_it_is_not_in_memory_or_is_a_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_back: list[int] = []
    long_way = outbound.edge_cursor_lease

    def counting(**kwargs: Any) -> list[Message]:
        read_back.append(1)
        return long_way(**kwargs)

    monkeypatch.setattr(outbound, "edge_cursor_lease", counting)
    room, stored = _hall_with_three_messages()
    recent = RecentlyStored()
    recent.add((room.pk, stored[seq], json.dumps(stored[seq])) for seq in (1, 3))  # 2 came from another process
    claimed = outbound.room_claim(slug="hall", owner="bridge-1", lease=30, recent=recent.range)
    assert [e["seq"] for e in claimed.envelopes] == [1, 2, 3]
    assert claimed.envelopes == [stored[1], stored[2], stored[3]]
    assert read_back == [1]
    assert outbound.room_delivered(room_id=room.pk, owner="bridge-1", to_seq=3)

    # A chat command in the range goes the long way, which decides whether it commands a device.
    _post("hall", "/cmd sensor-1 reboot")
    stored = _envelopes_of("hall")
    recent.add([(room.pk, stored[4], json.dumps(stored[4]))])
    claimed = outbound.room_claim(slug="hall", owner="bridge-1", lease=30, recent=recent.range)
    assert [e["seq"] for e in claimed.envelopes] == [4]
    assert claimed.envelopes == [stored[4]]
    assert read_back == [1, 1]


def test_what_is_remembered_is_bounded_and_kept_apart_by_room() -> None:
    recent = RecentlyStored(size=4)

    def envelope(seq: int) -> Envelope:
        return {"id": str(seq), "seq": seq, "room": "r", "origin": "mqtt", "sender": {"kind": "device", "name": "d"},
                "text": "t", "data": None, "created": "2026-01-01T00:00:00+00:00"}
    recent.add((1, envelope(seq), json.dumps(envelope(seq))) for seq in range(1, 7))
    assert recent.range(1, 2, 6) == [envelope(s) for s in (3, 4, 5, 6)]
    assert recent.range(1, 1, 6) is None  # 2 was pushed out: read from the database
    # A room deleted and made again with the same slug has a new id: nothing of the old one.
    assert recent.range(2, 2, 6) is None


def test_an_envelope_taken_from_memory_is_published_as_the_text_kept_with_it() -> None:
    recent = RecentlyStored()
    kept = {"id": "1", "seq": 1, "room": "r", "origin": "mqtt", "sender": {"kind": "device", "name": "d"},
            "text": "t", "data": None, "created": "2026-01-01T00:00:00+00:00"}
    recent.add([(1, kept, "the text encoded once")])  # type: ignore[list-item]
    [taken] = recent.range(1, 0, 1) or []
    assert recent.text(1, taken) == "the text encoded once"
    # The same seq read back from the database (another object) or of another room: encoded now.
    read_back = dict(kept)
    assert json.loads(recent.text(1, read_back)) == kept  # type: ignore[arg-type]
    assert json.loads(recent.text(2, taken)) == kept


async def test_the_lease_is_renewed_while_answers_trickle_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers one by one, each a little sooner than a renewal is due: the lease is still
    renewed on time (a clock for the whole wait, not one per answer), and the outcomes
    come back in the order published, whatever order they were answered in."""
    renewals: list[int] = []
    monkeypatch.setattr(outbound, "room_lease_renew", lambda **kw: renewals.append(kw["room_id"]) or True)
    delivery = RoomDelivery(owner="bridge-1", topics=Topics(prefix=""), publish=None,  # type: ignore[arg-type]
                            lease=0.3, publish_private=True)  # renewed every 0.1 s
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(5)]
    for n, at in enumerate((0.08, 0.24, 0.16, 0.32, 0.40)):  # the third before the second
        loop.call_later(at, futures[n].set_result, {"outcome": "accepted", "n": n})
    outcomes = await delivery._answers(7, futures)
    assert [o["n"] for o in outcomes] == [0, 1, 2, 3, 4]
    # Due at 0.1, 0.2 and 0.3 s; a clock per answer would have renewed once (at 0.18 s).
    assert len(renewals) >= 2 and set(renewals) == {7}
