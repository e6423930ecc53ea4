"""Against a real uvicorn: a socket closed right after its history frame goes offline at once,
not when its presence row expires (BRIDGE_PRESENCE_TTL, set far beyond the wait here)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.support.http import login_cookie
from tests.support.processes import query
from tests.support.stack import Stack, provision

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = provision(tmp_path, BRIDGE_PRESENCE_TTL="600")
    try:
        yield stack
    finally:
        stack.stop()


def presence_rows(stack: Stack) -> int:
    return int(query(stack.database_url, "SELECT COUNT(*) FROM bridge_presence")[0][0])  # type: ignore[call-overload]


def seconds_until_offline(stack: Stack, timeout: float = 30) -> float:
    start = time.monotonic()
    while presence_rows(stack):
        assert time.monotonic() - start < timeout, "still online"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_socket_closed_right_after_its_history_is_offline_within_seconds(stack: Stack) -> None:
    base = stack.asgi("web")
    cookie = login_cookie(base, "demo", "demo")
    url = base.replace("http://", "ws://") + "/ws/rooms/lobby/"

    async def hit_and_run() -> None:
        async with websockets.connect(url, additional_headers={"Origin": base, "Cookie": cookie}) as sock:
            await asyncio.wait_for(sock.recv(), 10)  # the history frame, then gone

    took = []
    for _ in range(5):
        asyncio.run(hit_and_run())
        took.append(seconds_until_offline(stack))  # fails after 30 s: the TTL is 600
    print(f"\nsocket closed after its history frame: offline after {max(took):.2f} s at most")
    assert "Traceback" not in stack.procs[-1].output(), stack.procs[-1].output()
