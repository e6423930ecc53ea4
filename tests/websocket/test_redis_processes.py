"""The same chat across two OS processes through a real redis-server channel layer."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.http import login_cookie, request
from tests.support.processes import query
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow


@pytest.fixture(params=["core", "pubsub"])
def stack(request: pytest.FixtureRequest, tmp_path: Path, redis_url: str) -> Iterator[Stack]:
    stack = provision(
        tmp_path, rooms=("lobby", "ops", "garden"), REDIS_URL=redis_url,
        REDIS_CHANNEL_LAYER=request.param, BRIDGE_RECONCILE_INTERVAL="1",
    )
    try:
        yield stack
    finally:
        stack.stop()


def ws_url(base: str, room: str, query_string: str = "") -> str:
    return base.replace("http://", "ws://") + f"/ws/rooms/{room}/" + query_string


async def next_frame(sock: Any, kind: str) -> dict[str, Any]:
    while True:
        frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=10))
        if frame["type"] == kind:
            return frame


async def test_two_servers_share_a_room_through_redis_even_after_an_idle_spell(stack: Stack) -> None:
    first, second = stack.asgi("asgi-1"), stack.asgi("asgi-2")
    cookie = login_cookie(first, "demo", "demo")
    origin = {"Origin": first}
    async with websockets.connect(ws_url(first, "lobby"), additional_headers={**origin, "Cookie": cookie}) as alice, \
            websockets.connect(ws_url(second, "lobby"), additional_headers={"Origin": second}) as bob:
        assert (await next_frame(alice, "history"))["messages"] == []
        await next_frame(bob, "history")
        await alice.send(json.dumps({"type": "message", "text": "over redis", "client_id": "a1"}))
        seen = await next_frame(bob, "message")
        assert seen["message"]["text"] == "over redis"
        assert seen["message"]["sender"] == {"kind": "user", "name": "demo"}
        assert (await next_frame(alice, "message"))["message"]["seq"] == seen["message"]["seq"]

        # Longer than redis-py's default 5 s socket timeout: the receive loops must survive it.
        await asyncio.sleep(7)
        status, _ = request(f"{second}/api/rooms/lobby/messages", method="POST", body={"text": "after idle"}, headers={"Authorization": f"Token {stack.token}"})
        assert status == 201
        for sock in (alice, bob):
            assert (await next_frame(sock, "message"))["message"]["text"] == "after idle"


def test_tasks_recorded_while_no_worker_runs_are_run_once_later(stack: Stack) -> None:
    base = stack.asgi("asgi")
    auth = {"Authorization": f"Token {stack.token}"}
    for room in ("lobby", "ops", "garden"):
        for i in range(4):
            assert request(f"{base}/api/rooms/{room}/messages", method="POST", body={"text": f"{room} {i}"}, headers=auth)[0] == 201
    pending = query(stack.database_url, "SELECT COUNT(*) FROM bridge_task WHERE state = 'pending'")
    assert pending[0][0] == 3
    workers = [stack.worker("worker-1"), stack.worker("worker-2")]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        left = query(stack.database_url, "SELECT COUNT(*) FROM bridge_task WHERE state != 'done'")[0][0]
        if left == 0:
            break
        time.sleep(0.2)
    rows = query(stack.database_url, "SELECT name, state, runs FROM bridge_task ORDER BY id")
    assert rows == [("room_stats", "done", 1)] * 3, [w.output() for w in workers]
    counts = query(stack.database_url, "SELECT slug, message_count FROM bridge_room ORDER BY slug")
    assert counts == [("garden", 4), ("lobby", 4), ("ops", 4)]
    rooms = request(f"{base}/api/rooms/")[1]["rooms"]
    assert {r["slug"]: r["message_count"] for r in rooms} == {"garden": 4, "lobby": 4, "ops": 4}


async def test_a_burst_of_handshakes_all_join_the_group(stack: Stack) -> None:
    # A burst of handshakes, more than redis-py's default pool of 100 connections.
    base = stack.asgi("asgi")
    sockets = await asyncio.gather(*[websockets.connect(ws_url(base, "lobby"), additional_headers={"Origin": base}) for _ in range(300)])
    try:
        for sock in sockets:
            assert (await next_frame(sock, "history"))["messages"] == []
        status, _ = request(f"{base}/api/rooms/lobby/messages", method="POST", body={"text": "to all"}, headers={"Authorization": f"Token {stack.token}"})
        assert status == 201
        texts = await asyncio.gather(*[next_frame(sock, "message") for sock in sockets])
        assert {t["message"]["text"] for t in texts} == {"to all"}
    finally:
        await asyncio.gather(*[sock.close() for sock in sockets])
