from __future__ import annotations

import json
from typing import Any

import pytest
from channels.db import database_sync_to_async

from bridge.models import Message, Room
from bridge.services.identities import identity_get_or_create
from bridge.services.members import MemberRef, member_add
from bridge.services.messages import message_post, message_store, messages_fanout
from bridge.services.rooms import room_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def lobby(db: None) -> Room:
    return room_create(slug="lobby", title="Lobby")


async def frames_until(comm: Any, kind: str, *, limit: int = 20) -> dict[str, Any]:
    for _ in range(limit):
        frame = await comm.receive_json_from(timeout=3)
        if frame["type"] == kind:
            return frame
    raise AssertionError(f"no {kind} frame")


async def test_history_first_then_live_messages(ws: Any, session_for: Any, lobby: Room) -> None:
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    for i in range(3):
        await database_sync_to_async(message_store)(room="lobby", sender=alice, origin="web", text=f"old {i}")
    comm = ws("/ws/rooms/lobby/", cookie=await session_for("bob"))
    connected, _ = await comm.connect()
    assert connected
    history = await comm.receive_json_from()
    assert history["type"] == "history"
    assert [m["seq"] for m in history["messages"]] == [1, 2, 3]
    await comm.send_json_to({"type": "message", "text": "hello <b>", "client_id": "c1"})
    ack = await frames_until(comm, "ack")
    assert ack["client_id"] == "c1" and ack["seq"] == 4
    live = await frames_until(comm, "message")
    assert live["message"]["text"] == "hello <b>"
    assert live["message"]["sender"] == {"kind": "user", "name": "bob"}
    assert live["message"]["origin"] == "web"
    await comm.disconnect()


async def test_resume_after_sends_only_what_was_missed(ws: Any, lobby: Room) -> None:
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    for i in range(5):
        await database_sync_to_async(message_store)(room="lobby", sender=alice, origin="web", text=str(i))
    comm = ws("/ws/rooms/lobby/?after=3")
    assert (await comm.connect())[0]
    history = await comm.receive_json_from()
    assert [m["seq"] for m in history["messages"]] == [4, 5]
    await comm.disconnect()


async def test_a_dropped_group_message_is_filled_from_the_database(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["messages"] == []
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    # Stored but never fanned out: as if the channel layer dropped it.
    await database_sync_to_async(message_store)(room="lobby", sender=alice, origin="web", text="lost")
    await database_sync_to_async(message_post)(room="lobby", sender=alice, origin="web", text="next")
    first = await comm.receive_json_from()
    second = await comm.receive_json_from()
    assert [first["message"]["text"], second["message"]["text"]] == ["lost", "next"]
    await comm.disconnect()


async def test_a_batch_event_becomes_one_frame_per_message_in_seq_order(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["messages"] == []
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    stored = [
        (await database_sync_to_async(message_store)(room="lobby", sender=alice, origin="mqtt", text=t)).envelope
        for t in ("one", "two", "three", "four")
    ]
    # 1 and 2 in a first batch; a repeat of 2, then 4 with 3 missing (dropped): 3 comes from the database.
    await messages_fanout(stored[:2])
    await messages_fanout([stored[1], stored[3]])
    frames = [await comm.receive_json_from() for _ in range(4)]
    assert [(f["type"], f["message"]["seq"]) for f in frames] == [("message", n) for n in (1, 2, 3, 4)]
    assert frames[0]["message"] == stored[0]
    assert await comm.receive_nothing(timeout=0.2)
    await comm.disconnect()


async def test_message_frames_skip_the_per_event_connection_check_and_match_the_envelope(
    ws: Any, lobby: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    import channels.consumer

    checks: list[str] = []
    real = channels.consumer.aclose_old_connections

    async def counted() -> None:
        checks.append("check")
        await real()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    comm = ws("/ws/rooms/lobby/")
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    before = len(checks)
    posted = await database_sync_to_async(message_post)(room="lobby", sender=alice, origin="web", text="hi")
    frame = await comm.receive_from()

    assert frame == json.dumps({"type": "message", "message": posted.envelope})
    assert len(checks) == before  # no thread hop for a frame the consumer only forwards
    await comm.disconnect()


async def test_presence_of_signed_in_users(ws: Any, session_for: Any, lobby: Room) -> None:
    watcher = ws("/ws/rooms/lobby/")
    assert (await watcher.connect())[0]
    await watcher.receive_json_from()
    alice = ws("/ws/rooms/lobby/", cookie=await session_for("alice"))
    assert (await alice.connect())[0]
    online = await watcher.receive_json_from()
    assert online == {"type": "presence", "who": {"kind": "user", "name": "alice"}, "state": "online"}
    await alice.disconnect()
    offline = await watcher.receive_json_from()
    assert offline["state"] == "offline" and offline["who"]["name"] == "alice"
    await watcher.disconnect()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"type": "message", "text": "x" * 20000}), "too_large"),
        (json.dumps({"type": "message", "text": "y" * 4001}), "too_large"),
        (json.dumps({"type": "message", "text": ""}), "empty_message"),
        (json.dumps({"type": "message", "text": "hi", "client_id": 5}), "invalid_client_id"),
    ],
)
async def test_bad_frames_get_error_frames_and_the_socket_stays_open(ws: Any, session_for: Any, lobby: Room, frame: str, code: str) -> None:
    comm = ws("/ws/rooms/lobby/", cookie=await session_for("mallory"))
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_to(text_data=frame)
    error = await frames_until(comm, "error")
    assert error["code"] == code and error["detail"]
    await comm.send_json_to({"type": "message", "text": "still here"})
    assert (await frames_until(comm, "message"))["message"]["text"] == "still here"
    assert await database_sync_to_async(Message.objects.count)() == 1
    await comm.disconnect()


async def test_binary_frames_are_refused(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/")
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from())["code"] == "invalid_frame"
    await comm.disconnect()


async def test_anonymous_cannot_post(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/")
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_json_to({"type": "message", "text": "hi"})
    assert (await comm.receive_json_from())["code"] == "auth_required"
    assert await database_sync_to_async(Message.objects.count)() == 0
    await comm.disconnect()


@pytest.mark.parametrize(("path", "code", "close"), [("/ws/rooms/nowhere/", "room_not_found", 4404), ("/ws/rooms/BAD%20NAME/", "room_not_found", 4404)])
async def test_unknown_room_gets_an_error_and_a_close(ws: Any, lobby: Room, path: str, code: str, close: int) -> None:
    comm = ws(path)
    connected, _ = await comm.connect()
    assert connected
    assert (await comm.receive_json_from())["code"] == code
    assert (await comm.receive_output())["code"] == close
    assert not await database_sync_to_async(Room.objects.filter(slug="nowhere").exists)()


async def test_private_room_is_for_members(ws: Any, session_for: Any, db: None) -> None:
    room = await database_sync_to_async(room_create)(slug="secret", private=True)
    comm = ws("/ws/rooms/secret/")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["code"] == "forbidden"
    assert (await comm.receive_output())["code"] == 4403
    # Signed in is not enough: a non-member is refused the same way.
    outsider = ws("/ws/rooms/secret/", cookie=await session_for("mallory"))
    assert (await outsider.connect())[0]
    assert (await outsider.receive_json_from())["code"] == "forbidden"
    assert (await outsider.receive_output())["code"] == 4403
    cookie = await session_for("alice")
    await database_sync_to_async(member_add)(room=room, member=MemberRef(username="alice"))
    member = ws("/ws/rooms/secret/", cookie=cookie)
    assert (await member.connect())[0]
    assert (await member.receive_json_from())["type"] == "history"
    await member.disconnect()


async def test_foreign_origin_is_refused_at_the_handshake(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/", origin="http://evil.example")
    connected, _ = await comm.connect()
    assert not connected


async def test_bad_after_is_an_error(ws: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/?after=abc")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["code"] == "invalid_after"


async def test_a_live_connection_renews_its_presence(ws: Any, session_for: Any, lobby: Room, settings: Any) -> None:
    from django.utils import timezone

    from bridge.models import Presence

    settings.BRIDGE_PRESENCE_TTL = 3  # renewed every second
    comm = ws("/ws/rooms/lobby/", cookie=await session_for("alice"))
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    assert (await frames_until(comm, "presence"))["who"]["name"] == "alice"  # own join, recorded
    first = await database_sync_to_async(lambda: Presence.objects.get().expires)()
    import asyncio

    await asyncio.sleep(2.5)
    later = await database_sync_to_async(lambda: Presence.objects.get().expires)()
    assert later > first and later > timezone.now()
    await comm.disconnect()
    assert not await database_sync_to_async(Presence.objects.exists)()


async def test_a_second_tab_of_the_same_user_sees_itself_present(ws: Any, session_for: Any, lobby: Room) -> None:
    cookie = await session_for("alice")
    first = ws("/ws/rooms/lobby/", cookie=cookie)
    assert (await first.connect())[0]
    await frames_until(first, "presence")
    second = ws("/ws/rooms/lobby/", cookie=cookie)
    assert (await second.connect())[0]
    assert (await second.receive_json_from())["type"] == "history"
    seen = await frames_until(second, "presence")
    assert seen == {"type": "presence", "who": {"kind": "user", "name": "alice"}, "state": "online"}
    await second.disconnect()
    assert await first.receive_nothing(0.3)  # alice is still online through the first tab
    await first.disconnect()


async def test_a_refused_origin_is_logged_with_the_reason(ws: Any, lobby: Room, caplog: Any) -> None:
    comm = ws("/ws/rooms/lobby/", origin="http://evil.example")
    assert not (await comm.connect())[0]
    assert any("evil.example" in r.getMessage() and "own origin" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("origin", ["http://localhost:4444", "https://localhost", "http://localhost.evil"])
async def test_origin_must_match_scheme_host_and_port(ws: Any, lobby: Room, origin: str) -> None:
    assert not (await ws("/ws/rooms/lobby/", origin=origin).connect())[0]


async def test_allowed_origins_setting_replaces_the_own_origin(ws: Any, lobby: Room, settings: Any) -> None:
    from protocols.websocket.security import Origin, OriginPolicy

    settings.WEBSOCKET_ALLOWED_ORIGINS = ["https://chat.example.org"]
    policy = OriginPolicy.from_settings()
    scope = {"type": "websocket", "headers": [(b"host", b"localhost"), (b"origin", b"https://chat.example.org:443")]}
    assert policy.refusal(scope) is None
    scope["headers"][1] = (b"origin", b"http://localhost")
    assert policy.refusal(scope) == "Origin http://localhost:80 is not in WEBSOCKET_ALLOWED_ORIGINS"
    assert Origin.parse("ftp://x") is None and Origin.parse("http://x:99999") is None


async def test_deeply_nested_json_is_an_error_frame_not_a_crash(ws: Any, session_for: Any, lobby: Room) -> None:
    comm = ws("/ws/rooms/lobby/", cookie=await session_for("mallory"))
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_to(text_data='{"type": "message", "data": ' + "[" * 5000 + "]" * 5000 + "}")
    error = await frames_until(comm, "error")
    assert error["code"] == "invalid_json"
    await comm.send_json_to({"type": "message", "text": "still here"})
    assert (await frames_until(comm, "message"))["message"]["text"] == "still here"
    await comm.disconnect()


HOSTILE_FRAMES = [
    ('{"type": "message", "text": "a\\u0000b"}', "invalid_json"),
    ('{"type": "message", "text": "a\\u0007b"}', "invalid_text"),
    ('{"type": "message", "text": "hi", "client_id": "\\u0000"}', "invalid_json"),
    ('{"type": "message", "text": "\\ud83d"}', "invalid_json"),
    ('{"type": "message", "text": "hi", "data": {"k\\udc00": 1}}', "invalid_json"),
    ('{"type": "message", "text": "hi", "data": ' + '{"a":' * 970 + "1" + "}" * 970 + "}", "invalid_json"),
    ('{"type": "message", "text": "hi", "data": {"n": 18446744073709551616}}', "invalid_json"),
    ('{"type": "message", "text": "hi", "data": {"n": -Infinity}}', "invalid_json"),
]


@pytest.mark.parametrize(("frame", "code"), HOSTILE_FRAMES)
async def test_hostile_frames_get_error_frames_store_nothing_and_keep_the_socket(ws: Any, session_for: Any, lobby: Room, frame: str, code: str) -> None:
    comm = ws("/ws/rooms/lobby/", cookie=await session_for("mallory"))
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_to(text_data=frame)
    assert (await frames_until(comm, "error"))["code"] == code
    assert await database_sync_to_async(Message.objects.count)() == 0
    await comm.send_json_to({"type": "message", "text": "still here"})
    assert (await frames_until(comm, "message"))["message"]["text"] == "still here"
    await comm.disconnect()


@pytest.mark.parametrize("path", ["/ws/rooms/secret/..", "/ws/", "/ws/rooms/lobby/extra/", "/anything"])
async def test_junk_paths_get_an_error_frame_and_4404(ws: Any, lobby: Room, path: str) -> None:
    comm = ws(path)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["code"] == "not_found"
    assert (await comm.receive_output())["code"] == 4404


async def test_an_after_beyond_64_bits_is_an_error(ws: Any, lobby: Room) -> None:
    comm = ws(f"/ws/rooms/lobby/?after={2**64}")
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["code"] == "invalid_after"


async def test_a_sender_over_its_rate_gets_error_frames_then_1008(ws: Any, session_for: Any, lobby: Room, settings: Any) -> None:
    settings.WS_RATE, settings.WS_BURST = 0.01, 3
    flooder = ws("/ws/rooms/lobby/", cookie=await session_for("flood"))
    assert (await flooder.connect())[0]
    await flooder.receive_json_from()
    for i in range(3):
        await flooder.send_json_to({"type": "message", "text": f"m{i}", "client_id": f"c{i}"})
        assert (await frames_until(flooder, "ack"))["client_id"] == f"c{i}"
    await flooder.send_json_to({"type": "message", "text": "too many"})
    error = await frames_until(flooder, "error")
    assert error["code"] == "rate_limited" and "try again" in error["detail"]
    # Another user is not affected.
    calm = ws("/ws/rooms/lobby/", cookie=await session_for("calm"))
    assert (await calm.connect())[0]
    await calm.receive_json_from()
    await calm.send_json_to({"type": "message", "text": "hello", "client_id": "k"})
    assert (await frames_until(calm, "ack"))["client_id"] == "k"
    # Still open after one refusal; closed with 1008 once it ignores more than a burst of them.
    for _ in range(3):
        await flooder.send_json_to({"type": "message", "text": "more"})
    await flooder.send_json_to({"type": "message", "text": "and more"})
    while (output := await flooder.receive_output(timeout=3))["type"] != "websocket.close":
        assert json.loads(output["text"])["type"] != "ack"
    assert output["code"] == 1008
    texts = await database_sync_to_async(lambda: sorted(Message.objects.values_list("text", flat=True)))()
    assert texts == ["hello", "m0", "m1", "m2"]
    await calm.disconnect()


async def test_long_history_comes_a_page_per_frame_with_more(ws: Any, lobby: Room) -> None:
    from protocols.websocket.consumers import HISTORY_PAGE

    alice = await database_sync_to_async(identity_get_or_create)(kind="user", name="alice")
    for i in range(2 * HISTORY_PAGE + 7):
        await database_sync_to_async(message_store)(room="lobby", sender=alice, origin="web", text=str(i))
    comm = ws("/ws/rooms/lobby/?after=0")
    assert (await comm.connect())[0]
    frames = [await comm.receive_json_from() for _ in range(3)]
    assert [(f["type"], len(f["messages"]), f["more"]) for f in frames] == [
        ("history", HISTORY_PAGE, True), ("history", HISTORY_PAGE, True), ("history", 7, False)
    ]
    seqs = [m["seq"] for f in frames for m in f["messages"]]
    assert seqs == list(range(1, 2 * HISTORY_PAGE + 8))
    latest = ws("/ws/rooms/lobby/")
    assert (await latest.connect())[0]
    first = await latest.receive_json_from()
    assert (len(first["messages"]), first["more"]) == (50, False)
    await comm.disconnect()
    await latest.disconnect()


def _scope(path: str, cookie: str) -> dict[str, Any]:
    return {
        "type": "websocket", "path": path, "raw_path": path.encode(), "query_string": b"",
        "headers": [(b"host", b"localhost"), (b"origin", b"http://localhost"), (b"cookie", cookie.encode())],
        "subprotocols": [], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }


@pytest.mark.parametrize("gone", ["never_reads", "went_away"])
async def test_a_socket_that_takes_nothing_more_is_let_go_and_goes_offline(session_for: Any, lobby: Room, settings: Any, gone: str) -> None:
    """The server's send blocks (a client that does not read) or fails (one that left) after
    the history frame: the consumer ends within BRIDGE_WS_SEND_TIMEOUT and the user is offline."""
    import asyncio

    from bridge.models import Presence
    from project.asgi import application

    settings.BRIDGE_WS_SEND_TIMEOUT = 1
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.send" and len(sent) > 2:  # after accept and history
            if gone == "went_away":
                raise ConnectionResetError("peer closed")
            await asyncio.Event().wait()  # the write buffer never drains

    await asyncio.wait_for(application(_scope("/ws/rooms/lobby/", await session_for("ghost")), inbox.get, send), 10)
    assert [m["type"] for m in sent[:2]] == ["websocket.accept", "websocket.send"]
    assert json.loads(sent[1]["text"])["type"] == "history"
    assert not await database_sync_to_async(Presence.objects.exists)()


async def test_a_session_whose_password_hash_is_stale_opens_an_anonymous_socket(ws: Any, session_for: Any, lobby: Room) -> None:
    """The session middleware is ours (one step instead of Channels' three): it must verify
    the session's auth hash as Django does, so a session from before a password change
    does not sign the socket in."""
    from django.contrib.auth import get_user_model

    cookie = await session_for("carol")
    user = await database_sync_to_async(get_user_model().objects.get)(username="carol")
    user.set_password("a new one")
    await database_sync_to_async(user.save)()
    comm = ws("/ws/rooms/lobby/", cookie=cookie)
    assert (await comm.connect())[0]
    await comm.receive_json_from()
    await comm.send_json_to({"type": "message", "text": "hi"})
    assert (await frames_until(comm, "error"))["code"] == "auth_required"
    fresh = ws("/ws/rooms/lobby/", cookie=await session_for("dave"))
    assert (await fresh.connect())[0]
    await fresh.receive_json_from()
    await fresh.send_json_to({"type": "message", "text": "hi", "client_id": "d"})
    assert (await frames_until(fresh, "ack"))["client_id"] == "d"
    await comm.disconnect()
    await fresh.disconnect()
