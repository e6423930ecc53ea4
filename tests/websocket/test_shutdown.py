"""SIGTERM to the web process: WebSockets hear 1001 (going away), and it exits in time."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
import websockets

from tests.support.processes import free_port, start_manage, wait_for_port
from tests.support.stack import provision

pytestmark = pytest.mark.slow


async def test_sigterm_closes_websockets_with_1001_and_exits(tmp_path: Path) -> None:
    stack = provision(tmp_path, BRIDGE_SHUTDOWN_GRACE="5")
    port = free_port()
    proc = start_manage("runweb", ["runweb", f"127.0.0.1:{port}"], env=stack.env, log_dir=tmp_path)
    stack.procs.append(proc)
    try:
        wait_for_port(port, proc=proc)
        base = f"http://127.0.0.1:{port}"
        url = f"ws://127.0.0.1:{port}/ws/rooms/lobby/"
        async with websockets.connect(url, additional_headers={"Origin": base}) as sock:
            assert json.loads(await asyncio.wait_for(sock.recv(), timeout=10))["type"] == "history"
            proc.popen.send_signal(signal.SIGTERM)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(sock.recv(), timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, closed.value
        # uvicorn ends a graceful stop by re-raising the signal it caught (exit status -15).
        assert await asyncio.to_thread(proc.popen.wait, 15) in (0, -signal.SIGTERM)
        print(f"web process stopped {time.monotonic() - started:.2f} s after SIGTERM")
    finally:
        stack.stop()
