"""`python manage.py runserver` as every Django user types it serves the whole ASGI app."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
import websockets

from tests.support.http import request
from tests.support.processes import free_port, start_manage, wait_for_port
from tests.support.stack import provision

pytestmark = pytest.mark.slow


async def test_runserver_serves_websocket_history_api_and_static_files(tmp_path: Path) -> None:
    stack = provision(tmp_path)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_manage("runserver", ["runserver", f"127.0.0.1:{port}", "--noreload"],
                        env=stack.env, log_dir=tmp_path)
    stack.procs.append(proc)
    try:
        wait_for_port(port, proc=proc, timeout=60)
        auth = {"Authorization": f"Token {stack.token}"}
        status, _ = request(f"{base}/api/rooms/lobby/messages", method="POST",
                            body={"text": "before the socket"}, headers=auth)
        assert status == 201
        url = base.replace("http://", "ws://") + "/ws/rooms/lobby/"
        async with websockets.connect(url, additional_headers={"Origin": base}) as sock:
            frame = json.loads(await asyncio.wait_for(sock.recv(), timeout=15))
        assert frame["type"] == "history"
        assert [m["text"] for m in frame["messages"]] == ["before the socket"]
        with urllib.request.urlopen(f"{base}/static/bridge/room.js", timeout=15) as resp:
            assert resp.status == 200
            assert b"WebSocket" in resp.read()
        assert "daphne" in proc.output().lower(), proc.output()
    finally:
        stack.stop()
