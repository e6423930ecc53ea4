"""A socket closed right after its history frame: its user is offline within seconds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import websockets

from tests.support.faults import deployment, report
from tests.support.http import login_cookie
from tests.support.processes import query

pytestmark = [pytest.mark.slow, pytest.mark.faults]


async def test_a_socket_closed_after_its_history_frame_goes_offline_within_seconds(tmp_path: Path) -> None:
    with deployment(tmp_path) as dep:
        url = dep.web.replace("http://", "ws://") + "/ws/rooms/lobby/"
        cookie = await asyncio.to_thread(login_cookie, dep.web, "demo", "demo")
        async with websockets.connect(url, additional_headers={"Origin": dep.web}) as observer:
            assert json.loads(await observer.recv())["type"] == "history"
            rounds, seconds = 5, []
            for _ in range(rounds):
                async with websockets.connect(url, additional_headers={"Origin": dep.web, "Cookie": cookie}) as sock:
                    assert json.loads(await sock.recv())["type"] == "history"
                closed = time.monotonic()
                while True:  # the observer hears demo go online, then offline
                    frame = json.loads(await asyncio.wait_for(observer.recv(), 30))
                    if frame["type"] == "presence" and frame["state"] == "offline" and frame["who"]["name"] == "demo":
                        seconds.append(time.monotonic() - closed)
                        break
            rows = query(dep.stack.database_url, "SELECT count(*) FROM bridge_presence")
        report(
            "presence-close-after-history", "offline frame and no presence row within seconds (was 90-105 s)",
            rounds=rounds, offline_after_s_max=max(seconds), offline_after_s_median=sorted(seconds)[rounds // 2],
            presence_rows_left=rows[0][0], exited=dep.exited(),
        )
        assert rows[0][0] == 0
        assert max(seconds) < 10  # the presence TTL is 90 s: anything near it is the old bug
