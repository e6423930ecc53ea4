from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.exceptions import InvalidInput, RoomNotFound, TooLarge
from bridge.models import Identity, Message, Room, Task
from bridge.services.identities import identity_get_or_create
from bridge.services.messages import message_store
from bridge.services.rooms import room_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def room() -> Room:
    return room_create(slug="lobby", title="Lobby")


@pytest.fixture
def alice() -> Identity:
    return identity_get_or_create(kind="user", name="alice")


def test_seq_increases_per_room(room: Room, alice: Identity) -> None:
    other = room_create(slug="other")
    seqs = [message_store(room=room, sender=alice, origin="web", text=f"m{i}").envelope["seq"] for i in range(3)]
    assert seqs == [1, 2, 3]
    assert message_store(room=other, sender=alice, origin="web", text="x").envelope["seq"] == 1
    room.refresh_from_db()
    assert room.last_seq == 3


def test_envelope_follows_the_contract(room: Room, alice: Identity) -> None:
    envelope = message_store(room="lobby", sender=alice, origin="web", text="hi", data={"t": 1}).envelope
    assert set(envelope) == {"id", "seq", "room", "origin", "sender", "text", "data", "created"}
    assert envelope["sender"] == {"kind": "user", "name": "alice"}
    assert envelope["room"] == "lobby" and envelope["origin"] == "web" and envelope["data"] == {"t": 1}
    assert "+00:00" in envelope["created"]


def test_same_client_key_stores_once(room: Room, alice: Identity) -> None:
    first = message_store(room=room, sender=alice, origin="web", text="hi", client_key="k1")
    again = message_store(room=room, sender=alice, origin="api", text="hi", client_key="k1")
    assert first.created and not again.created
    assert again.envelope == first.envelope
    assert Message.objects.count() == 1


def test_client_key_is_scoped_to_the_sender(room: Room, alice: Identity) -> None:
    bob = identity_get_or_create(kind="user", name="bob")
    message_store(room=room, sender=alice, origin="web", text="a", client_key="same")
    message_store(room=room, sender=bob, origin="web", text="b", client_key="same")
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    ("text", "data", "error"),
    [
        (123, None, InvalidInput),
        ("", None, InvalidInput),
        ("   ", None, InvalidInput),
        ("x" * 4001, None, TooLarge),
        ("bell \x07", None, InvalidInput),
        ("ok", [1, 2], InvalidInput),
        ("ok", {"big": "x" * 20000}, TooLarge),
        ("ok", {"nan": float("nan")}, InvalidInput),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(room: Room, alice: Identity, text: object, data: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        message_store(room=room, sender=alice, origin="web", text=text, data=data)  # type: ignore[arg-type]
    assert Message.objects.count() == 0
    room.refresh_from_db()
    assert room.last_seq == 0


def test_unknown_room_is_not_created(alice: Identity) -> None:
    with pytest.raises(RoomNotFound):
        message_store(room="nowhere", sender=alice, origin="web", text="hi")
    with pytest.raises(RoomNotFound):
        message_store(room="Not A Slug", sender=alice, origin="web", text="hi")
    assert not Room.objects.exists()


def test_storing_records_one_pending_stats_task(room: Room, alice: Identity) -> None:
    for i in range(5):
        message_store(room=room, sender=alice, origin="web", text=str(i))
    tasks = Task.objects.filter(name="room_stats")
    assert tasks.count() == 1
    assert tasks.get().state == Task.State.PENDING


def test_a_failing_fan_out_does_not_fail_the_post(room: Room, alice: Identity, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from channels.layers import get_channel_layer

    from bridge.services.messages import message_post

    async def down(*args: object, **kwargs: object) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(get_channel_layer(), "group_send", down)
    result = message_post(room=room, sender=alice, origin="api", text="stored anyway")
    assert result.created and Message.objects.get().text == "stored anyway"
    assert any("could not fan out" in r.getMessage() for r in caplog.records)


def test_store_many_keeps_order_refuses_per_message_and_stores_each_key_once(room: Room, alice: Identity) -> None:
    from bridge.exceptions import BridgeError
    from bridge.services.messages import NewMessage, message_store_many

    message_store(room=room, sender=alice, origin="mqtt", text="earlier", client_key="k0")
    batch = [
        NewMessage(sender=alice, origin="mqtt", text="one", client_key="k1"),
        NewMessage(sender=alice, origin="mqtt", text=""),  # refused: empty
        NewMessage(sender=alice, origin="mqtt", text="again", client_key="k0"),  # stored before
        NewMessage(sender=alice, origin="mqtt", text="two"),
        NewMessage(sender=alice, origin="mqtt", text="one", client_key="k1"),  # twice in the batch
    ]
    results = message_store_many(room=room, messages=batch)
    assert isinstance(results[1], BridgeError) and results[1].code == "empty_message"
    stored = [r for r in results if not isinstance(r, BridgeError)]
    assert [(r.envelope["seq"], r.created) for r in stored] == [(2, True), (1, False), (3, True), (2, False)]
    assert list(Message.objects.order_by("seq").values_list("seq", "text")) == [(1, "earlier"), (2, "one"), (3, "two")]
    room.refresh_from_db()
    assert room.last_seq == 3


async def test_a_batch_fans_out_per_room_in_seq_order_with_the_texts_it_was_given() -> None:
    from channels.layers import get_channel_layer

    from bridge.names import room_group
    from bridge.services.messages import messages_fanout

    layer = get_channel_layer()
    assert layer is not None
    channels = {slug: await layer.new_channel() for slug in ("a", "b")}
    for slug, channel in channels.items():
        await layer.group_add(room_group(slug), channel)

    def envelope(room: str, seq: int) -> Any:
        return {"id": f"{room}{seq}", "seq": seq, "room": room, "text": f"t{seq}"}

    envelopes = [envelope("a", 2), envelope("b", 1), envelope("a", 1), envelope("a", 2)]
    # The MQTT edge encoded them already: sent as given; one without a text is encoded here.
    await messages_fanout(envelopes, ["a2 as encoded", None, "a1 as encoded", "a2 as encoded"])
    got_a = await layer.receive(channels["a"])
    got_b = await layer.receive(channels["b"])
    assert got_a["messages"] == [{"seq": 1, "json": "a1 as encoded"}, {"seq": 2, "json": "a2 as encoded"}]
    assert [json.loads(m["json"]) for m in got_b["messages"]] == [envelope("b", 1)]
    with pytest.raises(ValueError):  # a text per envelope, or none at all
        await messages_fanout(envelopes, ["one"])
