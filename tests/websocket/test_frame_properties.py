"""Property-based: whatever frames a signed-in client sends, each gets an ack or an error frame,
nothing invalid is stored, and the socket stays open."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from bridge.models import Message
from bridge.services.rooms import room_create
from tests.support.hostile import encoded, json_values, message_bodies, texts
from tests.websocket.conftest import _session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

frames = st.one_of(
    st.tuples(message_bodies.map(lambda b: {"type": "message", **b}), st.booleans()).map(lambda t: encoded(*t)),
    json_values.map(json.dumps),
    texts,
)


@pytest.fixture
def cookie(transactional_db: None) -> str:
    room_create(slug="lobby")
    return _session_cookie("mallory")


async def _exchange(ws: Any, cookie: str, sent: list[str]) -> list[dict[str, Any]]:
    comm = ws("/ws/rooms/lobby/", cookie=cookie)
    assert (await comm.connect())[0]
    assert (await comm.receive_json_from())["type"] == "history"
    replies = []
    for frame in sent:
        await comm.send_input({"type": "websocket.receive", "text": frame})
        while True:  # the own message and presence frames may come in between
            reply = await comm.receive_json_from(timeout=3)
            if reply["type"] in ("ack", "error"):
                replies.append(reply)
                break
    await comm.send_json_to({"type": "message", "text": "still open", "client_id": "last"})
    while (await comm.receive_json_from(timeout=3)).get("client_id") != "last":
        pass
    await comm.disconnect()
    return replies


@hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sent=st.lists(frames, min_size=1, max_size=6))
def test_every_frame_gets_an_ack_or_an_error_and_the_socket_stays_open(ws: Any, cookie: str, sent: list[str]) -> None:
    before = Message.objects.count()
    replies = async_to_sync(_exchange)(ws, cookie, sent)
    acks = [r for r in replies if r["type"] == "ack"]
    assert all(set(r) == {"type", "code", "detail"} for r in replies if r["type"] == "error")
    stored = Message.objects.filter(seq__gt=before).exclude(idempotency_key__endswith=":last")
    assert stored.count() <= len(acks)
    for message in stored:
        msgpack.packb(message.data)
        message.text.encode("utf-8")
