"""Open sockets follow access changes: they close, saying why, when their right to the room ends."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from bridge.models import ApiToken, Message, Room
from bridge.selectors import room_get
from bridge.services.devices import device_register
from bridge.services.members import MemberRef, member_add, member_remove
from bridge.services.rooms import room_create
from bridge.services.tokens import token_revoke

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


def _secret_with(*members: str) -> Room:
    room = room_create(slug="secret", private=True)
    for name in members:
        member_add(room=room, member=MemberRef(username=name))
    return room


async def joined(ws: Any, path: str, **kwargs: Any) -> Any:
    """Connected, past the history and (signed in) its own presence frame."""
    comm = ws(path, **kwargs)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["type"] == "history"
    if "cookie" in kwargs or "headers" in kwargs:
        assert (await comm.receive_json_from())["type"] == "presence"
    return comm


async def closed_with(comm: Any, code: int) -> str:
    """The socket's last words: an error frame, then the close. Returns the error code."""
    error = ""
    while True:
        out = await comm.receive_output(timeout=5)
        if out["type"] == "websocket.close":
            assert out["code"] == code
            return error
        frame = json.loads(out.get("text") or "{}")
        if frame.get("type") == "error":
            error = frame["code"]


async def test_a_member_removed_is_closed(ws: Any, session_for: Any) -> None:
    cookie = await session_for("alice")
    room = await database_sync_to_async(_secret_with)("alice")
    comm = await joined(ws, "/ws/rooms/secret/", cookie=cookie)
    await database_sync_to_async(member_remove)(room=room, member=MemberRef(username="alice"))
    assert await closed_with(comm, 4403) == "not_a_member"


async def test_a_room_made_private_closes_its_anonymous_readers(ws: Any, db: None) -> None:
    await database_sync_to_async(room_create)(slug="lobby")
    comm = await joined(ws, "/ws/rooms/lobby/")
    await database_sync_to_async(room_create)(slug="lobby", private=True)
    assert await closed_with(comm, 4403) == "not_a_member"


async def test_an_unrelated_membership_change_leaves_members_connected(ws: Any, session_for: Any) -> None:
    cookie = await session_for("alice")
    await database_sync_to_async(_secret_with)("alice")
    comm = await joined(ws, "/ws/rooms/secret/", cookie=cookie)
    await database_sync_to_async(member_add)(room=await database_sync_to_async(room_get)(slug="secret"),
                                             member=MemberRef(jid="zoe@example.org"))
    assert await comm.receive_nothing(0.5)  # re-checked, still a member: nothing said, still open
    await comm.disconnect()


def _login(username: str) -> tuple[Client, str]:
    get_user_model().objects.create_user(username=username, password="pw")
    client = Client()
    assert client.login(username=username, password="pw")
    return client, f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


async def test_logout_closes_that_sessions_sockets_only(ws: Any, db: None) -> None:
    await database_sync_to_async(room_create)(slug="lobby")
    web, cookie = await database_sync_to_async(_login)("alice")
    other = Client()
    await sync_to_async(other.login)(username="alice", password="pw")
    other_cookie = f"{settings.SESSION_COOKIE_NAME}={other.cookies[settings.SESSION_COOKIE_NAME].value}"
    comm = await joined(ws, "/ws/rooms/lobby/", cookie=cookie)
    elsewhere = await joined(ws, "/ws/rooms/lobby/", cookie=other_cookie)
    response = await sync_to_async(web.post)("/accounts/logout/")
    assert response.status_code in (200, 302)
    assert await closed_with(comm, 4401) == "signed_out"
    await elsewhere.send_json_to({"type": "message", "text": "still here"})
    while (await elsewhere.receive_json_from())["type"] != "ack":
        pass
    await elsewhere.disconnect()


@pytest.mark.parametrize("change", ["deactivate", "password"])
async def test_deactivation_and_password_change_close_sockets(ws: Any, db: None, change: str) -> None:
    await database_sync_to_async(room_create)(slug="lobby")
    _, cookie = await database_sync_to_async(_login)("alice")
    comm = await joined(ws, "/ws/rooms/lobby/", cookie=cookie)

    def apply() -> None:
        user = get_user_model().objects.get(username="alice")
        if change == "deactivate":
            user.is_active = False
        else:
            user.set_password("new-pw")
        user.save()

    await database_sync_to_async(apply)()
    assert await closed_with(comm, 4401) == "signed_out"
    assert await database_sync_to_async(Message.objects.count)() == 0


async def test_token_sockets_close_when_it_is_revoked(ws: Any, db: None) -> None:
    def make() -> ApiToken:
        user = get_user_model().objects.create_user(username="script", password="pw")
        _secret_with("script")
        return ApiToken.objects.create(user=user)

    token = await database_sync_to_async(make)()
    comm = await joined(ws, "/ws/rooms/secret/", headers=[(b"authorization", f"Token {token.key}".encode())])
    await database_sync_to_async(token_revoke)(token=token)
    assert await closed_with(comm, 4401) == "signed_out"
    again = ws("/ws/rooms/secret/", headers=[(b"authorization", f"Token {token.key}".encode())])
    assert (await again.connect())[0]
    assert (await again.receive_json_from())["code"] == "invalid_token"
    assert (await again.receive_output())["code"] == 4401


async def test_cmd_without_a_tie_is_an_error_frame(ws: Any, session_for: Any, db: None) -> None:
    def setup() -> None:
        room_create(slug="lobby")
        device_register(device_id="pump-7", post_rooms=["lobby"])

    await database_sync_to_async(setup)()
    comm = await joined(ws, "/ws/rooms/lobby/", cookie=await session_for("bob"))
    await comm.send_json_to({"type": "message", "text": "/cmd pump-7 open", "client_id": "c1"})
    frame = await comm.receive_json_from()
    assert (frame["type"], frame["code"]) == ("error", "forbidden_device")
    await comm.send_json_to({"type": "message", "text": "/cmd ghost open", "client_id": "c2"})
    assert (await comm.receive_json_from())["code"] == "unknown_device"
    assert await database_sync_to_async(Message.objects.count)() == 0
    await comm.disconnect()
