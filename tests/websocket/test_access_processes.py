"""Access changes made in one process close sockets held by another (uvicorn, Redis channel layer).

Each change is made the way an operator or a user makes it (a management
command, the logout form), in its own process; the socket is held by a real
uvicorn. Prints how long each close took; passes on the close code alone.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support.http import login_cookie, request
from tests.support.processes import manage
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path, redis_url: str) -> Iterator[tuple[Stack, str]]:
    stack = provision(tmp_path, rooms=("lobby",), REDIS_URL=redis_url)
    try:
        manage(["rooms", "add", "secret", "--private"], env=stack.env)
        manage(["demo", "--username", "alice", "--password", "alice-pw"], env=stack.env)
        manage(["demo", "--username", "mallory", "--password", "mallory-pw"], env=stack.env)
        manage(["shell", "-c", "from django.contrib.auth.models import User; "
                "User.objects.filter(username__in=['alice', 'mallory']).update(is_superuser=False, is_staff=False)"],
               env=stack.env)
        manage(["rooms", "members", "add", "secret", "--user", "alice"], env=stack.env)
        yield stack, stack.asgi("web")
    finally:
        stack.stop()


def ws_url(base: str, room: str) -> str:
    return base.replace("http://", "ws://") + f"/ws/rooms/{room}/"


async def joined(base: str, room: str, headers: dict[str, str]) -> Any:
    sock = await websockets.connect(ws_url(base, room), additional_headers={"Origin": base, **headers})
    frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=10))
    assert frame["type"] == "history", frame
    return sock


async def closed_within(sock: Any, seconds: float) -> tuple[int, str, float]:
    """(close code, the error frame's code, seconds it took) once the server closes."""
    started, error = time.monotonic(), ""
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=seconds))
            if frame["type"] == "error":
                error = frame["code"]
    except websockets.ConnectionClosed:
        pass
    assert sock.close_code is not None, "still open"
    return sock.close_code, error, time.monotonic() - started


async def change_and_expect(sock: Any, change: list[str], env: dict[str, str], code: int, what: str) -> None:
    waiter = asyncio.ensure_future(closed_within(sock, 15))
    await asyncio.to_thread(manage, change, env=env)
    got_code, error, took = await waiter
    print(f"{what}: closed with {got_code} ({error}) {took:.2f} s after the command started")
    assert got_code == code, (what, got_code, error)


def set_user(username: str, statement: str) -> list[str]:
    return ["shell", "-c", f"from django.contrib.auth.models import User; u = User.objects.get(username='{username}'); "
            f"{statement}; u.save()"]


async def test_non_members_neither_read_nor_post_over_http_and_websocket(stack: tuple[Stack, str]) -> None:
    st, base = stack
    token = manage(["tokens", "add", "mallory"], env=st.env).strip()
    auth = {"Authorization": f"Token {token}"}
    assert request(f"{base}/api/rooms/secret/messages", headers=auth)[0] == 404
    assert request(f"{base}/api/rooms/secret/messages", method="POST", body={"text": "hi"}, headers=auth)[0] == 404
    async with websockets.connect(ws_url(base, "secret"), additional_headers={"Origin": base, **auth}) as sock:
        assert json.loads(await sock.recv())["code"] == "forbidden"
        with pytest.raises(websockets.ConnectionClosed):
            await sock.recv()
        assert sock.close_code == 4403


async def test_each_access_change_closes_the_socket(stack: tuple[Stack, str]) -> None:
    st, base = stack
    env = st.env
    # A token's socket: revoked.
    token = manage(["tokens", "add", "alice"], env=env).strip()
    sock = await joined(base, "secret", {"Authorization": f"Token {token}"})
    await change_and_expect(sock, ["tokens", "revoke", token[:8]], env, 4401, "token revoked")
    assert request(f"{base}/api/rooms/lobby/messages", method="POST", body={"text": "x"},
                   headers={"Authorization": f"Token {token}"})[0] == 401

    # A browser session's sockets: removed from the room, then each change to the user.
    cookie = await asyncio.to_thread(login_cookie, base, "alice", "alice-pw")
    sock = await joined(base, "secret", {"Cookie": cookie})
    await change_and_expect(sock, ["rooms", "members", "remove", "secret", "--user", "alice"], env, 4403,
                            "removed from the room")
    for what, statement in [("deactivated", "u.is_active = False"), ("new password", "u.set_password('other')")]:
        cookie = await asyncio.to_thread(login_cookie, base, "alice", "alice-pw")
        sock = await joined(base, "lobby", {"Cookie": cookie})
        await change_and_expect(sock, set_user("alice", statement), env, 4401, what)
        manage(set_user("alice", "u.is_active = True; u.set_password('alice-pw')"), env=env)

    # Logout: that session's socket closes.
    cookie = await asyncio.to_thread(login_cookie, base, "alice", "alice-pw")
    sock = await joined(base, "lobby", {"Cookie": cookie})
    waiter = asyncio.ensure_future(closed_within(sock, 15))
    await asyncio.to_thread(logout, base, cookie)
    got_code, error, took = await waiter
    print(f"logged out: closed with {got_code} ({error}) {took:.2f} s after the logout started")
    assert got_code == 4401


def logout(base: str, cookie: str) -> None:
    csrf = re.search(r"csrftoken=([^;]+)", cookie)
    assert csrf, cookie
    form = urllib.parse.urlencode({"csrfmiddlewaretoken": csrf[1]}).encode()
    req = urllib.request.Request(f"{base}/accounts/logout/", data=form,
                                 headers={"Cookie": cookie, "Referer": f"{base}/"})
    with urllib.request.urlopen(req, timeout=15) as resp:
        assert resp.status == 200
